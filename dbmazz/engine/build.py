"""Wire an :class:`Engine` from a :class:`Config`: live (PostgreSQL) or replay (capture file)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa

from dbmazz.config import Config
from dbmazz.engine.core import ChunkSource, Engine, Settings
from dbmazz.errors import ConfigError, SetupError, SourceConnectionError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.schema_cache import SchemaCache, TableKeys, keys_from_map
from dbmazz.sink.base import ReachabilityCheck, RowReader, Sink, TargetChecked
from dbmazz.source.catalog import (
    CurrentKeys,
    describe_relations,
    load_column_types,
    split_table_name,
    wal_position,
)
from dbmazz.source.database import SourceDatabase
from dbmazz.source.pgoutput import Relation
from dbmazz.state.checkpoint import (
    MemoryCheckpointStore,
    PostgresCheckpointStore,
    mark_slot_lost,
)

if TYPE_CHECKING:
    from dbmazz.snapshot.sink import SnapshotAwareSink
    from dbmazz.snapshot.stage import Snapshots
    from dbmazz.source.setup import SourceSetup

log = logging.getLogger(__name__)


def make_sink(config: Config) -> Sink:
    if config.sink == "starrocks":
        from dbmazz.sink.starrocks import StarRocksSink

        return StarRocksSink.from_config(config)
    from dbmazz.sink.duckdb import DuckDBSink

    return DuckDBSink(
        config.duckdb_path,
        delete_mode=config.delete_mode,
        dropped_columns=config.dropped_columns,
        rejected_rows=config.rejected_rows,
    )


def settings_from(config: Config, **overrides: object) -> Settings:
    settings = Settings(
        flush_rows=config.flush_rows,
        flush_bytes=config.flush_bytes,
        flush_interval_ms=config.flush_interval_ms,
        max_inflight_bytes=config.max_inflight_bytes,
        heartbeat_interval_s=config.heartbeat_interval_s,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def spool_memory_bytes(config: Config) -> int:
    """Memory a streamed transaction may hold until its Stream Commit: a quarter of the
    in-flight budget, so spooling and the flushes in flight share one bound. More buys
    nothing: a streamed transaction is larger than the server's logical_decoding_work_mem
    by definition and spills to a temporary file anyway (the page cache, not RSS)."""
    return max(1 << 20, config.max_inflight_bytes // 4)


def build_replay_engine(config: Config, path: str | Path, *, sink: Sink | None = None,
                        primary_keys: Mapping[str, tuple[str, ...]] | None = None) -> Engine:
    """``primary_keys`` (``--primary-keys``) win over the capture's recorded keys; tables
    known to neither are looked up in SOURCE_URL's catalog when it is set."""
    from dbmazz.engine.replay_keys import replay_key_resolver
    from dbmazz.source.capture import CaptureSource, capture_metadata, iter_capture

    metadata = capture_metadata(path)
    resolver = replay_key_resolver(
        {**metadata.primary_keys, **(primary_keys or {})},
        config.source_dsn if config.source_url is not None else None)
    schemas = SchemaCache(resolver, config.table_map)
    return Engine(
        source_factory=lambda _lsn: CaptureSource(iter_capture(path)),
        sink=sink or make_sink(config),
        schemas=schemas,
        checkpoints=MemoryCheckpointStore(),
        settings=settings_from(config, stop_when_exhausted=True),
    )


def setup_source_for(config: Config, *, check_only: bool = False,
                     stop: threading.Event | None = None,
                     export_snapshot: bool = False) -> SourceSetup:
    """The source's setup as the configuration asks for it (run, `dbmazz setup` and
    `setup --check` alike): the one place that maps settings onto
    :func:`~dbmazz.source.setup.setup_source`."""
    from dbmazz.source.setup import setup_source

    return setup_source(
        config.source_dsn,
        config.tables,
        publication=config.publication_name,
        slot=config.slot_name,
        replica_identity=config.replica_identity,
        slot_failover=config.slot_failover,
        lock_timeout_s=config.setup_lock_timeout_s,
        check_only=check_only,
        stop=stop,
        export_snapshot=export_snapshot,
        primary_dsn=config.primary_dsn if config.primary_url is not None else None,
    )


def build_live_engine(config: Config, *, sink: Sink | None = None,
                      stop: threading.Event | None = None,
                      snapshot_hold_after: int | None = None) -> Engine:
    """Set up both ends (unless SETUP=skip) and return an engine ready to ``run``.

    ``stop`` interrupts setup's retry backoffs (shutdown requested during setup).
    ``snapshot_hold_after`` is a test hook: the initial snapshot holds after that many
    chunks (see :class:`~dbmazz.snapshot.load.ChunkLoader`)."""
    if not config.tables:
        raise ConfigError(["TABLES: required; list the tables to replicate, e.g. public.orders"])
    _check_target_reachable(config, sink)
    # A new slot keeps its exported snapshot open until the initial snapshot read it.
    source = setup_source_for(config, stop=stop, export_snapshot=config.snapshot != "never")
    try:
        return _build_live(config, source, sink, snapshot_hold_after)
    except BaseException:
        if source.slot_creation is not None:
            source.slot_creation.close()
        raise


