"""A sink that accepts everything and keeps nothing: measures reading, decoding and
merging alone (benchmarks, throughput tests)."""

from __future__ import annotations

from collections.abc import Sequence

from dbmazz.pipeline.batch import LoadResult, SchemaDelta, TableBatch, TableSchema


class NullSink:
    name = "null"

    def setup(self, tables: Sequence[TableSchema]) -> None:
        pass

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        pass

    def write(self, batch: TableBatch) -> LoadResult:
        return LoadResult(rows=batch.num_rows, bytes=0)

    def close(self) -> None:
        pass
