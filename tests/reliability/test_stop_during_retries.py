"""A stop while StarRocks loads are being retried ends the engine within seconds (the
sink's retry backoffs are bound to the engine's stop), without confirming the failed load
and without reporting the stop as a failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import RunState
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.test_starrocks_e2e import starrocks_config
from tests.reliability.helpers import poll, slot_position

SLOT = "dbmazz_sr"  # starrocks_config's slot


@pytest.fixture
def emulator() -> Iterator[StarRocksEmulator]:
    sr = StarRocksEmulator(http_port=free_port(), mysql_port=free_port(),
                           be_ports=[free_port(), free_port()])
    sr.start()
    try:
        yield sr
    finally:
        sr.stop()


def test_stop_while_loads_are_retried_is_prompt_and_confirms_nothing(
        pg_db: Database, emulator: StarRocksEmulator) -> None:
    pg_db.execute("CREATE TABLE public.events (id bigint PRIMARY KEY, v int NOT NULL)")
    config = starrocks_config(pg_db, emulator.url, emulator.mysql_port, ["public.events"],
                              snapshot="never", heartbeat_interval_s=0, grpc_port=0)
    engine = build_live_engine(config)
    engine.start()
    try:
        before = slot_position(pg_db, SLOT)
        assert before is not None
        emulator.faults.add("fe_error", times=None, table="events", status=500,
                            message="Internal Server Error")
        pg_db.execute("INSERT INTO events SELECT g, 0 FROM generate_series(1, 10) g")
        # The default policy backs off for minutes (8 attempts, delays up to 30 s).
        poll(lambda: any(f.fired >= 3 for f in emulator.faults.pending()),
             "the load to be retried", timeout_s=120)
        engine.stop()
        assert engine.wait(15), "the engine waited out the sink's retry policy"
    finally:
        engine.stop()
        engine.wait(120)
    assert engine.progress.state == RunState.STOPPED, engine.progress.last_error
    after = slot_position(pg_db, SLOT)
    assert after is not None and after[0] == before[0]  # the failed load is not confirmed
