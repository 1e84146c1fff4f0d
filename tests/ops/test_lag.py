"""Lag is honest: 0 while nothing received is unloaded (idle, caught up), above 0 while
received changes wait for a slow target, back to 0 once they are loaded."""

from __future__ import annotations

import time
from pathlib import Path

from dbmazz.engine.service import EngineService
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import duckdb_config, mark
from tests.e2e.test_starrocks_e2e import starrocks_config
from tests.scripted import eventually


def _lag_ms(service: EngineService) -> float:
    return service.status().replication_lag_ms


def test_idle_caught_up_pipeline_has_no_lag(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE TABLE public.other (id int PRIMARY KEY)")  # not replicated
    config = duckdb_config(pg_db, tmp_path, ["public.t"], snapshot="never",
                           heartbeat_interval_s=0)
    service = EngineService(config)
    service.start()
    try:
        eventually(lambda: service.serving, "streaming", 120)
        engine = service.engine
        assert engine is not None
        pg_db.execute("INSERT INTO public.t VALUES (1, 'a')")
        pg_db.execute("INSERT INTO public.other VALUES (1)")  # received, nothing to load
        lsn = mark(pg_db)
        assert engine.wait_durable(lsn, 120)
        # Idle from here on: the lag must stay 0 (it used to climb until a heartbeat).
        eventually(lambda: _lag_ms(service) == 0, "lag 0 once caught up", 30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert _lag_ms(service) == 0, service.status()
            time.sleep(0.2)  # sampling an idle pipeline, not synchronising
    finally:
        service.stop(timeout=60)


def test_lag_under_load_climbs_then_returns_to_zero(pg_db: Database) -> None:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    with StarRocksEmulator() as sr:
        config = starrocks_config(pg_db, sr.url, sr.mysql_port, ["public.t"],
                                  snapshot="never", heartbeat_interval_s=0, grpc_port=0)
        service = EngineService(config)
        service.start()
        try:
            eventually(lambda: service.serving, "streaming", 120)
            engine = service.engine
            assert engine is not None
            sr.faults.delay(times=None, seconds=1.5, where="be")
            for i in range(5):
                pg_db.execute("INSERT INTO public.t VALUES (%s, 'x')", (i,))
            eventually(lambda: _lag_ms(service) > 1000, "lag above 1 s under a slow load", 60)
            sr.faults.clear()
            lsn = mark(pg_db)
            assert engine.wait_durable(lsn, 120)
            eventually(lambda: _lag_ms(service) == 0, "lag back to 0", 30)
        finally:
            service.stop(timeout=60)
            if service.engine is not None:
                service.engine.sink.close()
