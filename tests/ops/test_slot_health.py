"""Slot health in Status, Prometheus, `dbmazz status` and `dbmazz top`: retained WAL,
wal_status/safe_wal_size, active, and a warning past SLOT_WAL_WARN_BYTES."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from dbmazz.api.prometheus import MetricsServer
from dbmazz.api.server import GrpcServer
from dbmazz.engine.service import EngineService
from dbmazz.engine.slot_health import SlotMonitor
from dbmazz.pipeline.batch import LoadResult, TableBatch
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.replication import ReplicationStream
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster
from tests.e2e.harness import duckdb_config
from tests.integration._replication_helpers import make_slot, make_table
from tests.scripted import eventually


class GatedSink(DuckDBSink):
    """Loads wait until the gate opens: received changes stay unconfirmed meanwhile."""

    gate = threading.Event()

    def write(self, batch: TableBatch) -> LoadResult:
        self.gate.wait(120)
        return super().write(batch)


def test_slot_health_is_reported_and_warned(private_pg_cluster: PostgresCluster,
                                            tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz")
    cluster = private_pg_cluster
    cluster.set_setting("max_slot_wal_keep_size", "256MB")
    db = Database(cluster, cluster.create_database())
    db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    monkeypatch.setattr(EngineService, "slot_sample_interval_s", 0.2)
    config = duckdb_config(db, tmp_path, ["public.t"], snapshot="never",
                           heartbeat_interval_s=0, slot_wal_warn_bytes=4 << 20)
    GatedSink.gate.set()
    service = EngineService(config, sink=GatedSink(config.duckdb_path))
    server = GrpcServer(service, port=0)
    server.start()
    metrics = MetricsServer(service, port=0)
    metrics.start()
    service.start()
    try:
        eventually(lambda: service.serving, "streaming", 120)

        def sampled_active() -> bool:
            slot = service.status().slot_health
            return slot is not None and slot.exists and slot.active
        eventually(sampled_active, "an active slot sample", 60)
        slot = service.status().slot_health
        assert slot is not None and slot.wal_status == "reserved" and not slot.warning
        # The limit plus up to a few WAL segments.
        assert slot.safe_wal_size is not None and 0 < slot.safe_wal_size < 320 << 20
        # Loads held back, nothing is confirmed: WAL written now is retained for the slot.
        GatedSink.gate.clear()
        db.execute("INSERT INTO public.t SELECT g, (SELECT string_agg(md5(g::text || x::text), "
                   "'') FROM generate_series(1, 100) x) FROM generate_series(1, 3000) g")

        def warned() -> bool:
            health = service.status().slot_health
            return health is not None and bool(health.warning)
        eventually(warned, "the retained-WAL warning", 60)
        slot = service.status().slot_health
        assert slot is not None and slot.retained_bytes is not None
        assert slot.retained_bytes >= 4 << 20
        assert "retains" in slot.warning and "SLOT_WAL_WARN_BYTES 4.0 MiB" in slot.warning
        assert any("retains" in r.getMessage() and r.levelno == logging.WARNING
                   for r in caplog.records)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics",
                                    timeout=30) as reply:
            text = reply.read().decode()
        values = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
                  for line in text.splitlines() if line and not line.startswith("#")}
        assert values["dbmazz_slot_retained_wal_bytes"] >= 4 << 20
        assert values["dbmazz_slot_warning"] == 1 and values["dbmazz_slot_active"] == 1
        assert values['dbmazz_slot_wal_status{wal_status="reserved"}'] == 1
        assert 0 < values["dbmazz_slot_safe_wal_size_bytes"] < 320 << 20
        env = {**os.environ, "COLUMNS": "250"}
        for command in (["status"], ["top", "--once"]):
            shown = subprocess.run([sys.executable, "-m", "dbmazz", *command, "--address",
                                    server.address], capture_output=True, text=True,
                                   timeout=60, env=env).stdout
            assert "wal_status reserved" in shown and "before invalidation" in shown, shown
            assert "retains" in shown and "active (pid" in shown, shown
    finally:
        GatedSink.gate.set()
        service.stop(timeout=60)
        server.stop(0)
        metrics.stop()
        if service.engine is not None:
            service.engine.sink.close()


def test_a_slot_that_becomes_active_after_the_first_sample_shows_active_soon(
        pg_db: Database) -> None:
    # The monitor starts just before the engine opens its stream: the first sample sees the
    # slot inactive, and a starting engine must not show "inactive" for a whole interval.
    make_table(pg_db)
    make_slot(pg_db)
    monitor = SlotMonitor(pg_db.dsn, "s1", warn_bytes=1 << 30, interval_s=3600)
    monitor.start()
    try:
        eventually(lambda: monitor.latest is not None, "the first sample", 60)
        latest = monitor.latest
        assert latest is not None and latest.exists and not latest.active
        with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]):
            eventually(lambda: (s := monitor.latest) is not None and s.active,
                       "a sample of the active slot", 60)
    finally:
        monitor.stop()


def test_a_table_dropped_from_the_publication_while_streaming_is_reported(
        pg_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz")
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute('CREATE TABLE public."Odd Name" (id int PRIMARY KEY)')
    monkeypatch.setattr(EngineService, "slot_sample_interval_s", 0.2)
    config = duckdb_config(pg_db, tmp_path, ["public.t", 'public."Odd Name"'],
                           snapshot="never", heartbeat_interval_s=0)
    service = EngineService(config, sink=DuckDBSink(config.duckdb_path))
    service.start()

    def warning() -> str:
        health = service.status().slot_health
        return health.warning if health is not None else ""

    try:
        eventually(lambda: service.serving, "streaming", 120)
        eventually(lambda: (h := service.status().slot_health) is not None and h.active,
                   "an active slot sample", 60)
        assert warning() == ""
        pg_db.execute(f'ALTER PUBLICATION {config.publication_name} DROP TABLE public."Odd Name"')
        eventually(lambda: "Odd Name" in warning(), "the unpublished-table warning", 60)
        health = service.status().slot_health
        assert health is not None and health.unpublished == ("public.Odd Name",)
        assert warning() == (f"publication '{config.publication_name}' no longer publishes "
                             "public.Odd Name: their changes are not decoded; restart dbmazz "
                             "(setup adds them back and loads their rows again)")
        logged = lambda: sum("no longer publishes" in r.getMessage()  # noqa: E731
                             for r in caplog.records)
        eventually(lambda: logged() > 0, "the warning in the log", 60)
        eventually(lambda: (h := service.status().slot_health) is not None
                   and h.sampled_at > health.sampled_at + 0.5, "later samples", 60)
        assert logged() == 1  # once, not at every sample
        pg_db.execute(f'ALTER PUBLICATION {config.publication_name} ADD TABLE public."Odd Name"')
        eventually(lambda: warning() == "", "the warning to clear", 60)
    finally:
        service.stop(timeout=60)
        if service.engine is not None:
            service.engine.sink.close()


def test_a_table_dropped_from_the_publication_while_streaming_is_loaded_again(
        pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SNAPSHOT=initial the engine adds it back and loads it again (an on-demand
    snapshot), so the rows changed while it was out are loaded."""
    from dbmazz.testing.compare import compare, duckdb_fetcher

    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO public.t SELECT g, 'before' FROM generate_series(1, 200) g")
    monkeypatch.setattr(EngineService, "slot_sample_interval_s", 0.2)
    config = duckdb_config(pg_db, tmp_path, ["public.t"], heartbeat_interval_s=0)
    sink = DuckDBSink(config.duckdb_path)
    service = EngineService(config, sink=sink)
    service.start()
    try:
        eventually(lambda: service.serving, "streaming", 120)
        with pg_db.connect() as conn, conn.transaction():
            # In one transaction: the changes after the DROP are not decoded.
            conn.execute(f"ALTER PUBLICATION {config.publication_name} DROP TABLE public.t")
            conn.execute("UPDATE public.t SET v = 'while out' WHERE id % 2 = 0")
            conn.execute("DELETE FROM public.t WHERE id % 5 = 0")
            conn.execute("INSERT INTO public.t VALUES (1000, 'while out')")

        def reloaded() -> bool:
            progress = service.status().snapshot
            return (progress is not None and progress.kind == "on_demand"
                    and progress.tables_done == 1)
        eventually(reloaded, "the table's rows to be loaded again", 120)
        pg_db.execute("UPDATE public.t SET v = 'after' WHERE id % 3 = 0")
        engine = service.engine
        assert engine is not None
        [(lsn,)] = pg_db.query("SELECT pg_logical_emit_message(true, 'm', 'x')::text")
        from dbmazz.lsn import parse_lsn
        assert engine.wait_durable(parse_lsn(str(lsn)), 120)
        with pg_db.connect() as conn:
            diff = compare(conn, "public", "t", ["id"],
                           duckdb_fetcher(sink.query, "public", "t"))
        # Rows deleted while it was out stay until `dbmazz verify --repair` (docs/snapshot.md).
        assert not diff.missing_in_target and not diff.different, str(diff)
        assert sorted(k for (k,) in diff.unexpected_in_target) == list(range(5, 201, 5))
        [(published,)] = pg_db.query(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s",
            (config.publication_name,))
        assert published == 1
    finally:
        service.stop(timeout=60)
        sink.close()
