"""Settings of the original dbmazz are accepted as deprecated aliases, each with a
one-line notice; the current names win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from dbmazz import config as config_module
from dbmazz.config import Config
from dbmazz.testing.fixtures import Database


def _clean_env() -> dict[str, str]:
    legacy = set(config_module.LEGACY_ALIASES)
    return {k: v for k, v in os.environ.items()
            if k.lower() not in Config.model_fields and k.upper() not in legacy}


def test_original_variables_run_a_snapshot_end_to_end(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 50) g")
    url = pg_db.dsn + ("&" if "?" in pg_db.dsn else "?") + "replication=database"
    env = {**_clean_env(), "DATABASE_URL": url, "TABLES": "public.t",
           "SOURCE_SLOT_NAME": "legacy_slot", "SOURCE_PUBLICATION_NAME": "legacy_pub",
           "SINK_TYPE": "duckdb", "DUCKDB_PATH": str(tmp_path / "t.duckdb"),
           "FLUSH_SIZE": "7", "DO_SNAPSHOT": "true", "INITIAL_SNAPSHOT_ONLY": "true",
           "GRPC_PORT": "0"}
    result = subprocess.run([sys.executable, "-m", "dbmazz", "run"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for legacy, instead in (("DATABASE_URL", "SOURCE_URL"), ("FLUSH_SIZE", "FLUSH_ROWS"),
                            ("SINK_TYPE", "SINK"), ("SOURCE_SLOT_NAME", "SLOT_NAME"),
                            ("INITIAL_SNAPSHOT_ONLY", "SNAPSHOT=initial_only")):
        line = (f"dbmazz: notice: {legacy} is deprecated (a setting of the original dbmazz); "
                f"use {instead} instead")
        assert result.stderr.count(line) == 1, result.stderr
    assert pg_db.query("SELECT slot_name FROM pg_replication_slots") == [("legacy_slot",)]
    assert pg_db.query("SELECT pubname FROM pg_publication") == [("legacy_pub",)]
    with duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True) as con:
        assert con.execute('SELECT count(*) FROM "public"."t"').fetchone() == (50,)


def test_current_names_win_and_flags_win(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for key in list(os.environ):
        if key.lower() in Config.model_fields or key.upper() in config_module.LEGACY_ALIASES:
            monkeypatch.delenv(key)
    monkeypatch.setattr(config_module, "_noticed", set())
    monkeypatch.setenv("FLUSH_SIZE", "11")
    monkeypatch.setenv("DO_SNAPSHOT", "false")
    monkeypatch.setenv("SINK_DATABASE", "analytics")
    config = Config.load(env_file=None)
    assert (config.flush_rows, config.snapshot, config.starrocks_db) == (11, "never",
                                                                          "analytics")
    err = capsys.readouterr().err
    assert "FLUSH_SIZE is deprecated" in err and "use STARROCKS_DB instead" in err
    assert Config.load(env_file=None) and "deprecated" not in capsys.readouterr().err  # once
    monkeypatch.setenv("FLUSH_ROWS", "12")
    assert Config.load(env_file=None).flush_rows == 12
    assert Config.load({"flush_rows": 13}, env_file=None).flush_rows == 13
    monkeypatch.setenv("SOURCE_URL", "postgresql://u:p@h/db?replication=database&sslmode=off")
    assert Config.load(env_file=None).source_dsn == "postgresql://u:p@h/db?sslmode=off"
