"""Which configured tables a slot replicates whole: their rows were loaded (by the initial
snapshot, or an on-demand one) and every change since has been streamed.

Table ``dbmazz_replicated_tables (slot_name, table_name, since)`` beside the checkpoints.
A table that is in TABLES but not here *joined* after the slot began streaming: new in
TABLES, or taken out and put back (its changes in between were skipped, since the engine
only applies tables it replicates). The snapshot stage loads such a table's rows again with
an on-demand snapshot, and records it here once that snapshot is complete
(:mod:`dbmazz.snapshot.stage`, docs/snapshot.md "Tables joining TABLES").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import sql

from dbmazz.snapshot.progress import SlotRowsStore

TABLE = "dbmazz_replicated_tables"
#: The row that says "recorded" for a slot that replicates no configured table yet, so an
#: empty record is told from none (a slot from before this record existed).
_NONE = ""


class ReplicatedTablesStore(SlotRowsStore):
    """``slot``'s rows of the record."""

    TABLE = TABLE
    COLUMNS = ("slot_name text NOT NULL, table_name text NOT NULL,"
               " since timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (slot_name, table_name)")

    def _run(self, work: str, statements: Iterable[tuple[sql.Composed, tuple[Any, ...]]]
             ) -> list[Any]:
        rows: list[Any] = []
        with self._transaction(work, "restart dbmazz") as conn:
            for statement, params in statements:
                cursor = conn.execute(statement, params)
                if cursor.description:
                    rows += cursor.fetchall()
        return rows

    def load(self) -> set[str] | None:
        """The tables recorded for the slot, or None when nothing was ever recorded."""
        rows = self._run("reading the replicated tables", [(sql.SQL(
            "SELECT table_name FROM {} WHERE slot_name = %s").format(self._table),
            (self.slot,))])
        if not rows:
            return None
        return {str(name) for (name,) in rows if name != _NONE}

    def replace(self, tables: Iterable[str]) -> None:
        """Record exactly ``tables`` (a table no longer in TABLES stops counting)."""
        names = sorted(set(tables))
        self._run("recording the replicated tables", [
            (sql.SQL("DELETE FROM {} WHERE slot_name = %s AND NOT (table_name = ANY(%s))"
                     ).format(self._table), (self.slot, [*names, _NONE])),
            *self._inserts([*names, _NONE]),
        ])

    def add(self, tables: Iterable[str]) -> None:
        """Record ``tables`` as well (their rows are loaded now)."""
        self._run("recording the replicated tables", self._inserts(sorted(set(tables))))

    def _inserts(self, names: list[str]) -> list[tuple[sql.Composed, tuple[Any, ...]]]:
        return [(sql.SQL("INSERT INTO {} (slot_name, table_name) VALUES (%s, %s)"
                         " ON CONFLICT DO NOTHING").format(self._table), (self.slot, name))
                for name in names]
