"""`dbmazz slots` lists the source's slots and drops an inactive one after confirmation,
without a running engine; `dbmazz capture --create-slot`, and its missing-slot error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dbmazz.config import Config
from dbmazz.source.database import SourceDatabase
from dbmazz.source.setup import setup_source
from dbmazz.state.checkpoint import PostgresCheckpointStore
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import mark


def _dbmazz(db: Database, cwd: Path, *args: str, stdin: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}
    return subprocess.run([sys.executable, "-m", "dbmazz", *args], cwd=cwd, input=stdin,
                          env={**clean, "SOURCE_URL": db.dsn, **env}, capture_output=True,
                          text=True, timeout=120)


def test_list_and_drop(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.c (id int PRIMARY KEY, v text)")
    setup_source(pg_db.dsn, ["public.c"], publication="p1", slot="ours")
    store = PostgresCheckpointStore(SourceDatabase(pg_db.dsn), "ours")
    store.save(mark(pg_db))
    store.close()
    pg_db.execute("SELECT pg_create_logical_replication_slot('other', 'test_decoding')")
    pg_db.execute("INSERT INTO public.c SELECT g, repeat('x', 1000) FROM generate_series(1, "
                  "2000) g")
    listed = _dbmazz(pg_db, tmp_path, "slots", SLOT_NAME="ours")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "plugin"]
    [ours] = [line for line in lines if line.startswith("ours ")]
    assert "pgoutput" in ours and "dbmazz (checkpoint " in ours
    assert "this configuration (SLOT_NAME)" in ours
    [other] = [line for line in lines if line.startswith("other ")]
    assert "test_decoding" in other and other.rstrip().endswith("-")
    as_json = json.loads(_dbmazz(pg_db, tmp_path, "slots", "--json").stdout)
    by_name = {row["name"]: row for row in as_json}
    [(confirmed,)] = pg_db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                 "WHERE slot_name = 'ours'")
    assert by_name["ours"]["confirmed_lsn"] == confirmed
    assert by_name["ours"]["retained_wal_bytes"] > 2_000_000  # the inserts are retained
    assert by_name["ours"]["wal_status"] == "reserved" and not by_name["ours"]["active"]
    # No confirmation, no drop (stdin is not a terminal).
    refused = _dbmazz(pg_db, tmp_path, "slots", "drop", "other")
    assert refused.returncode == 1 and "pass --yes to confirm" in refused.stderr
    assert "not dropping slot 'other' (test_decoding" in refused.stderr
    assert len(pg_db.query("SELECT 1 FROM pg_replication_slots")) == 2
    dropped = _dbmazz(pg_db, tmp_path, "slots", "drop", "ours", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped slot 'ours'" in dropped.stdout and "dbmazz checkpoint was deleted" in \
        dropped.stdout
    assert pg_db.query("SELECT slot_name FROM pg_replication_slots") == [("other",)]
    assert pg_db.query("SELECT count(*) FROM public.dbmazz_checkpoints") == [(0,)]
    missing = _dbmazz(pg_db, tmp_path, "slots", "drop", "ours", "--yes")
    assert missing.returncode == 1 and "does not exist on the source" in missing.stderr


def test_an_active_slot_is_never_dropped(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("SELECT pg_create_logical_replication_slot('busy', 'test_decoding')")
    holder = subprocess.Popen(["pg_recvlogical", "-d", pg_db.dsn, "-S", "busy", "--start",
                               "-f", "/dev/null"], stderr=subprocess.DEVNULL)
    try:
        from tests.scripted import eventually
        eventually(lambda: pg_db.query("SELECT active FROM pg_replication_slots") == [(True,)],
                   "the slot in use", 60)
        result = _dbmazz(pg_db, tmp_path, "slots", "drop", "busy", "--yes")
        assert result.returncode == 1
        assert "is in use by the session with pid" in result.stderr
        assert "an active slot is never dropped" in result.stderr
        assert "busy" in _dbmazz(pg_db, tmp_path, "slots").stdout
    finally:
        holder.terminate()
        holder.wait(30)
    assert pg_db.query("SELECT slot_name FROM pg_replication_slots") == [("busy",)]


def test_capture_create_slot(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.c (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE PUBLICATION cap_pub FOR TABLE public.c")
    out = tmp_path / "wal.arrows"
    args = ("capture", "--slot", "cap_slot", "--publication", "cap_pub", "--out", str(out),
            "--max-messages", "3")
    missing = _dbmazz(pg_db, tmp_path, *args)
    assert missing.returncode == 1
    assert "replication slot 'cap_slot' does not exist: `dbmazz capture` records from an " \
           "existing slot" in missing.stderr
    assert "pass --create-slot" in missing.stderr and "checkpoint" not in missing.stderr
    assert not out.exists()
    created = subprocess.Popen(
        [sys.executable, "-m", "dbmazz", *args, "--create-slot"], cwd=tmp_path,
        env={**os.environ, "SOURCE_URL": pg_db.dsn}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    from tests.scripted import eventually
    eventually(lambda: pg_db.query("SELECT active FROM pg_replication_slots WHERE slot_name = "
                                   "'cap_slot'") == [(True,)] or created.poll() is not None,
               "the capture to stream", 60)
    pg_db.execute("INSERT INTO public.c VALUES (1, 'a')")
    _, err = created.communicate(timeout=120)
    assert created.returncode == 0, err
    assert "created replication slot 'cap_slot'" in err
    assert out.exists()
