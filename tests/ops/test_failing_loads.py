"""A pipeline that cannot load is not healthy: while loads into StarRocks (the emulator)
fail and retry — snapshot and CDC — Status, Prometheus and `dbmazz top` show the retries
and the current error, health turns NOT_SERVING after UNHEALTHY_AFTER_S, and SIGTERM ends
`dbmazz run` within seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbmazz.api.client import Client
from dbmazz.api.prometheus import MetricsServer
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.service import EngineService
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.scripted import eventually

SLOT = "dbmazz_fail"


@dataclass
class Served:
    service: EngineService
    client: Client
    metrics_port: int
    address: str

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=30) as reply:
            text = reply.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def _config(db: Database, sr: StarRocksEmulator, http_url: str, **extra: Any) -> Config:
    return Config.load({
        "source_url": db.dsn, "tables": "public.t", "sink": "starrocks",
        "starrocks_url": http_url, "starrocks_mysql_port": sr.mysql_port,
        "starrocks_db": "fail", "slot_name": SLOT, "publication_name": SLOT,
        "flush_interval_ms": 100, "grpc_port": 0, "heartbeat_interval_s": 0,
        "unhealthy_after_s": 2, **extra}, env_file=None)


@pytest.fixture
def db(pg_db: Database) -> Database:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    return pg_db


@pytest.fixture
def sr() -> Iterator[StarRocksEmulator]:
    with StarRocksEmulator() as emulator:
        yield emulator


@contextlib.contextmanager
def _serve(config: Config) -> Iterator[Served]:
    service = EngineService(config)
    server = GrpcServer(service, port=0)
    server.start()
    metrics = MetricsServer(service, port=0)
    metrics.start()
    service.start()
    try:
        yield Served(service, Client(server.address), metrics.port, server.address)
    finally:
        service.stop(timeout=60)
        server.stop(0)
        metrics.stop()
        engine = service.engine
        if engine is not None:
            engine.sink.close()


def _top_once(address: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dbmazz", "top", "--once", "--address",
                             address], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    return result.stdout + result.stderr


def _assert_failing_visible(served: Served, what: str) -> None:
    def failing() -> bool:
        error = served.service.status().error
        return error is not None and "failing for" in error.message
    eventually(failing, f"{what}: the failing loads in Status", 120)
    status = served.service.status()
    assert status.error is not None and not status.error.fatal
    assert status.error.kind == "retrying"
    assert "loads of " in status.error.message and "failed attempt" in status.error.message
    assert "network error" in status.error.message or "Connection refused" in \
        status.error.message, status.error.message
    [table] = [t for t in status.tables if t.table == "public.t"]
    assert table.retries >= 1
    # Health turns NOT_SERVING once loads have failed for UNHEALTHY_AFTER_S (2 s here).
    eventually(lambda: served.client.health()[0] == "NOT_SERVING",
               f"{what}: health NOT_SERVING", 60)
    _, error_text = served.client.health()
    assert error_text is not None and "failing for" in error_text
    metrics = served.metrics()
    assert metrics["dbmazz_load_failing_seconds"] >= 2
    assert metrics["dbmazz_retrying"] == 1
    assert metrics["dbmazz_serving"] == 0
    assert metrics['dbmazz_table_retries_total{table="public.t"}'] >= 1
    shown = _top_once(served.address)
    assert "retrying" in shown and "failing for" in shown, shown
    cli = subprocess.run([sys.executable, "-m", "dbmazz", "status", "--address",
                          served.address], capture_output=True, text=True, timeout=60)
    assert "failing for" in cli.stdout, cli.stdout


def test_cdc_loads_failing_are_visible_and_unhealthy_then_recover(
        db: Database, sr: StarRocksEmulator) -> None:
    with _serve(_config(db, sr, sr.url, snapshot="never")) as served:
        eventually(lambda: served.service.serving, "streaming", 120)
        sr.faults.connection_reset(times=None)
        db.execute("INSERT INTO public.t VALUES (1, 'a')")
        _assert_failing_visible(served, "CDC")
        sr.faults.clear()
        eventually(lambda: served.client.health()[0] == "SERVING", "health back", 120)
        eventually(lambda: served.service.status().error is None, "error gone", 60)
        assert served.metrics()["dbmazz_load_failing_seconds"] == 0


def test_snapshot_loads_failing_are_visible(db: Database, sr: StarRocksEmulator) -> None:
    db.execute("INSERT INTO public.t SELECT g, 'x' FROM generate_series(1, 100) g")
    with _serve(_config(db, sr, f"http://127.0.0.1:{sr.closed_port}")) as served:
        _assert_failing_visible(served, "snapshot")
        assert served.service.stage.value == "SNAPSHOT"


def test_sigterm_while_loads_fail_exits_within_seconds(
        db: Database, sr: StarRocksEmulator, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}
    env.update({"SOURCE_URL": db.dsn, "TABLES": "public.t", "SINK": "starrocks",
                "STARROCKS_URL": f"http://127.0.0.1:{sr.closed_port}",
                "STARROCKS_MYSQL_PORT": str(sr.mysql_port), "STARROCKS_DB": "fail",
                "SLOT_NAME": SLOT, "PUBLICATION_NAME": SLOT, "GRPC_PORT": str(free_port()),
                "HEARTBEAT_INTERVAL_S": "0"})
    db.execute("INSERT INTO public.t SELECT g, 'x' FROM generate_series(1, 10) g")
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        eventually(lambda: "failed (attempt 2)" in log.read_text() or proc.poll() is not None,
                   "loads to fail twice", 120)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert took < 15, f"SIGTERM took {took:.0f}s:\n{text[-3000:]}"
    assert "not draining: loads of" in text, text[-3000:]
