"""EngineService lifecycle on a scripted engine: stages, snapshot hook, drain/stop, lag."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dbmazz.engine.core import Engine, RunState, Stage
from dbmazz.engine.metrics import MetricsSampler
from dbmazz.engine.service import EngineService, ServiceStateError
from dbmazz.pipeline.merge import merge_changes
from tests.scripted import eventually, scripted_engine


def test_stages_go_through_setup_snapshot_and_cdc(tmp_path: Path) -> None:
    engine, script, _ = scripted_engine(tmp_path)
    seen: list[tuple[Stage, RunState]] = []
    in_snapshot = threading.Event()
    release = threading.Event()

    def snapshot(service: EngineService, built: Engine) -> None:
        assert built is engine
        in_snapshot.set()
        assert release.wait(30)

    service = EngineService(builder=lambda: engine, snapshot=snapshot)
    service.add_listener(lambda: seen.append((service.stage, service.state)))
    assert (service.stage, service.state, service.serving) == (Stage.INIT, RunState.STARTING,
                                                              False)
    service.start()
    assert in_snapshot.wait(30)
    assert (service.stage, service.state, service.serving) == (Stage.SNAPSHOT, RunState.RUNNING,
                                                              True)
    release.set()
    eventually(lambda: service.stage == Stage.CDC, "CDC")
    end = script.insert(rows=2)
    assert engine.wait_durable(end - 1, 30)
    assert service.drain(timeout=30)
    assert service.state == RunState.STOPPED
    assert (Stage.SETUP, RunState.STARTING) in seen
    assert service.wait_for_exit(stay_up_on_failure=True) == 0


def test_drain_requested_during_setup_never_starts_the_engine(tmp_path: Path) -> None:
    engine, _, _ = scripted_engine(tmp_path)
    building = threading.Event()
    release = threading.Event()

    def slow_setup() -> Engine:
        building.set()
        assert release.wait(30)
        return engine

    service = EngineService(builder=slow_setup)
    service.start()
    assert building.wait(30)
    with pytest.raises(ServiceStateError, match="cannot pause: the engine is STARTING"):
        service.pause()
    assert not service.drain(timeout=0)
    release.set()
    assert service.wait(30)
    assert service.state == RunState.STOPPED
    assert engine.progress.state == RunState.STARTING  # never started


def test_reload_rejects_settings_that_cannot_change_live(tmp_path: Path) -> None:
    engine, _, _ = scripted_engine(tmp_path)
    service = EngineService(builder=lambda: engine)
    service.start()
    eventually(lambda: service.state == RunState.RUNNING, "running")
    with pytest.raises(ServiceStateError, match="cannot change load_workers"):
        service.reload(load_workers=2)
    assert service.reload(flush_bytes=1 << 20) == ["flush_bytes"]
    service.stop(timeout=30)


def test_replication_lag_is_the_age_of_the_oldest_unloaded_change(tmp_path: Path) -> None:
    engine, script, _ = scripted_engine(tmp_path, flush_interval_ms=3_600_000,
                                        flush_rows=1_000_000)
    service = EngineService(builder=lambda: engine)
    service.start()
    eventually(lambda: service.state == RunState.RUNNING, "running")
    assert engine.replication_lag_ms == 0
    end = script.insert(rows=1)
    eventually(lambda: engine.progress.received_lsn > 0, "the read")
    first = engine.replication_lag_ms
    eventually(lambda: engine.replication_lag_ms > first, "the lag to grow while unloaded")
    sampler = MetricsSampler(service.status)
    assert sampler.sample().replication_lag_ms > 0
    service.reload(flush_rows=1)
    script.insert(rows=1)
    assert engine.wait_durable(end, 30)
    assert engine.replication_lag_ms == 0
    service.stop(timeout=30)


def test_engine_batches_can_be_merged_in_process(tmp_path: Path) -> None:
    engine, script, _ = scripted_engine(tmp_path)
    engine.start()
    try:
        end = script.insert(rows=3)
        assert engine.wait_durable(end - 1, 30)
        [recent] = engine.batches()
        merged = merge_changes(recent.batch, recent.table)
        assert merged.num_rows == 3 and merged.source_changes == 3
        assert engine.table_schema("public.orders") == recent.table
    finally:
        engine.stop()
        engine.wait(30)
