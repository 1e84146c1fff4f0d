"""Snapshot progress over the control plane without PostgreSQL: the Snapshot RPC's refusals
and auth, the progress message, Prometheus gauges, Metrics fields, status rendering."""

from __future__ import annotations

import io
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from dbmazz.api import convert
from dbmazz.api.client import Client, EngineRequestError
from dbmazz.api.prometheus import ServiceCollector
from dbmazz.engine.core import RunState, Stage
from dbmazz.engine.metrics import MetricsSampler, StatusSnapshot
from dbmazz.snapshot.progress import SnapshotProgress, TableProgress
from dbmazz.ui.format import snapshot_shown, status_renderable
from dbmazz.ui.snapshot import RemoteProgress, show_progress
from tests.unit.test_control_plane import TOKEN, Running, _running


def _progress(active: bool = True) -> SnapshotProgress:
    now = time.time()
    big = TableProgress("public.big", pages=80, rows_estimate=10_000, chunks_total=4,
                        chunks_done=1, rows_done=2_500, started_at=now - 10)
    small = TableProgress("public.small", pages=1, rows_estimate=5, chunks_total=1,
                          chunks_done=1, rows_done=7, started_at=now - 10, finished_at=now - 9)
    return SnapshotProgress(kind="on_demand", version=0x16B3748, active=active,
                            tables={t.table: t for t in (big, small)}, started_at=now - 10,
                            waiting="", reader="adbc")


class _Service:
    """What the collector and the sampler read: one status snapshot."""

    def __init__(self, snapshot: SnapshotProgress | None) -> None:
        self.snapshot = snapshot

    def status(self) -> StatusSnapshot:
        return StatusSnapshot(stage=Stage.CDC, state=RunState.RUNNING, serving=True,
                              snapshot=self.snapshot, started_at=time.time() - 60)


def test_snapshot_rpc_without_a_live_source_is_failed_precondition(tmp_path: Path) -> None:
    with _running(tmp_path) as running:
        _refusals(running)


def _refusals(running: Running) -> None:
    with pytest.raises(EngineRequestError) as caught:
        running.client.snapshot(["public.t"])
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "live PostgreSQL source" in caught.value.message
    with pytest.raises(EngineRequestError) as caught:
        running.client.snapshot(["  "])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    status = running.client.status()
    assert not status.snapshot.active and status.snapshot.kind == ""


def test_snapshot_rpc_needs_the_token(tmp_path: Path) -> None:
    with _running(tmp_path, token=TOKEN) as running, \
            Client(running.server.address) as anonymous:
        with pytest.raises(EngineRequestError) as caught:
            anonymous.snapshot(["public.t"])
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(EngineRequestError) as caught:
            running.client.snapshot(["public.t"])  # with the token: past auth, refused
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_progress_message_has_totals_rates_and_eta() -> None:
    progress = _progress()
    message = convert.snapshot_pb(progress)
    assert (message.kind, message.active, message.reader) == ("on_demand", True, "adbc")
    assert (message.tables_total, message.tables_done) == (2, 1)
    assert message.rows_copied == 2_507 and message.rows_estimate == 10_007
    assert message.version.text == "0/16B3748"
    assert 200 < message.rows_per_s < 300  # 2,507 rows in ~10 s
    assert message.HasField("eta_s") and 25 < message.eta_s < 35  # 7,500 rows left
    big, small = message.tables
    assert (big.table, big.chunks_done, big.chunks_total, big.done) == ("public.big", 1, 4,
                                                                        False)
    assert big.HasField("eta_s") and big.rows_expected == 10_000
    assert (small.done, small.rows_expected, small.eta_s) == (True, 7, 0.0)
    assert small.finished_at_unix_s > small.started_at_unix_s > 0

    unknown = _progress()
    unknown.tables["public.big"].rows_done = 0
    unknown.tables["public.small"].rows_done = 0
    assert not convert.snapshot_pb(unknown).HasField("eta_s")  # no rows yet: no rate
    # Before the initial snapshot planned anything, stage SNAPSHOT says it is active.
    assert convert.snapshot_pb(None, initial_running=True).active
    assert convert.snapshot_pb(None).kind == ""


def test_prometheus_snapshot_gauges() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(_Service(_progress())))  # type: ignore[arg-type]
    lines = generate_latest(registry).decode().splitlines()
    for line in ("dbmazz_snapshot_active 1.0", "dbmazz_snapshot_tables_total 2.0",
                 "dbmazz_snapshot_tables_done 1.0",
                 'dbmazz_snapshot_rows_copied{table="public.big"} 2500.0',
                 'dbmazz_snapshot_rows_estimate{table="public.big"} 10000.0',
                 'dbmazz_snapshot_chunks_done{table="public.big"} 1.0',
                 'dbmazz_snapshot_chunks_total{table="public.big"} 4.0',
                 'dbmazz_snapshot_rows_copied{table="public.small"} 7.0'):
        assert line in lines, line

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(_Service(None)))  # type: ignore[arg-type]
    lines = generate_latest(registry).decode().splitlines()
    assert "dbmazz_snapshot_active 0.0" in lines and "dbmazz_snapshot_tables_total 0.0" in lines
    assert not any(line.startswith("dbmazz_snapshot_rows_copied{") for line in lines)


def test_metrics_sample_carries_snapshot_totals() -> None:
    sample = convert.sample_pb(MetricsSampler(_Service(_progress()).status).sample())
    assert sample.snapshot_active
    assert (sample.snapshot_tables_total, sample.snapshot_tables_done) == (2, 1)
    assert (sample.snapshot_rows_copied, sample.snapshot_rows_estimate) == (2_507, 10_007)
    assert (sample.snapshot_chunks_done, sample.snapshot_chunks_total) == (2, 5)
    assert sample.snapshot_rows_per_s > 0


def _render(status: object) -> str:
    out = io.StringIO()
    Console(file=out, width=140, force_terminal=False).print(
        status_renderable(status, "127.0.0.1:50051"))  # type: ignore[arg-type]
    return out.getvalue()


def test_status_shows_a_running_or_recent_snapshot_only() -> None:
    status = convert.status_pb(_Service(_progress()).status())
    text = _render(status)
    assert "on-demand snapshot" in text and "running" in text
    assert "public.big" in text and "2,500/10,000 rows" in text and "ETA 0:00:" in text
    assert "7/7 rows" in text and "done" in text

    finished = _progress(active=False)
    finished.finished_at = time.time()
    status = convert.status_pb(_Service(finished).status())
    assert snapshot_shown(status.snapshot) and "stopped" in _render(status)
    assert not snapshot_shown(status.snapshot, now=time.time() + 3600)
    assert not snapshot_shown(convert.status_pb(_Service(None).status()).snapshot)


def test_progress_bars_from_status() -> None:
    remote = RemoteProgress.of(convert.snapshot_pb(_progress()))
    out = io.StringIO()
    polls = iter([False, True])
    show_progress(lambda: remote, lambda: next(polls),
                  Console(file=out, force_terminal=True, width=120))
    text = out.getvalue()
    assert "public.big" in text and "2,500/10,000 rows" in text and "ETA" in text
    assert "public.small" in text and "done" in text
