"""Small things a user hits in the first hour: an on-demand snapshot does not call the
pipeline's own tables "not configured", rows loaded include snapshot rows, `dbmazz top`
quits on `q` and says so, the repo's docs link to nothing outside the repo, the
README says what `make` is for, a new engine shows its slot's position, not 0/0, and output
piped into a reader that quits early ends without a traceback."""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbmazz.api.server import GrpcServer
from dbmazz.engine.service import EngineService
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config
from tests.scripted import eventually

REPO = Path(__file__).resolve().parents[2]


def test_on_demand_snapshot_rows_loaded_and_top(pg_db: Database, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz")
    pg_db.execute("CREATE TABLE public.a (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO public.a SELECT g, 'a' FROM generate_series(1, 30) g")
    config = duckdb_config(pg_db, tmp_path, ["public.a"], heartbeat_interval_s=0)
    service = EngineService(config)
    server = GrpcServer(service, port=0)
    server.start()
    service.start()
    try:
        eventually(lambda: service.serving and service.stage.value == "CDC", "streaming", 120)

        def loaded(table: str) -> int:
            return sum(t.rows_loaded for t in service.status().tables if t.table == table)

        assert loaded("public.a") == 30  # the initial snapshot's rows count as loaded
        pg_db.execute("CREATE TABLE public.b (id int PRIMARY KEY, v text)")
        pg_db.execute("INSERT INTO public.b SELECT g, 'b' FROM generate_series(1, 12) g")
        service.request_snapshot(["public.b"])
        eventually(lambda: loaded("public.b") == 12, "the on-demand snapshot's rows", 120)
        assert not [r for r in caplog.records if "not configured" in r.getMessage()], \
            [r.getMessage() for r in caplog.records]
        shown = subprocess.run([sys.executable, "-m", "dbmazz", "top", "--once", "--address",
                                server.address], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "COLUMNS": "200"}).stdout
        assert "rows loaded 42" in shown, shown
        # `dbmazz top` on a terminal: the hint, and `q` quits.
        main, child = pty.openpty()
        top = subprocess.Popen([sys.executable, "-m", "dbmazz", "top", "--address",
                                server.address], stdin=child, stdout=child, stderr=child,
                               env={**os.environ, "COLUMNS": "200", "TERM": "xterm"})
        os.close(child)
        seen = b""
        deadline = time.monotonic() + 60
        while b"q or Ctrl-C quits" not in seen and time.monotonic() < deadline:
            try:
                seen += os.read(main, 65536)
            except OSError:
                break
        assert b"q or Ctrl-C quits" in seen, seen[-2000:]
        os.write(main, b"q")
        assert top.wait(30) == 0
        os.close(main)
    finally:
        service.stop(timeout=60)
        server.stop(0)
        if service.engine is not None:
            service.engine.sink.close()


def test_docs_are_self_contained() -> None:
    """No link or reference to a document that is not in the repository."""
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    outside = re.compile(r"DESIGN\.md|starrocks-protocol\.md|pgoutput-notes\.md|/work/")
    for doc in docs:
        if doc.name == "benchmarks.md":
            continue  # owned by the benchmark work; see the lead's merge notes
        text = doc.read_text()
        assert not outside.search(text), f"{doc.name}: {outside.search(text)}"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_readme_says_what_make_is_for() -> None:
    readme = (REPO / "README.md").read_text()
    assert "`make` and a C compiler are not needed" not in readme
    assert "GNU `make` for the two commands above" in readme


def test_before_its_first_confirmation_an_engine_shows_where_its_slot_stands(
        pg_db: Database, tmp_path: Path) -> None:
    # Not 0/0, which made the lag the server's whole WAL position.
    from dbmazz.engine.build import build_live_engine
    from dbmazz.lsn import parse_lsn

    pg_db.execute("CREATE TABLE public.c (id int PRIMARY KEY)")
    pg_db.execute("SELECT pg_switch_wal()")  # a WAL position well past 0
    engine = build_live_engine(duckdb_config(pg_db, tmp_path, ["public.c"], snapshot="never"))
    try:
        [(confirmed,)] = pg_db.query("SELECT confirmed_flush_lsn::text FROM "
                                     "pg_replication_slots WHERE slot_name = 'dbmazz_e2e'")
        assert engine.progress.confirmed_lsn == parse_lsn(str(confirmed)) > 0
    finally:
        engine.sink.close()


def test_output_into_a_pipe_closed_early_ends_quietly() -> None:
    # `dbmazz status --json | head`: the reader goes away; no BrokenPipeError traceback.
    code = ("import argparse, sys\n"
            "from dbmazz import cli\n"
            "def handler(args):\n"
            "    for i in range(200000):\n"
            "        print('line', i)\n"
            "    return 0\n"
            "parser = argparse.ArgumentParser()\n"
            "parser.set_defaults(handler=handler)\n"
            "cli.build_parser = lambda: parser\n"
            "sys.exit(cli.main([]))\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    assert child.stdout.readline() == b"line 0\n"
    child.stdout.close()
    errors = child.stderr.read().decode()
    assert child.wait(timeout=60) == 141, errors
    assert "Traceback" not in errors and "BrokenPipeError" not in errors