def _check_target_reachable(config: Config, sink: Sink | None) -> None:
    """Log in to StarRocks before the source is touched: a wrong password or an unreachable
    FE then fails setup with nothing created on either side."""
    if isinstance(sink, ReachabilityCheck):
        sink.check_reachable()
    elif sink is None and config.sink == "starrocks":
        from dbmazz.sink.starrocks.setup import check_connection

        check_connection(config=config)


def _build_live(config: Config, source: SourceSetup, sink: Sink | None,
                hold_after_chunks: int | None) -> Engine:
    from dbmazz.snapshot.sink import SnapshotAwareSink
    from dbmazz.snapshot.stage import replicated_extra_tables
    from dbmazz.source.replication import ReplicationStream, SlotBound
    from dbmazz.source.setup import primary_keys

    dsn = config.source_dsn
    # Tables an on-demand snapshot added stay replicated across restarts.
    extra = replicated_extra_tables(config.primary_dsn, config.slot_name, source.tables)
    keys = TableKeys(source.primary_keys)  # on-demand snapshots add to them while streaming
    try:
        with SourceDatabase(dsn).connect("setup") as conn:
            if extra:
                keys.add(primary_keys(conn, extra, strict=False))
            relations = describe_relations(conn, [*source.tables, *extra],
                                           config.publication_name)
            types = load_column_types(conn, relations.values())
            # After the catalog read: a change committed later under another name is one
            # made after a rename (SchemaCache.renamed_from).
            described_at = wal_position(conn)
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"lost the connection to PostgreSQL: {exc}") from None
    schemas = SchemaCache(keys.resolve, config.table_map, types, accept=keys.replicated,
                          catalog=CurrentKeys(SourceDatabase(dsn)))
    tables = []
    for relation in relations.values():
        schemas.on_relation(relation, described_at)
        tables.append(schemas.table(relation.oid))
    _check_target_names(tables)
    inner = sink or make_sink(config)
    target = SnapshotAwareSink(inner)
    _check_key_changes_supported(inner, list(relations.values()), tables)
    if config.setup == "auto":
        target.setup(tables)
    elif isinstance(inner, TargetChecked):
        inner.check_target(tables)  # SETUP=skip: tables made by hand, checked before loads
    # On a standby (PRIMARY_URL set) every write goes to the primary.
    writes = SourceDatabase(config.primary_dsn)
    checkpoints = PostgresCheckpointStore(writes, config.slot_name)
    checkpoint = checkpoints.load()
    start = checkpoint or 0
    publication = config.publication_name
    slot = config.slot_name

    socket_reader = {"auto": None, "socket": True, "libpq": False}[config.replication_reader]
    slot_confirmed = source.confirmed_flush_lsn or source.consistent_point or 0
    # A reconnect that finds the slot past what this engine confirmed to it refuses it.
    bound = SlotBound(max(start, slot_confirmed),
                      on_moved=lambda reason: mark_slot_lost(writes, slot, reason))

    def open_stream(lsn: int) -> ChunkSource:
        stream = ReplicationStream.open(dsn, slot, [publication], lsn, messages=True,
                                        socket_reader=socket_reader,
                                        proto_version=config.pgoutput_protocol,
                                        streaming=None, skip_empty_transactions=True,
                                        spool_memory_bytes=spool_memory_bytes(config),
                                        bound=bound)
        bound.track(stream)
        return stream

    snapshots = _snapshots(config, mode=config.snapshot, sink=target, schemas=schemas,
                           keys=keys, tables=tables, source=source, checkpoint=checkpoint,
                           hold_after_chunks=hold_after_chunks)
    snapshots.reconcile_tables()
    heartbeat = None
    if config.heartbeat_interval_s > 0:
        from dbmazz.source.heartbeat import Heartbeat

        heartbeat = Heartbeat(writes)
    log.info("streaming %d table(s) from slot %s into %s", len(tables), slot, target.name)
    return Engine(
        source_factory=open_stream,
        sink=inner,
        writer=target,
        schemas=schemas,
        checkpoints=checkpoints,
        settings=settings_from(config),
        start_lsn=start,
        slot_confirmed_lsn=slot_confirmed,
        heartbeat=heartbeat,
        snapshots=snapshots,
        slot_failover=source.slot_failover,
        slot_synced=source.slot_synced,
    )


