"""What every snapshot of one engine shares: its context, plans, and what an on-demand
snapshot needs of the engine and of the snapshot stage (Protocols, so
:mod:`dbmazz.snapshot.ondemand` and :mod:`dbmazz.snapshot.stage` do not import each other).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psycopg

from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.schema_cache import SchemaCache, TableKeys, diff
from dbmazz.snapshot.progress import ON_DEMAND, SnapshotProgress, SnapshotProgressStore
from dbmazz.snapshot.read import DEFAULT_CHUNK_PAGES, Chunk, ReaderKind, TableLayout
from dbmazz.snapshot.replicated import ReplicatedTablesStore
from dbmazz.snapshot.sink import SnapshotAwareSink
from dbmazz.source.catalog import describe_relations, load_column_types
from dbmazz.source.database import SourceDatabase
from dbmazz.source.setup import ReplicaIdentityMode, primary_keys

StopCheck = Callable[[], bool]

#: Tuning/test knob: pages per chunk (default 4096 = 32 MiB of heap).
CHUNK_PAGES_ENV = "DBMAZZ_SNAPSHOT_CHUNK_PAGES"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


class LiveEngine(Protocol):
    """What an on-demand snapshot needs of the running engine."""

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool: ...


@dataclass
class SnapshotContext:
    """What any snapshot of this engine needs."""

    dsn: str
    slot: str
    publication: str
    replica_identity: ReplicaIdentityMode
    sink: SnapshotAwareSink
    schemas: SchemaCache
    #: The keys the schema cache resolves from (on-demand snapshots add to them).
    keys: TableKeys
    store: SnapshotProgressStore
    #: The configured tables the slot replicates whole (:mod:`dbmazz.snapshot.replicated`).
    replicated: ReplicatedTablesStore
    workers: int = 2
    reader_kind: ReaderKind = "auto"
    chunk_pages: int = field(default_factory=lambda: _env_int(CHUNK_PAGES_ENV,
                                                               DEFAULT_CHUNK_PAGES))
    #: Test hook (:class:`~dbmazz.snapshot.load.ChunkLoader` ``hold_after``).
    hold_after_chunks: int | None = None

    def connect(self) -> psycopg.Connection:
        return SourceDatabase(self.dsn).connect("snapshot")


def describe_schemas(ctx: SnapshotContext, tables: Sequence[str]
                     ) -> tuple[dict[str, tuple[str, ...]], dict[str, TableSchema]]:
    """The keys and the shapes of ``tables`` as the catalog has them now."""
    with ctx.connect() as conn:
        keys = primary_keys(conn, tables, strict=True)
        relations = describe_relations(conn, tables, ctx.publication)
        load_column_types(conn, relations.values(), ctx.schemas.types)
    return keys, {name: ctx.schemas.build(relation, keys.get(name))
                  for name, relation in relations.items()}


def reshape_rewritten(ctx: SnapshotContext, schemas: dict[str, TableSchema],
                      tables: Sequence[str]) -> None:
    """Before ``tables`` are read again after a rewrite: an ``ALTER TABLE … TYPE`` (a
    rewrite) changed what they hold, and rows read with the old shape would be cast to the
    old types (a float8 rounded to float4). The new shape replaces the old one in
    ``schemas``, and the target takes it first as CDC would (a column widened), so the
    snapshot's values reach it exactly. CDC's own delta, when the stream brings the new
    shape, then finds the target already holding it."""
    names = [t for t in tables if t in schemas]
    with ctx.connect() as conn:
        relations = describe_relations(conn, names, ctx.publication)
        load_column_types(conn, relations.values(), ctx.schemas.types)
    for name, relation in relations.items():
        before = schemas[name]
        after = ctx.schemas.build(relation, before.key_columns)  # the key the engine knows
        if before.columns != after.columns:
            ctx.sink.apply_schema_delta(diff(before, after))
            schemas[name] = after


@dataclass
class Plan:
    """Chunks to load, the version their rows carry, the snapshot to read them in."""

    version: int
    snapshot_name: str | None
    chunks: list[Chunk]
    layouts: list[TableLayout]
    done: dict[str, tuple[int, int]]


def on_demand_tables(store: SnapshotProgressStore) -> list[str]:
    """Tables an on-demand snapshot added to this slot's replication (kept across restarts)."""
    try:
        return sorted({r.chunk.table for r in store.load(ON_DEMAND)})
    except psycopg.Error:
        return []




class SnapshotHost(Protocol):
    """What an on-demand snapshot needs of the snapshot stage (:class:`~dbmazz.snapshot.
    stage.Snapshots`): the context, the known tables, progress publishing, plan loading."""

    context: SnapshotContext
    tables: dict[str, TableSchema]

    def publish(self, progress: SnapshotProgress) -> None: ...

    def on_demand_finished(self, tables: Sequence[str]) -> None: ...

    def load_plan(self, plan: Plan, kind: str, should_stop: StopCheck, *,
                  tables: dict[str, TableSchema] | None = None,
                  progress: SnapshotProgress | None = None,
                  write: Callable[..., int] | None = None) -> bool: ...
