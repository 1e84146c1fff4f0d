"""An engine fed by hand-built pgoutput (no PostgreSQL): for control-plane unit tests."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dbmazz.engine.core import Engine, Settings
from dbmazz.errors import SinkError
from dbmazz.pipeline.batch import LoadResult, TableBatch
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.chunk import WalChunk
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.state.checkpoint import MemoryCheckpointStore
from dbmazz.testing import wal

ORDERS = Relation(16384, "public", "orders", "d", (
    RelationColumn("id", 20, -1, True), RelationColumn("note", 25, -1, False)))


class ScriptedSource:
    """A ChunkSource whose chunks the test pushes; remembers what was confirmed."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[WalChunk] = queue.Queue()
        self.confirmed = 0
        self.keepalives = 0
        self.server_wal_end = 0
        self.reads_socket = False
        self.exhausted = False

    def read_chunk(self, max_bytes: int = 0, timeout_s: float = 0.1) -> WalChunk | None:
        try:
            return self.chunks.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def confirm(self, lsn: int) -> None:
        self.confirmed = max(self.confirmed, lsn)

    def keepalive(self) -> None:
        self.keepalives += 1

    def close(self) -> None:
        pass


@dataclass
class Script:
    """Writes transactions into a :class:`ScriptedSource`, LSNs increasing."""

    source: ScriptedSource = field(default_factory=ScriptedSource)
    lsn: int = 0x1_0000_0000
    sent_relation: bool = False
    next_id: int = 1

    def insert(self, rows: int = 3, relation: Relation = ORDERS) -> int:
        """One transaction inserting ``rows`` rows; returns its commit end LSN."""
        messages: list[bytes] = []
        lsns: list[int] = []
        if not self.sent_relation:
            messages.append(wal.relation(relation))
            lsns.append(self.lsn)
            self.sent_relation = True
        commit_lsn = self.lsn + 16 * (rows + 2)
        messages.append(wal.begin(commit_lsn))
        lsns.append(self.lsn + 1)
        for i in range(rows):
            messages.append(wal.insert(relation.oid, [str(self.next_id), f"n{self.next_id}"]))
            lsns.append(self.lsn + 16 * (i + 1))
            self.next_id += 1
        end_lsn = commit_lsn + 8
        messages.append(wal.commit(commit_lsn, end_lsn))
        lsns.append(commit_lsn)
        self.lsn = end_lsn + 8
        self.source.server_wal_end = max(self.source.server_wal_end, self.lsn)
        self.source.chunks.put(WalChunk.from_messages(messages, lsns))
        return end_lsn


class BrokenSink(DuckDBSink):
    """A DuckDB sink whose loads fail fatally (not retryable)."""

    def write(self, batch: TableBatch) -> LoadResult:
        raise SinkError(f"target rejected the load of {batch.table.source_name}: disk full",
                        "free space on the target, then restart dbmazz", retryable=False)


def scripted_engine(tmp_path: Path, *, broken: bool = False,
                    **settings: int) -> tuple[Engine, Script, DuckDBSink]:
    script = Script()
    sink_type = BrokenSink if broken else DuckDBSink
    sink = sink_type(str(tmp_path / "scripted.duckdb"))
    schemas = SchemaCache(keys_from_map({"public.orders": ["id"]}))
    schemas.on_relation(ORDERS)
    sink.setup([schemas.table(ORDERS.oid)])
    engine = Engine(
        source_factory=lambda _lsn: script.source,
        sink=sink,
        schemas=schemas,
        checkpoints=MemoryCheckpointStore(),
        settings=Settings(**{"flush_interval_ms": 20, **settings}),  # type: ignore[arg-type]
    )
    return engine, script, sink


def eventually(predicate: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Bounded polling on observable state (never a fixed sleep as synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)