def build_standalone_snapshots(config: Config, tables: Sequence[str]) -> Snapshots:
    """The snapshot side without an engine, for on-demand snapshots of ``tables`` while
    dbmazz is stopped (``dbmazz snapshot --table``). The caller closes
    ``snapshots.context`` (sink and progress store) when done."""
    from dbmazz.snapshot.sink import SnapshotAwareSink
    from dbmazz.source.setup import primary_keys

    others = [name for name in (".".join(split_table_name(t)) for t in config.tables)
              if name not in tables]
    try:
        with SourceDatabase(config.source_dsn).connect("setup") as conn:
            keys = TableKeys(primary_keys(conn, others, strict=False))
            relations = describe_relations(conn, others, config.publication_name)
            types = load_column_types(conn, relations.values())
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"lost the connection to PostgreSQL: {exc}") from None
    schemas = SchemaCache(keys.resolve, config.table_map, types)
    known = [schemas.build(rel) for name, rel in relations.items() if keys.get(name)]
    return _snapshots(config, mode="never", sink=SnapshotAwareSink(make_sink(config)),
                      schemas=schemas, keys=keys, tables=known, source=None, checkpoint=None)


def _snapshots(config: Config, *, mode: str, sink: SnapshotAwareSink, schemas: SchemaCache,
               keys: TableKeys, tables: Sequence[TableSchema], source: SourceSetup | None,
               checkpoint: int | None, hold_after_chunks: int | None = None) -> Snapshots:
    from dbmazz.snapshot.context import SnapshotContext
    from dbmazz.snapshot.progress import SnapshotProgressStore
    from dbmazz.snapshot.replicated import ReplicatedTablesStore
    from dbmazz.snapshot.stage import Snapshots

    dsn, slot = config.source_dsn, config.slot_name
    # On a standby (PRIMARY_URL set) the progress is written to the primary.
    writes = SourceDatabase(config.primary_dsn)
    context = SnapshotContext(dsn=dsn, slot=slot, publication=config.publication_name,
                              replica_identity=config.replica_identity, sink=sink,
                              schemas=schemas, keys=keys,
                              store=SnapshotProgressStore(writes, slot),
                              replicated=ReplicatedTablesStore(writes, slot),
                              workers=config.snapshot_workers,
                              hold_after_chunks=hold_after_chunks)
    return Snapshots(context, mode=mode, tables={t.source_name: t for t in tables},
                     source=source, checkpoint=checkpoint)


def _check_key_changes_supported(sink: Sink, relations: list[Relation],
                                 tables: list[TableSchema]) -> None:
    """Refuse, at setup, tables a sink could not replicate exactly: under REPLICA IDENTITY
    other than FULL, a primary-key change of a row with an unchanged TOASTed value arrives
    without that value, which only a sink that can read its rows back can carry to the new
    key (:class:`~dbmazz.sink.base.RowReader`)."""
    if isinstance(sink, RowReader):
        return
    fixed = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean,
             pa.types.is_temporal)
    exposed = [
        table.source_name
        for relation, table in zip(relations, tables, strict=True)
        if relation.replica_identity != "f" and any(
            not any(test(c.arrow_type) for test in fixed)
            for c in table.columns if c.name not in table.key_columns)
    ]
    if exposed:
        raise SetupError(
            f"the {sink.name} sink cannot read rows back, so a primary-key change of a row "
            "whose TOASTed value did not change would lose that value on "
            f"{', '.join(exposed)} (their REPLICA IDENTITY is not FULL)",
            f"ALTER TABLE … REPLICA IDENTITY FULL on {', '.join(exposed)} "
            "(REPLICA_IDENTITY=full), or use the duckdb or starrocks sink",
        )


def _check_target_names(tables: list[TableSchema]) -> None:
    seen: dict[str, str] = {}
    for table in tables:
        other = seen.get(table.target_name)
        if other is not None:
            raise SetupError(
                f"tables {other} and {table.source_name} both load into target table "
                f"{table.target_name!r}",
                f"rename one with TABLE_MAP, e.g. TABLE_MAP={table.source_name}:"
                f"{table.namespace}_{table.name}",
            )
        seen[table.target_name] = table.source_name


def target_tables(config: Config, source: SourceSetup) -> list[TableSchema]:
    """The target shape of every configured table, read from the source catalog."""
    try:
        with SourceDatabase(config.source_dsn).connect("setup") as conn:
            relations = describe_relations(conn, list(source.tables),
                                           config.publication_name)
            types = load_column_types(conn, relations.values())
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"lost the connection to PostgreSQL: {exc}") from None
    schemas = SchemaCache(keys_from_map(source.primary_keys), config.table_map, types)
    tables = [schemas.build(relation) for relation in relations.values()]
    _check_target_names(tables)
    return tables
