"""Targets made by hand are type-checked before the first load: every column against what
dbmazz sends (docs/types.md), all mismatches at once in `setup --check` and at start, lossy
ones flagged — StarRocks (the emulator, SETUP=skip) and DuckDB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from dbmazz.config import Config
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator

SOURCE_DDL = ("CREATE TABLE public.t (id bigint PRIMARY KEY, name text, qty bigint, "
              "happened timestamptz, amount numeric(20,4), note text, ok text)")


def _dbmazz(db: Database, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}
    return subprocess.run([sys.executable, "-m", "dbmazz", *args], cwd=cwd,
                          env={**clean, "SOURCE_URL": db.dsn, "TABLES": "public.t",
                               "SLOT_NAME": "types_slot", "PUBLICATION_NAME": "types_pub",
                               "SNAPSHOT": "never", "GRPC_PORT": "0", **env},
                          capture_output=True, text=True, timeout=40)


@pytest.fixture
def source(pg_db: Database) -> Database:
    pg_db.execute(SOURCE_DDL)
    return pg_db


def test_starrocks_table_by_hand(source: Database, tmp_path: Path) -> None:
    with StarRocksEmulator() as sr:
        sr.execute("CREATE DATABASE shop")
        sr.execute(
            "CREATE TABLE shop.t (id BIGINT NOT NULL, name VARCHAR(10), qty INT, happened DATE, "
            "amount DECIMAL(10,2), note STRING, ok VARCHAR(1048576), "
            "dbmazz_op_type TINYINT, dbmazz_is_deleted BOOLEAN, dbmazz_synced_at DATETIME, "
            "dbmazz_cdc_version BIGINT) PRIMARY KEY (id) DISTRIBUTED BY HASH (id)")
        env = {"SINK": "starrocks", "STARROCKS_URL": sr.url,
               "STARROCKS_MYSQL_PORT": str(sr.mysql_port), "STARROCKS_DB": "shop",
               "SETUP": "skip"}
        checked = _dbmazz(source, tmp_path, "setup", "--check", **env)
        assert checked.returncode == 1
        err = checked.stderr
        assert "problem: shop.t.name: VARCHAR(10) cannot take VARCHAR(1048576) (rejecting: " \
               "values longer than 10 bytes are rejected)" in err, err
        assert "problem: shop.t.qty: INT cannot take BIGINT (rejecting: values out of its " \
               "range are rejected)" in err
        assert "problem: shop.t.happened: DATE cannot take DATETIME (lossy: the time of day is " \
               "dropped)" in err
        assert "problem: shop.t.amount: DECIMAL(10,2) cannot take DECIMAL(20,4) (rejecting " \
               "and lossy: values with more than 8 integer digits are rejected; decimals " \
               "beyond 2 are rounded)" in err
        assert "not ready: 4 problem(s)" in err
        assert "warning: shop.t.note: VARCHAR(65533) cannot take VARCHAR(1048576) (warning: " \
               "values longer than 65533 bytes would be rejected)" in checked.stdout
        assert "shop.t.ok" not in err + checked.stdout
        run = _dbmazz(source, tmp_path, "run", **env)
        assert run.returncode == 1
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("dbmazz: error: StarRocks columns cannot take what dbmazz "
                               "sends: shop.t.name: VARCHAR(10)"), run.stderr
        for column in ("shop.t.qty", "shop.t.happened", "shop.t.amount"):
            assert column in last
        assert "shop.t.note" not in last
        assert sr.rows("shop", "t") == []


def test_duckdb_table_by_hand(source: Database, tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA public")
        con.execute("CREATE TABLE public.t (id BIGINT PRIMARY KEY, name VARCHAR, qty INTEGER, "
                    "happened TIMESTAMP, amount DECIMAL(20,4), note VARCHAR, ok VARCHAR)")
    env = {"SINK": "duckdb", "DUCKDB_PATH": str(path)}
    checked = _dbmazz(source, tmp_path, "setup", "--check", **env)
    assert checked.returncode == 1
    assert "problem: public.t.qty: INTEGER cannot take BIGINT (rejecting: values out of its " \
           "range are rejected)" in checked.stderr, checked.stderr
    assert "problem: public.t.happened: TIMESTAMP cannot take TIMESTAMPTZ (lossy: the time zone " \
           "is dropped" in checked.stderr
    assert "not ready: 2 problem(s)" in checked.stderr
    run = _dbmazz(source, tmp_path, "run", **env)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("dbmazz: error: DuckDB columns cannot take what dbmazz sends: "
                           "public.t.qty: INTEGER cannot take BIGINT"), run.stderr
    assert "public.t.happened" in last
