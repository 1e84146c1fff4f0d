"""`dbmazz setup --check` checks what a run needs — both StarRocks ports with the
configured credentials — creates nothing (no ./dbmazz.duckdb without a sink configured),
and reports every problem at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbmazz.config import Config
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from dbmazz.testing.starrocks import StarRocksEmulator

PASSWORD = "sr-check-password"


def _check(db: Database, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}
    env.update({"SOURCE_URL": db.dsn, "TABLES": "public.items", "SLOT_NAME": "check_cli",
                "PUBLICATION_NAME": "check_cli", **extra})
    return subprocess.run([sys.executable, "-m", "dbmazz", "setup", "--check"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def items(pg_db: Database) -> Database:
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    return pg_db


@pytest.fixture
def sr() -> StarRocksEmulator:
    with StarRocksEmulator(password=PASSWORD) as emulator:
        yield emulator  # type: ignore[misc]


def _sr_env(sr: StarRocksEmulator, **extra: str) -> dict[str, str]:
    return {"SINK": "starrocks", "STARROCKS_URL": sr.url,
            "STARROCKS_MYSQL_PORT": str(sr.mysql_port), "STARROCKS_PASSWORD": PASSWORD,
            "STARROCKS_DB": "shop", **extra}


def test_no_sink_configured_creates_no_file(items: Database, tmp_path: Path) -> None:
    result = _check(items, tmp_path)
    assert "target: DuckDB dbmazz.duckdb does not exist yet" in result.stdout, result
    assert list(tmp_path.iterdir()) == []
    assert items.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]


def test_both_starrocks_ports_pass(items: Database, tmp_path: Path,
                                  sr: StarRocksEmulator) -> None:
    result = _check(items, tmp_path, **_sr_env(sr))
    assert "answers SQL on 127.0.0.1" in result.stdout, result
    assert "database 'shop' does not exist yet" in result.stdout
    assert f"HTTP port {sr.url} accepts the credentials" in result.stdout
    assert "problem:" not in result.stderr, result.stderr
    sr.execute("CREATE DATABASE shop")
    result = _check(items, tmp_path, **_sr_env(sr))
    assert "database 'shop' exists" in result.stdout
    assert f"HTTP port {sr.url} accepts the credentials" in result.stdout, result
    assert sr.execute("SHOW TABLES FROM shop") == []  # nothing was created or loaded


def test_closed_stream_load_port_and_every_problem_at_once(
        items: Database, tmp_path: Path, sr: StarRocksEmulator) -> None:
    closed = free_port()
    result = _check(items, tmp_path, **_sr_env(sr, STARROCKS_URL=f"http://127.0.0.1:{closed}"),
                    TABLES="public.items,public.missing")
    assert result.returncode == 1
    err = result.stderr
    assert "problem: source: tables not found in database" in err and "public.missing" in err
    assert f"problem: StarRocks HTTP port http://127.0.0.1:{closed} (STARROCKS_URL) does not " \
           "answer" in err
    assert "Stream Load needs this port as well as the MySQL port" in err
    assert "answers SQL on 127.0.0.1" in result.stdout  # the MySQL port is fine
    assert "not ready: 2 problem(s)" in err
    # Wrong password: refused on both ports, both reported.
    result = _check(items, tmp_path, **_sr_env(sr, STARROCKS_PASSWORD="wrong"))
    assert result.returncode == 1
    assert "problem: StarRocks MySQL port" in result.stderr
    assert "problem: StarRocks HTTP port" in result.stderr and \
        "refused the credentials of user 'root'" in result.stderr, result.stderr
    assert "correct STARROCKS_USER / STARROCKS_PASSWORD" in result.stderr


def test_duckdb_directory_missing_is_a_problem(items: Database, tmp_path: Path) -> None:
    result = _check(items, tmp_path, DUCKDB_PATH=str(tmp_path / "nope" / "t.duckdb"))
    assert result.returncode == 1
    assert "directory" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_every_source_problem_is_named_not_only_the_first(items: Database,
                                                          tmp_path: Path) -> None:
    # A missing table, a table without a key, a role that may not replicate and does not
    # own the tables: `setup` stops at the first, `setup --check` names all four.
    items.execute("CREATE TABLE public.nokey (v text)")
    role = f"reader_{items.name}"
    items.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    items.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    server = items.server
    dsn = f"postgresql://{role}:pw@{server.host}:{server.port}/{items.name}"
    result = _check(items, tmp_path, SOURCE_URL=dsn,
                    TABLES="public.items,public.missing,public.nokey")
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problems) == 4, result.stderr
    assert "tables not found in database" in problems[0] and "public.missing" in problems[0]
    assert "lacks the REPLICATION attribute" in problems[1]
    assert "tables without a primary key: public.nokey" in problems[2]
    assert "does not own public.items" in problems[3]
    assert "not ready: 4 problem(s)" in result.stderr
    assert items.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
