"""`dbmazz verify` reachable everywhere: the Verify RPC and ``client.verify()`` of a running
engine, the CLI sent to it (and run alone when no engine runs), Prometheus gauges."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbmazz import cli
from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api.client import EngineRequestError
from dbmazz.api.prometheus import MetricsServer
from dbmazz.errors import SinkError
from dbmazz.pipeline.batch import TableBatch
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.verify.run import VerifyRequest, load_schemas, run_verify
from dbmazz.verify.target import DuckDBTarget
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.integration.test_grpc import PUBLICATION, SLOT, Live, _items, _start_live
from tests.scripted import eventually

pytestmark = pytest.mark.usefixtures("keep_logging")


@pytest.fixture
def live(pg_db: Database, tmp_path: Path) -> Iterator[Live]:
    _items(pg_db)
    pg_db.execute("INSERT INTO public.items SELECT g, 'item ' || g, g % 7 "
                  "FROM generate_series(1, 500) g")
    with _start_live(pg_db, tmp_path) as started:
        eventually(lambda: started.client.status().stage == pb.STAGE_CDC,
                   "streaming (stage CDC)", 120)
        wait_until_loaded(started.engine, mark(pg_db))
        yield started


def _cli(live: Live, tmp_path: Path, *extra: str) -> list[str]:
    return ["verify", "--source-url", live.db.dsn, "--tables", "public.items",
            "--sink", "duckdb", "--duckdb-path", str(tmp_path / "unused.duckdb"),
            "--slot-name", SLOT, "--publication-name", PUBLICATION,
            "--grpc-port", str(live.server.port), *extra]


def test_client_verify_finds_and_repairs_drift(live: Live, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    report = live.client.verify()
    assert report["equal"] and report["target_state"] == "durable"
    [table] = report["tables"]
    assert (table["table"], table["source_rows"], table["target_rows"]) == (
        "public.items", 500, 500)

    live.sink.query("UPDATE public.items SET qty = 99 WHERE id = 7")
    live.sink.query("DELETE FROM public.items WHERE id = 8")
    # The CLI finds the engine's control plane and asks it: exit 1, drift in the JSON.
    code = cli.main(_cli(live, tmp_path, "--json"))
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and not out["equal"]
    diffs = {(d["kind"], d["key"]["id"]): d["columns"] for d in out["tables"][0]["diffs"]}
    assert diffs == {("changed", 7): ["qty"], ("missing", 8): []}
    # --max-keys 0 lists no key through the engine either (its request says 0 = default).
    assert cli.main(_cli(live, tmp_path, "--json", "--max-keys", "0")) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["tables"][0]["diffs"] == [] and out["tables"][0]["changed"] == 1

    metrics = MetricsServer(live.service, port=0)
    metrics.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics",
                                      timeout=10).read().decode()
    finally:
        metrics.stop()
    assert 'dbmazz_verify_equal{table="public.items"} 0.0' in text
    assert 'dbmazz_verify_changed_rows{table="public.items"} 1.0' in text
    assert 'dbmazz_verify_missing_rows{table="public.items"} 1.0' in text

    assert cli.main(_cli(live, tmp_path, "--repair")) == 1  # it found (and fixed) drift
    capsys.readouterr()
    assert cli.main(_cli(live, tmp_path)) == 0
    assert "EQUAL" in capsys.readouterr().out


def test_verify_rpc_refuses_unknown_tables_and_bad_arguments(live: Live) -> None:
    with pytest.raises(EngineRequestError) as missing:
        live.client.verify(["public.nope"])
    assert "public.nope" in str(missing.value) and "INVALID_ARGUMENT" in str(missing.value)
    with pytest.raises(EngineRequestError) as bad:
        live.client.verify(sample=2.0)
    assert "--sample" in str(bad.value)


def test_cli_alone_compares_as_is_and_repairs(pg_db: Database, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _items(pg_db)
    with _start_live(pg_db, tmp_path) as live:
        eventually(lambda: live.client.status().stage == pb.STAGE_CDC,
                   "streaming (stage CDC)", 120)
        pg_db.execute("INSERT INTO public.items SELECT g, 'item ' || g, g % 7 "
                      "FROM generate_series(1, 100) g")
        wait_until_loaded(live.engine, mark(pg_db))
        duckdb_path = live.sink.path
    # The engine is stopped: changes made now are not loaded, and show as drift.
    pg_db.execute("UPDATE public.items SET name = 'later' WHERE id = 3")
    args = ["verify", "--source-url", pg_db.dsn, "--tables", "public.items", "--sink",
            "duckdb", "--duckdb-path", duckdb_path, "--slot-name", SLOT, "--grpc-port", "0"]
    assert cli.main([*args, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["target_state"] == "as-is" and out["notes"]
    assert [(d["kind"], d["key"], d["columns"]) for d in out["tables"][0]["diffs"]] == [
        ("changed", {"id": 3}, ["name"])]
    assert cli.main([*args, "--repair"]) == 1
    capsys.readouterr()
    assert cli.main(args) == 0


def test_sampled_verify_checks_that_share_of_ranges(live: Live) -> None:
    report = live.client.verify(ranges=8, sample=0.25)
    [table] = report["tables"]
    assert (table["ranges"], table["ranges_checked"]) == (8, 2)
    assert report["equal"] and 0 < table["source_rows"] < 500


def test_repair_beside_the_engine_is_refused_under_hard_deletes(pg_db: Database,
                                                               tmp_path: Path) -> None:
    _items(pg_db)
    with _start_live(pg_db, tmp_path, delete_mode="hard") as live:
        eventually(lambda: live.client.status().stage == pb.STAGE_CDC,
                   "streaming (stage CDC)", 120)
        assert live.client.verify()["equal"]  # comparing is fine
        with pytest.raises(EngineRequestError) as refused:
            live.client.verify(repair=True)
    assert "FAILED_PRECONDITION" in str(refused.value)
    assert "DELETE_MODE=soft" in str(refused.value)


def test_a_repair_the_target_refuses_is_that_tables_error(pg_db: Database,
                                                          tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.a (id int PRIMARY KEY); "
                  "CREATE TABLE public.b (id int PRIMARY KEY); "
                  "INSERT INTO public.a VALUES (1); INSERT INTO public.b VALUES (1), (2)")
    config = duckdb_config(pg_db, tmp_path, ["public.a", "public.b"])
    sink = DuckDBSink(config.duckdb_path)
    sink.setup(load_schemas(pg_db.dsn, config.tables, {})[0])  # empty: every row missing

    def write(batch: TableBatch) -> object:
        if batch.table.name == "a":
            raise SinkError("the target refused it")
        return sink.write(batch)

    def run(repair: bool) -> Any:
        return run_verify(config, VerifyRequest(repair=repair, ranges=4),
                          target=DuckDBTarget(sink.read_cursor(), owned=True), write=write,
                          engine_elsewhere=False)
    try:
        # Was: the exception ended the verify, without a report and before public.b.
        a, b = run(True).tables
        assert (a.repaired, a.error) == (0, "repair failed: the target refused it")
        assert (b.repaired, b.error) == (2, None)
        assert [t.equal for t in run(False).tables] == [False, True]
    finally:
        sink.close()
