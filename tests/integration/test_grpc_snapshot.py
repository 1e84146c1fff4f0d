"""On-demand snapshots through the control plane, against a live engine on a real
PostgreSQL: the Snapshot RPC, Status and Metrics progress, Prometheus gauges, and
`dbmazz snapshot --table` sent to a running engine."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dbmazz import cli
from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api.client import EngineRequestError
from dbmazz.api.prometheus import MetricsServer
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import mark
from tests.integration.test_grpc import PUBLICATION, SLOT, Live, _items, _start_live
from tests.scripted import eventually

ROWS = 750


def _extra(db: Database, rows: int = ROWS) -> None:
    """A table created while the engine streams (not in TABLES, not yet published)."""
    db.execute("CREATE TABLE public.extra (id int PRIMARY KEY, label text, amount numeric(12,2))")
    db.execute("INSERT INTO public.extra SELECT g, 'row ' || g, g * 1.5 "
               "FROM generate_series(1, %s::int) g", (rows,))


def _target_rows(live: Live) -> list[tuple[object, ...]]:
    return [tuple(r) for r in live.sink.query(
        'SELECT id, label, amount FROM "public"."extra" '
        'WHERE NOT dbmazz_is_deleted ORDER BY id')]  # DELETE_MODE=soft


def _source_rows(db: Database) -> list[tuple[object, ...]]:
    return [tuple(r) for r in db.query("SELECT id, label, amount FROM public.extra ORDER BY id")]


pytestmark = pytest.mark.usefixtures("keep_logging")


@pytest.fixture
def live(pg_db: Database, tmp_path: Path) -> Iterator[Live]:
    _items(pg_db)
    with _start_live(pg_db, tmp_path) as started:
        eventually(lambda: started.client.status().stage == pb.STAGE_CDC,
                   "streaming (stage CDC)", 120)
        yield started


def test_snapshot_rpc_loads_a_new_table_while_cdc_runs(live: Live) -> None:
    live.db.execute("INSERT INTO public.items VALUES (1, 'before', 1)")
    _extra(live.db)
    reply = live.client.snapshot(["extra"], wait=True, wait_s=180)
    assert reply.accepted and reply.completed and not reply.error, reply
    assert list(reply.tables) == ["public.extra"]
    assert reply.progress.rows_copied == ROWS

    assert _target_rows(live) == _source_rows(live.db)
    status = live.client.status()
    snap = status.snapshot
    assert (snap.kind, snap.active) == ("on_demand", False)
    assert snap.tables_total == snap.tables_done == 1
    assert snap.rows_copied == snap.rows_estimate == ROWS
    assert snap.version.value > 0 and snap.finished_at_unix_s >= snap.started_at_unix_s > 0
    assert snap.HasField("eta_s") and snap.eta_s == 0.0
    [table] = snap.tables
    assert (table.table, table.done, table.rows_done) == ("public.extra", True, ROWS)
    assert table.chunks_done == table.chunks_total >= 1
    [sample] = live.client.metrics(max_samples=1)
    assert (sample.snapshot_tables_done, sample.snapshot_rows_copied) == (1, ROWS)
    assert not sample.snapshot_active

    # The table is replicated from now on, next to the configured one.
    live.db.execute("UPDATE public.extra SET label = 'changed' WHERE id <= 10")
    live.db.execute("DELETE FROM public.extra WHERE id > %s", (ROWS - 5,))
    live.db.execute("INSERT INTO public.items VALUES (2, 'after', 2)")
    assert live.engine.wait_durable(mark(live.db), 120)
    assert _target_rows(live) == _source_rows(live.db)
    assert live.sink.query('SELECT count(*) FROM "public"."items"') == [(2,)]


def test_snapshot_rpc_refuses_bad_tables_with_invalid_argument(live: Live) -> None:
    live.db.execute("CREATE TABLE public.keyless (v int)")
    cases = [
        (["public.nope"], "public.nope"),
        (["items", "missing_one"], "public.missing_one"),
        (["keyless"], "public.keyless"),
        ([], "name the tables"),
    ]
    for tables, named in cases:
        with pytest.raises(EngineRequestError) as caught:
            live.client.snapshot(tables)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, (tables, caught.value)
        assert named in caught.value.message
    with pytest.raises(EngineRequestError) as caught:
        live.client.snapshot(["keyless"])
    assert caught.value.hint is None and "PRIMARY KEY" in caught.value.message
    # Nothing was started (Status still shows the initial snapshot), nothing published.
    assert live.client.status().snapshot.kind == "initial"
    assert live.db.query("SELECT count(*) FROM pg_publication_tables WHERE pubname = %s "
                         "AND tablename IN ('nope', 'keyless')", (PUBLICATION,)) == [(0,)]


def test_snapshot_rpc_needs_a_streaming_engine(live: Live) -> None:
    _extra(live.db, 3)
    live.service.stop(timeout=60)
    with pytest.raises(EngineRequestError) as caught:
        live.client.snapshot(["public.extra"])
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot take a snapshot" in caught.value.message


def test_prometheus_reports_snapshot_gauges(live: Live) -> None:
    metrics = MetricsServer(live.service, port=0)
    metrics.start()
    try:
        before = _scrape(metrics.port).splitlines()  # the initial snapshot of empty items
        assert "dbmazz_snapshot_active 0.0" in before
        assert "dbmazz_snapshot_tables_total 1.0" in before
        assert 'dbmazz_snapshot_rows_copied{table="public.items"} 0.0' in before
        _extra(live.db)
        reply = live.client.snapshot(["public.extra"])  # returns at once: poll Status
        assert reply.accepted and not reply.error
        eventually(lambda: _finished_on_demand(live), "the snapshot", 180)
        text = _scrape(metrics.port)
    finally:
        metrics.stop()
    label = '{table="public.extra"}'
    chunks = live.client.status().snapshot.tables[0].chunks_total
    for line in ("dbmazz_snapshot_active 0.0", "dbmazz_snapshot_tables_total 1.0",
                 "dbmazz_snapshot_tables_done 1.0",
                 f"dbmazz_snapshot_rows_copied{label} {float(ROWS)}",
                 f"dbmazz_snapshot_rows_estimate{label} {float(ROWS)}",
                 f"dbmazz_snapshot_chunks_done{label} {float(chunks)}",
                 f"dbmazz_snapshot_chunks_total{label} {float(chunks)}"):
        assert line in text.splitlines(), line


def _finished_on_demand(live: Live) -> bool:
    snap = live.client.status().snapshot
    return snap.kind == "on_demand" and not snap.active and snap.tables_done == 1


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        return str(response.read().decode())


def test_cli_snapshot_asks_the_running_engine(live: Live, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _extra(live.db)
    code = cli.main([
        "snapshot", "--table", "public.extra",
        "--source-url", live.db.dsn, "--tables", "public.items", "--sink", "duckdb",
        "--duckdb-path", str(tmp_path / "unused.duckdb"), "--slot-name", SLOT,
        "--publication-name", PUBLICATION, "--grpc-port", str(live.server.port),
    ])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"asking the engine at {live.server.address}" in err
    assert f"snapshot of public.extra complete: {ROWS:,} row(s)" in err
    assert _target_rows(live) == _source_rows(live.db)
    assert not (tmp_path / "unused.duckdb").exists()  # the engine's sink loaded it

    # A missing table: the engine's refusal, as a clear CLI error.
    code = cli.main([
        "snapshot", "--table", "public.nope", "--source-url", live.db.dsn,
        "--tables", "public.items", "--slot-name", SLOT, "--grpc-port", str(live.server.port),
    ])
    err = capsys.readouterr().err
    assert code == 1 and "public.nope" in err and "INVALID_ARGUMENT" in err
