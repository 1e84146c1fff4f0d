"""What the pipeline hands to a sink: table schemas, schema deltas and merged table batches.

These types are the whole contract between :mod:`dbmazz.pipeline` and :mod:`dbmazz.sink`.
They speak Arrow only: a sink never sees pgoutput, a pipeline never sees StarRocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from dbmazz.contract import AUDIT_COLUMNS


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    arrow_type: pa.DataType
    #: PostgreSQL type OID and modifier, for sinks that map types themselves (DDL).
    pg_type_oid: int
    pg_type_modifier: int
    #: PostgreSQL type name when known (e.g. 'numeric', 'jsonb', 'varchar'), else ''.
    pg_type_name: str = ""


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A source table as the pipeline knows it: columns, key, and where it loads to."""

    namespace: str
    name: str
    columns: tuple[ColumnSpec, ...]
    key_columns: tuple[str, ...]
    #: Target table name (after TABLE_MAP); sinks qualify it with their database/schema.
    target_name: str
    #: The source's REPLICA IDENTITY (``d``, ``f``, ``i``, ``n``; empty when unknown). Under
    #: ``f`` a key change never needs values read back from the target (pipeline/carry.py).
    replica_identity: str = field(default="", compare=False)

    @property
    def source_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def arrow_schema(self, with_audit: bool = True) -> pa.Schema:
        fields = [pa.field(c.name, c.arrow_type) for c in self.columns]
        if with_audit:
            fields += [pa.field(n, t) for n, t in AUDIT_COLUMNS]
        return pa.schema(fields)


@dataclass(frozen=True, slots=True)
class SchemaDelta:
    """How a table's shape changed between two Relation messages."""

    before: TableSchema | None
    after: TableSchema
    added: tuple[ColumnSpec, ...] = ()
    dropped: tuple[str, ...] = ()
    #: (old, new) pairs of columns whose type changed.
    retyped: tuple[tuple[ColumnSpec, ColumnSpec], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.dropped or self.retyped)


@dataclass(frozen=True, slots=True)
class UpsertGroup:
    """Rows to upsert that share the same set of present columns.

    ``rows`` holds the key columns, the present user columns and the audit columns.
    ``partial`` is true when some user columns are absent because the source did not send
    them (unchanged TOAST values): the sink must keep the target's current values for those
    columns (StarRocks partial update), never write NULL over them.
    """

    rows: pa.Table
    partial: bool
    #: Rows whose primary key changed in this batch and whose absent columns live in the
    #: target under another key (REPLICA IDENTITY DEFAULT, unchanged TOAST): candidate
    #: keys per row (see :mod:`dbmazz.pipeline.carry`). The engine resolves these before
    #: ``Sink.write``; a sink never receives a group with ``carry`` set.
    carry: pa.Table | None = None


@dataclass(frozen=True, slots=True)
class SplitPart:
    """Marks a flush or batch that carries part of a source transaction too large for one
    batch."""

    commit_lsn: int
    index: int
    last: bool


@dataclass(slots=True)
class TableBatch:
    """The merged changes of one table for one flush: at most one change per key.

    Apply order for a sink: ``truncate`` first (empty the table), then ``deletes`` and
    ``upserts`` (they never share a key).
    """

    table: TableSchema
    upserts: list[UpsertGroup] = field(default_factory=list)
    #: Key columns + audit columns (op_type = 2, is_deleted = true) of deleted rows.
    deletes: pa.Table | None = None
    truncate: bool = False
    #: Commit LSNs of the first and last source transaction in this batch.
    first_lsn: int = 0
    last_lsn: int = 0
    #: Source changes merged into this batch (before dedup).
    source_changes: int = 0
    split: SplitPart | None = None
    #: Distinguishes batches that share an LSN range (snapshot chunks: ``snap-<n>``); sinks
    #: fold it into load labels. Empty for CDC batches.
    batch_id: str = ""

    @property
    def num_rows(self) -> int:
        upserted = sum(g.rows.num_rows for g in self.upserts)
        return upserted + (self.deletes.num_rows if self.deletes is not None else 0)

    @property
    def is_empty(self) -> bool:
        return self.num_rows == 0 and not self.truncate


@dataclass(frozen=True, slots=True)
class LoadResult:
    rows: int
    bytes: int
    label: str = ""
    #: Rows the target rejected and the sink recorded in ``dbmazz_rejected``
    #: (REJECTED_ROWS=table) instead of failing the load.
    rejected: int = 0
