"""`dbmazz capture` from the command line against a live server, read back by plain pyarrow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from dbmazz.lsn import format_lsn
from dbmazz.source.pgoutput import Insert, parse_message
from dbmazz.source.setup import setup_source
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import mark


def test_capture_cli_until_lsn(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.c (id int PRIMARY KEY, v text)")
    setup_source(pg_db.dsn, ["public.c"], publication="cli_pub", slot="cli_slot")
    pg_db.execute("INSERT INTO public.c SELECT g, 'v' || g FROM generate_series(1, 50) g")
    until = mark(pg_db)
    out = tmp_path / "wal.arrows"
    result = subprocess.run(
        [sys.executable, "-m", "dbmazz", "capture", "--slot", "cli_slot", "--publication",
         "cli_pub", "--out", str(out), "--until-lsn", format_lsn(until)],
        env={**os.environ, "SOURCE_URL": pg_db.dsn}, capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "stopped: until_lsn" in result.stderr
    with pa.ipc.open_stream(out) as reader:
        table = reader.read_all()
    assert table.schema.metadata[b"dbmazz.capture.version"] == b"1"
    inserts = [m for m in (parse_message(p) for p in table.column("payload").to_pylist())
               if isinstance(m, Insert)]
    assert len(inserts) == 50


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "/nonexistent-dir/wal.arrows"], "argument --out: the directory of"),
    (["--out", "wal.arrows", "--until-lsn", "notanlsn"], "not a PostgreSQL LSN: 'notanlsn'"),
    (["--out", "wal.arrows", "--max-messages", "0"], "--max-messages: must be more than 0"),
    (["--out", "wal.arrows", "--duration", "-1"], "--duration: must be more than 0"),
])
def test_capture_cli_refuses_bad_arguments_before_connecting(
        tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbmazz", "capture", "--slot", "cli_bad", *args],
        env={**os.environ, "SOURCE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "wal.arrows").exists()
