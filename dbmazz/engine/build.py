"""Wire an :class:`Engine` from a :class:`Config`: live (PostgreSQL) or replay (capture file)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg

from dbmazz.config import Config
from dbmazz.engine.core import ChunkSource, Engine, Settings
from dbmazz.errors import ConfigError, SetupError, SourceConnectionError
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.sink.base import Sink
from dbmazz.source.catalog import describe_relations
from dbmazz.source.chunk import WalChunk
from dbmazz.state.checkpoint import MemoryCheckpointStore, PostgresCheckpointStore

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
    )


def settings_from(config: Config, **overrides: object) -> Settings:
    settings = Settings(
        flush_rows=config.flush_rows,
        flush_bytes=config.flush_bytes,
        flush_interval_ms=config.flush_interval_ms,
        max_inflight_bytes=config.max_inflight_bytes,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


class CaptureSource:
    """A capture file as a :class:`ChunkSource`: replays its chunks, then is exhausted."""

    def __init__(self, chunks: Iterator[WalChunk]) -> None:
        self._chunks = chunks
        self.exhausted = False

    def read_chunk(self, max_bytes: int = 0, timeout_s: float = 0.0) -> WalChunk | None:
        if self.exhausted:
            return None
        chunk = next(self._chunks, None)
        if chunk is None:
            self.exhausted = True
        return chunk

    def confirm(self, lsn: int) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass


def build_replay_engine(config: Config, path: str | Path, *, sink: Sink | None = None) -> Engine:
    from dbmazz.source.capture import capture_metadata, iter_capture

    metadata = capture_metadata(path)
    schemas = SchemaCache(keys_from_map(metadata.primary_keys), config.table_map)
    return Engine(
        source_factory=lambda _lsn: CaptureSource(iter_capture(path)),
        sink=sink or make_sink(config),
        schemas=schemas,
        checkpoints=MemoryCheckpointStore(),
        settings=settings_from(config, stop_when_exhausted=True),
    )


def build_live_engine(config: Config, *, sink: Sink | None = None) -> Engine:
    """Set up both ends (unless SETUP=skip) and return an engine ready to ``run``."""
    from dbmazz.engine.setup.postgres import setup_source
    from dbmazz.source.replication import ReplicationStream

    dsn = config.source_dsn
    if not config.tables:
        raise ConfigError(["TABLES: required; list the tables to replicate, e.g. public.orders"])
    if config.snapshot != "never":
        from dbmazz.errors import NotImplementedYet

        raise NotImplementedYet(
            f"SNAPSHOT={config.snapshot} is not implemented yet; set SNAPSHOT=never to stream "
            "changes only"
        )
    source = setup_source(
        dsn,
        config.tables,
        publication=config.publication_name,
        slot=config.slot_name,
        replica_identity=config.replica_identity,
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            relations = describe_relations(conn, config.tables)
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    schemas = SchemaCache(keys_from_map(source.primary_keys), config.table_map)
    tables = []
    for relation in relations.values():
        schemas.on_relation(relation)
        tables.append(schemas.table(relation.oid))
    _check_target_names(tables)
    target = sink or make_sink(config)
    if config.setup == "auto":
        target.setup(tables)
    checkpoints = PostgresCheckpointStore(dsn, config.slot_name)
    start = checkpoints.load() or 0
    publication = config.publication_name
    slot = config.slot_name

    def open_stream(lsn: int) -> ChunkSource:
        return ReplicationStream.open(dsn, slot, [publication], lsn, messages=True)

    log.info("streaming %d table(s) from slot %s into %s", len(tables), slot, target.name)
    return Engine(
        source_factory=open_stream,
        sink=target,
        schemas=schemas,
        checkpoints=checkpoints,
        settings=settings_from(config),
        start_lsn=start,
    )


def _check_target_names(tables: list) -> None:  # type: ignore[type-arg]
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
