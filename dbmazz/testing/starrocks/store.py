"""Table rows and how a load changes them (Primary Key and Duplicate Key semantics).

Rows are dicts keyed by lower-case column name. A Primary Key table keys them by the
tuple of key values; a Duplicate Key table just appends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from dbmazz.testing.starrocks.coltypes import sort_key

Op = Literal["upsert", "delete"]


@dataclass
class RowOp:
    op: Op
    # Only the columns the load supplies (partial update) or all columns (full row).
    values: dict[str, Any]


@dataclass
class ApplyMode:
    partial: bool = False
    merge_condition: str | None = None


@dataclass
class TableData:
    primary: bool
    key_names: list[str]
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    _appended: int = 0

    def key_of(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(values.get(k) for k in self.key_names)

    def apply(
        self,
        ops: Iterable[RowOp],
        mode: ApplyMode,
        complete: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Apply a whole load; ``complete`` fills columns a new row does not supply.

        Callers validate everything first, so this cannot fail half way: a load is
        all or nothing.
        """
        for op in ops:
            if not self.primary:
                if op.op == "upsert":
                    self._appended += 1
                    self.rows[(self._appended,)] = complete(op.values)
                continue
            key = self.key_of(op.values)
            if op.op == "delete":
                # Deletes are never conditional.
                self.rows.pop(key, None)
                continue
            old = self.rows.get(key)
            if old is not None and mode.merge_condition is not None:
                column = mode.merge_condition
                if column in op.values and sort_key(op.values[column]) < sort_key(old.get(column)):
                    continue
            if old is not None and mode.partial:
                merged = dict(old)
                merged.update(op.values)
                self.rows[key] = merged
            else:
                self.rows[key] = complete(op.values)

    def snapshot(self) -> list[dict[str, Any]]:
        if not self.primary:
            return [dict(r) for _, r in sorted(self.rows.items())]
        ordered = sorted(self.rows.items(), key=lambda kv: tuple(sort_key(v) for v in kv[0]))
        return [dict(r) for _, r in ordered]

    def add_column(self, name: str, value: Callable[[], Any]) -> None:
        for row in self.rows.values():
            row[name] = value()

    def drop_column(self, name: str) -> None:
        for row in self.rows.values():
            row.pop(name, None)

    def truncate(self) -> None:
        self.rows.clear()
