"""`dbmazz setup` and `dbmazz setup --check` from the command line, on a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from dbmazz.testing.fixtures import Database


def run(db: Database, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SOURCE_URL": db.dsn,
        "TABLES": "public.items",
        "SINK": "duckdb",
        "DUCKDB_PATH": str(tmp_path / "t.duckdb"),
        "SLOT_NAME": "setup_cli",
        "PUBLICATION_NAME": "setup_cli",
    }
    return subprocess.run([sys.executable, "-m", "dbmazz", "setup", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_check_reports_pending_changes_and_changes_nothing(pg_db: Database,
                                                           tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    result = run(pg_db, tmp_path, "--check")
    assert result.returncode == 1, result.stderr
    assert "create the publication" in result.stdout
    assert "create the replication slot" in result.stdout
    assert "set REPLICA IDENTITY on public.items" in result.stdout
    assert pg_db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert pg_db.query("SELECT count(*) FROM pg_publication") == [(0,)]
    [(identity,)] = pg_db.query("SELECT relreplident::text FROM pg_class WHERE relname = 'items'")
    assert identity == "d"


def test_setup_then_check_is_ready(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    applied = run(pg_db, tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "slot 'setup_cli' created" in applied.stdout
    with duckdb.connect(str(tmp_path / "t.duckdb")) as con:
        columns = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'items' "
            "ORDER BY ordinal_position").fetchall()]
    assert columns[:2] == ["id", "name"] and "dbmazz_cdc_version" in columns
    checked = run(pg_db, tmp_path, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "source ready" in checked.stdout


def test_check_names_missing_tables(pg_db: Database, tmp_path: Path) -> None:
    result = run(pg_db, tmp_path, "--check")
    assert result.returncode == 1
    assert "tables not found in database" in result.stderr
    assert "public.items — create them or correct TABLES" in result.stderr
