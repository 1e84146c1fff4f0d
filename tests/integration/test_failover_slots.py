"""Failover slots (``SLOT_FAILOVER``, PostgreSQL 17+) on a real server: created as such,
switched on an existing slot, shown in Status, refused with the version on older servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbmazz.errors import SetupError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.setup import setup_source
from dbmazz.testing.fixtures import Database
from dbmazz.ui.format import slot_flags
from tests.e2e.harness import duckdb_config, mark, served


def version(db: Database) -> int:
    with db.connect() as conn:
        return conn.info.server_version


def slot_flags_of(db: Database, slot: str) -> tuple[bool, bool]:
    [(failover, synced)] = db.query(
        "SELECT failover, synced FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return bool(failover), bool(synced)


def test_failover_is_refused_before_17_naming_the_version(pg_db: Database) -> None:
    if version(pg_db) >= 170000:
        pytest.skip("the server has failover slots (PostgreSQL 17+)")
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY)")
    with pytest.raises(SetupError) as failure:
        setup_source(pg_db.dsn, ["public.items"], "pub_f", "slot_f", slot_failover=True)
    assert "PostgreSQL 17" in failure.value.message
    assert f"PostgreSQL {version(pg_db) // 10000}" in failure.value.message
    assert "SLOT_FAILOVER=false" in str(failure.value.hint)
    # Checked before anything changed.
    assert not pg_db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'slot_f'")
    assert not pg_db.query("SELECT 1 FROM pg_publication WHERE pubname = 'pub_f'")


def test_existing_slot_is_made_a_failover_slot(pg_db: Database) -> None:
    if version(pg_db) < 170000:
        pytest.skip(f"failover slots need PostgreSQL 17+, the server is "
                    f"{version(pg_db) // 10000}")
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY)")
    first = setup_source(pg_db.dsn, ["public.items"], "pub_f", "slot_f")
    assert (first.slot_failover, first.slot_synced) == (False, False)
    assert slot_flags_of(pg_db, "slot_f") == (False, False)
    check = setup_source(pg_db.dsn, ["public.items"], "pub_f", "slot_f", check_only=True,
                         slot_failover=True)
    assert check.pending_changes == ["make the replication slot a failover slot"]
    assert slot_flags_of(pg_db, "slot_f") == (False, False)
    # No standby is waited for on this server: said, not refused.
    assert any("synchronized_standby_slots" in w for w in check.warnings)
    done = setup_source(pg_db.dsn, ["public.items"], "pub_f", "slot_f", slot_failover=True)
    assert done.slot_failover_set and done.slot_failover is True
    assert slot_flags_of(pg_db, "slot_f") == (True, False)
    again = setup_source(pg_db.dsn, ["public.items"], "pub_f", "slot_f", check_only=True,
                         slot_failover=True)
    assert again.pending_changes == []


def test_failover_slot_streams_and_status_shows_it(pg_db: Database, tmp_path: Path) -> None:
    if version(pg_db) < 170000:
        pytest.skip(f"failover slots need PostgreSQL 17+, the server is "
                    f"{version(pg_db) // 10000}")
    pg_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, qty int)")
    config = duckdb_config(pg_db, tmp_path, ["public.items"], slot_failover=True)
    sink = DuckDBSink(config.duckdb_path)
    with served(config, sink) as (service, _server, client):
        assert slot_flags_of(pg_db, "dbmazz_e2e") == (True, False)
        pg_db.execute("INSERT INTO public.items SELECT g, g FROM generate_series(1, 100) g")
        engine = service.engine
        assert engine is not None and engine.wait_durable(mark(pg_db), 120)
        [(count,)] = sink.query('SELECT count(*) FROM "public"."items"')
        assert count == 100
        status = client.status()
        assert status.HasField("slot_failover") and status.slot_failover
        assert status.HasField("slot_synced") and not status.slot_synced
        assert slot_flags(status) == " (failover)"
