"""The control plane against live engines on a real PostgreSQL: every RPC, pause/resume,
drain, fatal errors, and `dbmazz run` driven by the CLI clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dbmazz.api.client import Client, EngineUnreachable
from dbmazz.api.server import GrpcServer
from dbmazz.engine.core import Engine
from dbmazz.engine.service import EngineService
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from tests.e2e.harness import duckdb_config, mark, served
from tests.scripted import BrokenSink, eventually

SLOT = "dbmazz_e2e"  # what duckdb_config uses
PUBLICATION = "dbmazz_e2e"
TOKEN = "grpc-integration-token"


@dataclass
class Live:
    db: Database
    service: EngineService
    server: GrpcServer
    client: Client
    sink: DuckDBSink

    @property
    def engine(self) -> Engine:
        engine = self.service.engine
        assert engine is not None
        return engine


def _items(db: Database) -> None:
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int)")


def _insert(db: Database, first: int, count: int) -> None:
    db.execute("INSERT INTO public.items SELECT g, 'item ' || g, g %% 7 "
               "FROM generate_series(%s::int, %s::int) g", (first, first + count - 1))


def _slot_confirmed(db: Database) -> int:
    [(lsn,)] = db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = %s", (SLOT,))
    return parse_lsn(str(lsn))


@contextlib.contextmanager
def _start_live(db: Database, tmp_path: Path, *, broken: bool = False,
                **config: Any) -> Iterator[Live]:
    cfg = duckdb_config(db, tmp_path, ["public.items"], **config)
    sink = (BrokenSink if broken else DuckDBSink)(cfg.duckdb_path)
    with served(cfg, sink) as (service, server, client):
        yield Live(db, service, server, client, sink)


@pytest.fixture
def live(pg_db: Database, tmp_path: Path) -> Iterator[Live]:
    _items(pg_db)
    with _start_live(pg_db, tmp_path) as started:
        yield started


def test_every_rpc_against_a_live_engine(live: Live) -> None:
    _insert(live.db, 1, 50)
    live.db.execute("UPDATE public.items SET qty = -1 WHERE id <= 5")
    marker = mark(live.db)
    assert live.engine.wait_durable(marker, 120)

    assert live.client.health() == ("SERVING", None)
    status = live.client.status_dict()
    assert (status["stage"], status["state"]) == ("CDC", "RUNNING")
    assert (status["slot"], status["publication"], status["sink"]) == (SLOT, PUBLICATION,
                                                                       "duckdb")
    confirmed = status["confirmed_lsn"]
    assert confirmed["value"] == live.engine.durable_lsn > marker
    assert confirmed["text"] == format_lsn(confirmed["value"])
    assert status["received_lsn"]["value"] >= marker
    assert status["server_wal_end"]["value"] >= marker
    assert status["lag_bytes"] == max(0, status["server_wal_end"]["value"] - confirmed["value"])
    [items] = status["tables"]
    assert items["table"] == "public.items"
    assert items["changes"] == 55 and items["rows_loaded"] >= 50

    samples = list(live.client.metrics(interval_ms=100, max_samples=2))
    assert [s.rows_loaded for s in samples] == [items["rows_loaded"]] * 2
    assert samples[-1].confirmed_lsn == confirmed["value"] and samples[-1].rss_bytes > 0

    batches = {b.table: b for b in live.client.list_batches()}
    assert batches["public.items"].rows > 0
    peeked = live.client.peek_arrow("items")
    assert {"id", "name", "qty", "__dbmazz_op", "__dbmazz_lsn", "__dbmazz_seq",
            "__dbmazz_unchanged"} <= set(peeked.column_names)
    frame = live.client.peek("public.items", max_rows=3)
    assert frame.height == min(3, peeked.num_rows)
    schema = live.client.schema_of("public.items")
    assert schema.field("id").type == pa.int32() and schema.field("qty").type == pa.int32()

    reply = live.client.reload_config(flush_rows=10, flush_interval_ms=50)
    assert sorted(reply.changed) == ["flush_interval_ms", "flush_rows"]
    _insert(live.db, 1000, 25)
    after = mark(live.db)
    assert live.engine.wait_durable(after, 120)
    [(count,)] = live.sink.query('SELECT count(*) FROM "public"."items"')
    assert count == 75


def test_pause_holds_the_durable_lsn_and_resume_loads(live: Live) -> None:
    _insert(live.db, 1, 10)
    first = mark(live.db)
    assert live.engine.wait_durable(first, 120)
    live.client.pause()
    held = live.engine.durable_lsn
    [(paused_at, wal_before)] = live.db.query("SELECT now(), pg_current_wal_insert_lsn()::text")

    _insert(live.db, 100, 10)
    second = mark(live.db)
    # Paused, the engine still sends status updates: wait for one to reach the server,
    # then nothing may have been read or loaded meanwhile.
    def replied() -> bool:
        rows = live.db.query("SELECT reply_time FROM pg_stat_replication "
                             "WHERE application_name IS NOT NULL AND reply_time > %s",
                             (paused_at,))
        return bool(rows)

    eventually(replied, "a status update while paused", 60)
    assert live.engine.durable_lsn == held
    assert live.engine.progress.received_lsn < second
    # The slot may move over WAL without changes for us, never over what was written
    # after the pause.
    assert _slot_confirmed(live.db) <= parse_lsn(str(wal_before))
    assert live.client.status_dict()["state"] == "PAUSED"
    [(count,)] = live.sink.query('SELECT count(*) FROM "public"."items"')
    assert count == 10

    live.client.resume()
    assert live.engine.wait_durable(second, 120)
    [(count,)] = live.sink.query('SELECT count(*) FROM "public"."items"')
    assert count == 20


def test_drain_leaves_nothing_in_flight_and_checkpoints_the_last_commit(live: Live) -> None:
    _insert(live.db, 1, 200)
    live.db.execute("DELETE FROM public.items WHERE id > 150")
    last = mark(live.db)
    # Drain loads what was read: wait until the last commit was received, not loaded.
    eventually(lambda: live.engine.progress.received_lsn >= last, "the last commit read")
    reply = live.client.drain(wait_s=120)
    assert reply.completed
    assert live.engine.progress.inflight_bytes == 0
    durable = live.engine.durable_lsn
    assert durable > last
    [(checkpoint,)] = live.db.query("SELECT lsn::text FROM dbmazz_checkpoints")
    assert parse_lsn(str(checkpoint)) == durable
    # The slot may stand past the last commit only over WAL without published changes
    # (the stream's idle rule, docs/architecture.md); the peek below shows none is left.
    assert _slot_confirmed(live.db) >= durable
    # Nothing committed is left behind the checkpoint in the slot (PostgreSQL 14 also
    # sends transactions without published changes, e.g. the checkpoint write itself, as
    # empty Begin/Commit pairs: not counted).
    [(pending,)] = live.db.query(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
        "'proto_version', '1', 'publication_names', %s) WHERE get_byte(data, 0) NOT IN "
        "(ascii('B'), ascii('C'))", (SLOT, PUBLICATION))
    assert pending == 0
    status = live.client.status_dict()
    assert status["state"] == "STOPPED" and status["inflight_bytes"] == 0
    assert live.client.health()[0] == "NOT_SERVING"


def test_fatal_sink_error_keeps_the_server_up_with_the_error(pg_db: Database,
                                                             tmp_path: Path) -> None:
    _items(pg_db)
    with _start_live(pg_db, tmp_path, broken=True) as live:
        _insert(pg_db, 1, 3)
        eventually(lambda: live.service.failed, "the fatal sink error", 120)
        health, error = live.client.health()
        assert health == "NOT_SERVING"
        assert error is not None and "disk full" in error
        status = live.client.status_dict()
        assert status["state"] == "FAILED"
        assert status["last_error"]["hint"] == "free space on the target, then restart dbmazz"
        stop = live.client.stop(wait_s=30)
        assert stop.completed and not stop.slot_dropped
    # Stopping never drops the slot unless asked.
    assert pg_db.query("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                       (SLOT,)) == [(1,)]


# ------------------------------------------------------------------- dbmazz run (process)
def _env(db: Database, tmp_path: Path, tables: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SOURCE_URL": db.dsn,
        "TABLES": tables,
        "SINK": "duckdb",
        "DUCKDB_PATH": str(tmp_path / "run.duckdb"),
        "SLOT_NAME": "dbmazz_run",
        "PUBLICATION_NAME": "dbmazz_run",
        "FLUSH_INTERVAL_MS": "50",
        **extra,
    }


def _dbmazz(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbmazz", *args], env=env or dict(os.environ),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def run_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _spawn(env: dict[str, str], procs: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(proc)
    return proc


def _health_when_up(client: Client, proc: subprocess.Popen[str]) -> tuple[str, str | None]:
    result: list[tuple[str, str | None]] = []

    def answered() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dbmazz run exited {proc.returncode}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            result.append(client.health())
        except EngineUnreachable:
            return False
        return True

    eventually(answered, "the gRPC server", 60)
    return result[-1]


def test_run_is_controlled_by_the_cli(pg_db: Database, tmp_path: Path,
                                      run_process: list[subprocess.Popen[str]]) -> None:
    _items(pg_db)
    port, metrics_port = free_port(), free_port()
    env = _env(pg_db, tmp_path, "public.items", GRPC_PORT=str(port),
               METRICS_PORT=str(metrics_port), GRPC_TOKEN=TOKEN)
    proc = _spawn(env, run_process)
    address = f"127.0.0.1:{port}"
    client = Client(address, token=TOKEN)
    _health_when_up(client, proc)
    eventually(lambda: client.health()[0] == "SERVING", "streaming", 120)
    _insert(pg_db, 1, 30)
    marker = mark(pg_db)
    eventually(lambda: client.status().confirmed_lsn.value > marker, "the load", 120)

    cli_env = {**os.environ, "GRPC_TOKEN": TOKEN}
    result = _dbmazz("status", "--address", address, "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["tables"][0]["table"] == "public.items"
    assert status["tables"][0]["rows_loaded"] == 30
    assert TOKEN not in result.stdout
    refused = _dbmazz("status", "--address", address)
    assert refused.returncode == 1 and "pass --token or set GRPC_TOKEN" in refused.stderr
    top = _dbmazz("top", "--once", "--address", address, "--token", TOKEN)
    assert top.returncode == 0, top.stderr
    assert "public.items" in top.stdout and "events/s" in top.stdout
    paused = _dbmazz("pause", "--address", address, env=cli_env)
    assert paused.returncode == 0 and "PAUSED" in paused.stderr
    resumed = _dbmazz("resume", "--address", address, env=cli_env)
    assert resumed.returncode == 0 and "RUNNING" in resumed.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        metrics = response.read().decode()
    assert 'dbmazz_table_rows_loaded_total{table="public.items"} 30.0' in metrics

    stopped = _dbmazz("stop", "--drop-slot", "--address", address, env=cli_env)
    assert stopped.returncode == 0, stopped.stderr
    assert "slot dropped" in stopped.stderr
    assert proc.wait(60) == 0
    assert pg_db.query("SELECT count(*) FROM pg_replication_slots "
                       "WHERE slot_name = 'dbmazz_run'") == [(0,)]
    assert proc.stderr is not None and TOKEN not in proc.stderr.read()


def test_run_drains_on_sigterm_and_keeps_the_slot(pg_db: Database, tmp_path: Path,
                                                  run_process: list[subprocess.Popen[str]]
                                                  ) -> None:
    _items(pg_db)
    port = free_port()
    proc = _spawn(_env(pg_db, tmp_path, "public.items", GRPC_PORT=str(port)), run_process)
    client = Client(f"127.0.0.1:{port}")
    _health_when_up(client, proc)
    eventually(lambda: client.health()[0] == "SERVING", "streaming", 120)
    _insert(pg_db, 1, 5)
    marker = mark(pg_db)
    eventually(lambda: client.status().received_lsn.value >= marker, "the read", 120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    [(checkpoint,)] = pg_db.query("SELECT lsn::text FROM dbmazz_checkpoints")
    assert parse_lsn(str(checkpoint)) > marker
    assert pg_db.query("SELECT count(*) FROM pg_replication_slots "
                       "WHERE slot_name = 'dbmazz_run'") == [(1,)]


def test_run_stays_up_on_a_setup_error(pg_db: Database, tmp_path: Path,
                                       run_process: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    proc = _spawn(_env(pg_db, tmp_path, "public.missing", GRPC_PORT=str(port),
                       ON_ERROR="serve"), run_process)
    address = f"127.0.0.1:{port}"
    client = Client(address)
    _health_when_up(client, proc)
    eventually(lambda: client.health()[0] == "NOT_SERVING" and client.health()[1] is not None,
               "the setup error", 60)
    _, error = client.health()
    assert error is not None and "tables not found" in error and "public.missing" in error
    result = _dbmazz("status", "--address", address)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "tables not found" in result.stdout
    assert "create them or correct TABLES" in result.stdout
    assert proc.poll() is None  # still up, reporting
    drained = _dbmazz("drain", "--address", address)
    assert drained.returncode == 0, drained.stderr
    assert proc.wait(60) == 1


def test_run_without_grpc_exits_1_on_a_fatal_error(pg_db: Database, tmp_path: Path) -> None:
    result = _dbmazz("run", env=_env(pg_db, tmp_path, "public.missing", GRPC_PORT="0"))
    assert result.returncode == 1
    assert "tables not found" in result.stderr and "public.missing" in result.stderr
