"""A failover slot survives a failover (PostgreSQL 17+): dbmazz streams from the primary,
the standby synchronizes the slot, the primary dies, the standby is promoted and dbmazz
resumes from it without losing or repeating a change."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.scripted import eventually

_postgres = importlib.import_module("dbmazz.testing.postgres")
if not hasattr(_postgres, "temporary_standby"):
    pytest.skip("needs the fixture's primary + standby pair (dbmazz.testing.postgres."
                "temporary_standby)", allow_module_level=True)

SLOT = "dbmazz_e2e"  # what duckdb_config uses


def _synced_position(standby: Any, slot: str) -> int:
    with standby.connect() as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                           "WHERE slot_name = %s AND synced AND NOT temporary",
                           (slot,)).fetchone()
    return parse_lsn(str(row[0])) if row and row[0] else 0


def test_slot_survives_a_failover_to_a_synchronized_standby(
        pg_standby_pair: Any, tmp_path: Path) -> None:
    primary, standby = pg_standby_pair.primary, pg_standby_pair.standby
    with primary.connect() as conn:
        if conn.info.server_version < 170000:
            pytest.skip(f"failover slots need PostgreSQL 17+, the server is "
                        f"{conn.info.server_version // 10000}")
    name = primary.create_database()
    db = Database(primary, name)
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY, v int)")
    # The primary sends dbmazz only what the standby has received; the standby copies the
    # failover slots of this database (slot sync needs dbname in primary_conninfo).
    primary.set_setting("synchronized_standby_slots", _postgres.STANDBY_SLOT)
    with standby.connect() as conn:
        [(conninfo,)] = conn.execute("SHOW primary_conninfo").fetchall()
    standby.set_setting("primary_conninfo", f"{conninfo} dbname={name}")
    standby.set_setting("sync_replication_slots", "on")

    config = duckdb_config(db, tmp_path, ["public.items"], slot_failover=True,
                           heartbeat_interval_s=0)
    sink = DuckDBSink(config.duckdb_path)
    engines: list[Engine] = []
    try:
        first = build_live_engine(config, sink=sink)
        engines.append(first)
        assert (first.slot_failover, first.slot_synced) == (True, False)
        first.start()
        db.execute("INSERT INTO public.items SELECT g, g FROM generate_series(1, 100) g")
        wait_until_loaded(first, mark(db))
        durable = first.durable_lsn
        eventually(lambda: _synced_position(standby, SLOT) >= durable,
                   "the standby to synchronize the slot", 120)
        first.drain()
        assert first.wait(60)
        # Written after dbmazz stopped and before the primary fails: in the standby's WAL,
        # not yet read through the slot.
        db.execute("UPDATE public.items SET v = -v WHERE id <= 10")
        db.execute("INSERT INTO public.items SELECT g, g FROM generate_series(101, 150) g")
        _postgres.wait_for_replay(primary, standby)
        expected = sorted(db.query("SELECT id, v FROM public.items"))
        primary.stop("immediate")
        with standby.connect() as conn:
            [(promoted,)] = conn.execute("SELECT pg_promote(true, 60)").fetchall()
        assert promoted

        promoted_db = Database(standby, name)
        second_config = duckdb_config(promoted_db, tmp_path, ["public.items"],
                                      slot_failover=True, heartbeat_interval_s=0)
        second = build_live_engine(second_config, sink=sink)
        engines.append(second)
        # The slot came from the old primary: Status shows it as synced.
        assert (second.slot_failover, second.slot_synced) == (True, True)
        second.start()
        promoted_db.execute("INSERT INTO public.items VALUES (151, 151)")
        wait_until_loaded(second, mark(promoted_db))
        got = sorted(sink.query('SELECT id, v FROM "public"."items" '
                                "WHERE NOT dbmazz_is_deleted ORDER BY ALL"))
        assert got == [*expected, (151, 151)]
    finally:
        for engine in engines:
            engine.stop()
            with contextlib.suppress(Exception):
                engine.wait(30)
        sink.close()
