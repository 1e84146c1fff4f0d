"""ON_ERROR: a fatal error of `dbmazz run` never looks like a hang. `exit` (default) ends the
process with a non-zero code and the error as the last line; `serve` keeps the control
plane up, NOT_SERVING, saying so in the log until stopped."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbmazz.api.client import Client, EngineUnreachable
from dbmazz.config import Config
from dbmazz.engine.service import EngineService
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from tests.scripted import eventually


def _env(db: Database, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in Config.model_fields
           and k.lower() not in Config.model_fields}
    return {**env, "SOURCE_URL": db.dsn, "TABLES": "public.t", "SINK": "duckdb",
            "DUCKDB_PATH": str(tmp_path / "t.duckdb"), "SLOT_NAME": "dbmazz_onerr",
            "PUBLICATION_NAME": "dbmazz_onerr", "SNAPSHOT": "never",
            "HEARTBEAT_INTERVAL_S": "0", "GRPC_PORT": str(free_port()), **extra}


@pytest.fixture
def table(pg_db: Database) -> Database:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    return pg_db


@pytest.mark.parametrize("case", ["missing table", "empty TABLES", "busy slot",
                                  "wrong password", "StarRocks port closed"])
def test_exit_is_the_default_and_the_error_is_the_last_line(
        table: Database, tmp_path: Path, case: str) -> None:
    db = table
    extra: dict[str, str] = {}
    expected: str
    holder = None
    if case == "missing table":
        extra, expected = {"TABLES": "public.missing"}, "tables not found in database"
    elif case == "empty TABLES":
        extra, expected = {"TABLES": ""}, "invalid configuration: TABLES: required"
    elif case == "wrong password":
        role = f"pw_{db.name}"
        db.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'right'")
        url = db.dsn.split("://", 1)[1].split("@")[-1]
        extra = {"SOURCE_URL": f"postgresql://{role}:wrong@{url}"}
        expected = "rejected the credentials"
    elif case == "busy slot":
        db.execute("SELECT pg_create_logical_replication_slot('dbmazz_onerr', 'pgoutput')")
        holder = subprocess.Popen(
            ["pg_recvlogical", "-d", db.dsn, "-S", "dbmazz_onerr", "--start", "-o",
             "proto_version=1", "-o", "publication_names=dbmazz_onerr", "-f", "/dev/null"],
            stderr=subprocess.DEVNULL)
        db.execute("CREATE PUBLICATION dbmazz_onerr FOR TABLE public.t")
        eventually(lambda: db.query("SELECT active FROM pg_replication_slots WHERE "
                                    "slot_name = 'dbmazz_onerr'") == [(True,)],
                   "pg_recvlogical to hold the slot", 60)
        expected = "dbmazz_onerr"
    else:
        extra = {"SINK": "starrocks", "STARROCKS_URL": f"http://127.0.0.1:{free_port()}",
                 "STARROCKS_MYSQL_PORT": str(free_port())}
        expected = "StarRocks"
    try:
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "dbmazz", "run"],
                                env=_env(db, tmp_path, **extra), capture_output=True,
                                text=True, timeout=300)
    finally:
        if holder is not None:
            holder.terminate()
            holder.wait(30)
    assert result.returncode != 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dbmazz: error: "), result.stderr
    assert expected in last, result.stderr
    assert time.monotonic() - started < 240


def test_serve_keeps_the_control_plane_up_not_serving_and_says_so(
        table: Database, tmp_path: Path) -> None:
    port = free_port()
    env = _env(table, tmp_path, TABLES="public.missing", ON_ERROR="serve", GRPC_PORT=str(port))
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        client = Client(f"127.0.0.1:{port}")

        def not_serving() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                status, error = client.health()
            except EngineUnreachable:
                return False
            return status == "NOT_SERVING" and error is not None

        eventually(not_serving, "health NOT_SERVING with the error", 120)
        eventually(lambda: "ON_ERROR=serve" in log.read_text(), "the serve notice", 60)
        text = log.read_text()
        assert "dbmazz failed and is NOT serving (health NOT_SERVING): tables not found in " \
               f"database '{table.name}': public.missing" in text
        assert "stop with `dbmazz stop` or SIGTERM" in text
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 1
        last = log.read_text().strip().splitlines()[-1]
        assert last.startswith("dbmazz: error: tables not found in database")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_repeats_its_notice(table: Database, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.ERROR, logger="dbmazz")
    config = Config.load({"source_url": table.dsn, "tables": "public.missing",
                          "duckdb_path": str(tmp_path / "x.duckdb"), "grpc_port": 0,
                          "slot_name": "dbmazz_onerr", "publication_name": "dbmazz_onerr"},
                         env_file=None)
    service = EngineService(config)
    monkeypatch.setattr(service, "serve_notice_interval_s", 0.2)
    service.start()
    import threading

    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(
        service.wait_for_exit(stay_up_on_failure=True)))
    waiter.start()

    def notices() -> int:
        return sum("is NOT serving" in r.getMessage() for r in caplog.records)

    eventually(lambda: notices() >= 3, "the notice to repeat", 60)
    assert waiter.is_alive()
    service.stop()
    waiter.join(30)
    assert codes == [1]


def test_image_and_compose_choose_explicitly() -> None:
    docker = Path(__file__).resolve().parents[2] / "docker"
    assert "ON_ERROR=exit" in (docker / "Dockerfile").read_text()
    assert "ON_ERROR: serve" in (docker / "compose.yml").read_text()
    Config.load({"on_error": "serve"}, env_file=None)
    with pytest.raises(Exception, match="ON_ERROR: must be one of"):
        Config.load({"on_error": "hang"}, env_file=None)

