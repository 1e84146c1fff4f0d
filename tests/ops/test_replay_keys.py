"""Replay without the source: keys of a REPLICA IDENTITY FULL table the capture does not
record come from --primary-keys or SOURCE_URL's catalog; without either the error says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from dbmazz.config import Config
from dbmazz.engine.replay_keys import parse_primary_keys
from dbmazz.errors import ConfigError
from dbmazz.lsn import format_lsn
from dbmazz.source.setup import setup_source
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import mark


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}
    return subprocess.run([sys.executable, "-m", "dbmazz", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=180)


@pytest.fixture
def keyless_capture(pg_db: Database, tmp_path: Path) -> Path:
    """A capture of a REPLICA IDENTITY FULL table, its key metadata removed (as from
    another tool or an older dbmazz)."""
    pg_db.execute("CREATE TABLE public.f (a int, b text, v text, PRIMARY KEY (a, b))")
    setup_source(pg_db.dsn, ["public.f"], publication="rk_pub", slot="rk_slot")
    pg_db.execute("INSERT INTO public.f SELECT g, 'k', 'v' || g FROM generate_series(1, 20) g")
    pg_db.execute("UPDATE public.f SET v = 'changed' WHERE a <= 5")
    pg_db.execute("DELETE FROM public.f WHERE a = 20")
    until = mark(pg_db)
    full = tmp_path / "full.arrows"
    result = _run("capture", "--slot", "rk_slot", "--publication", "rk_pub", "--out",
                  str(full), "--until-lsn", format_lsn(until), cwd=tmp_path,
                  SOURCE_URL=pg_db.dsn)
    assert result.returncode == 0, result.stderr
    with pa.ipc.open_stream(full) as reader:
        table = reader.read_all()
    metadata = {k: v for k, v in (table.schema.metadata or {}).items()
                if k != b"dbmazz.primary_keys"}
    out = tmp_path / "keyless.arrows"
    with pa.ipc.new_stream(out, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table.replace_schema_metadata(metadata))
    return out


def _target_rows(path: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute('SELECT a, b, v FROM "public"."f" WHERE NOT dbmazz_is_deleted '
                           "ORDER BY a").fetchall()


def test_replay_keys_from_flag_catalog_or_a_clear_error(
        keyless_capture: Path, pg_db: Database, tmp_path: Path) -> None:
    expected = [(a, "k", "changed" if a <= 5 else f"v{a}") for a in range(1, 20)]
    base = {"SINK": "duckdb", "GRPC_PORT": "0"}
    failed = _run("replay", str(keyless_capture), cwd=tmp_path,
                  DUCKDB_PATH=str(tmp_path / "none.duckdb"), **base)
    assert failed.returncode == 1
    assert "table public.f has no primary key known to dbmazz: the capture does not record " \
           "one" in failed.stderr, failed.stderr
    assert "pass --primary-keys 'public.f=col[,col]'" in failed.stderr
    assert "or set SOURCE_URL to a database holding the table" in failed.stderr
    flagged = _run("replay", str(keyless_capture), "--primary-keys", "public.f=a,b;other=x",
                   cwd=tmp_path, DUCKDB_PATH=str(tmp_path / "flag.duckdb"), **base)
    assert flagged.returncode == 0, flagged.stderr
    assert _target_rows(tmp_path / "flag.duckdb") == expected
    catalog = _run("replay", str(keyless_capture), cwd=tmp_path, SOURCE_URL=pg_db.dsn,
                   DUCKDB_PATH=str(tmp_path / "catalog.duckdb"), **base)
    assert catalog.returncode == 0, catalog.stderr
    assert _target_rows(tmp_path / "catalog.duckdb") == expected


def test_parse_primary_keys() -> None:
    assert parse_primary_keys("s.t=a, b; u=id") == {"s.t": ("a", "b"), "public.u": ("id",)}
    with pytest.raises(ConfigError, match=r"is not 'schema\.table=col"):
        parse_primary_keys("s.t")
