"""The Sink protocol: what the engine needs from a target.

Calls for one table never overlap; calls for different tables may run in parallel threads.
``write`` returns only when the target has durably applied the batch (the engine confirms
LSNs to PostgreSQL on that basis) and must be idempotent: the same batch written twice
(after a crash, replay) leaves the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dbmazz.pipeline.batch import LoadResult, SchemaDelta, TableBatch, TableSchema


class Sink(Protocol):
    name: str

    def setup(self, tables: Sequence[TableSchema]) -> None:
        """Make sure every target table exists with the source columns + audit columns."""

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        """Change a target table before the first batch with the new shape arrives."""

    def write(self, batch: TableBatch) -> LoadResult:
        """Apply one merged batch; raise :class:`dbmazz.errors.SinkError` on failure."""

    def close(self) -> None:
        """Release connections; pending work has been written or abandoned."""
