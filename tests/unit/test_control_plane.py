"""gRPC control plane over a scripted engine (no PostgreSQL): every RPC, auth, health, CLI."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import polars as pl
import pyarrow as pa
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dbmazz import cli
from dbmazz.api.client import Client, EngineRequestError, EngineUnreachable
from dbmazz.api.prometheus import MetricsServer
from dbmazz.api.server import GrpcServer
from dbmazz.engine.core import Engine, RunState, Stage
from dbmazz.engine.service import EngineService
from dbmazz.errors import SetupError
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.merge import merge_changes
from dbmazz.testing.postgres import free_port
from tests.scripted import Script, eventually, scripted_engine

TOKEN = "s3cret-token-value"


@dataclass
class Running:
    engine: Engine
    script: Script
    service: EngineService
    server: GrpcServer
    client: Client


@contextlib.contextmanager
def _running(tmp_path: Path, token: str | None = None, broken: bool = False,
             **settings: int) -> Iterator[Running]:
    engine, script, _sink = scripted_engine(tmp_path, broken=broken, **settings)
    service = EngineService(builder=lambda: engine)
    server = GrpcServer(service, port=0, token=token)
    server.start()
    service.start()
    client = Client(server.address, token=token)
    eventually(lambda: service.state != RunState.STARTING, "the engine to start")
    try:
        yield Running(engine, script, service, server, client)
    finally:
        client.close()
        service.stop(timeout=30)
        server.stop(grace=0)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with _running(tmp_path) as started:
        yield started


pytestmark = pytest.mark.usefixtures("keep_logging")


def test_status_reports_stage_lsns_lag_tables_and_settings(running: Running) -> None:
    end = running.script.insert(rows=3)
    assert running.engine.wait_durable(end - 1, 30)
    status = running.client.status()
    assert status.stage == status.DESCRIPTOR.fields_by_name["stage"].enum_type.values_by_name[
        "STAGE_CDC"].number
    data = running.client.status_dict()
    assert data["stage"] == "CDC" and data["state"] == "RUNNING" and data["serving"] is True
    assert data["confirmed_lsn"] == {"value": end, "text": format_lsn(end)}
    assert data["received_lsn"]["value"] >= end - 8
    wal_end = running.script.source.server_wal_end
    assert data["server_wal_end"]["value"] == wal_end
    assert data["lag_bytes"] == wal_end - end
    [orders] = data["tables"]
    assert orders["table"] == "public.orders" and orders["target"] == "orders"
    assert orders["rows_loaded"] == 3 and orders["batches"] == 1 and orders["in_flight_rows"] == 3
    assert data["settings"]["flush_interval_ms"] == 20
    assert "last_error" not in data
    assert data["snapshot"]["active"] is False


def test_health_serving_and_reflection(running: Running) -> None:
    assert running.client.health() == ("SERVING", None)
    assert running.client.health("dbmazz.v1.Control") == ("SERVING", None)
    stub = reflection_pb2_grpc.ServerReflectionStub(running.client._channel)
    [reply] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"dbmazz.v1.Status", "dbmazz.v1.Control", "dbmazz.v1.Metrics", "dbmazz.v1.Inspect",
            "grpc.health.v1.Health"} <= names


def test_pause_stops_reading_and_resume_restarts(running: Running) -> None:
    source = running.script.source
    reply = running.client.pause()
    assert reply.status.state == reply.status.DESCRIPTOR.fields_by_name[
        "state"].enum_type.values_by_name["STATE_PAUSED"].number
    end = running.script.insert(rows=2)
    # The paused reader loops sending status updates (keepalives) and never reads.
    before = source.keepalives
    eventually(lambda: source.keepalives >= before + 3, "keepalives while paused")
    assert source.chunks.qsize() == 1
    assert running.engine.durable_lsn < end
    assert running.client.status_dict()["state"] == "PAUSED"
    running.client.resume()
    assert running.engine.wait_durable(end - 1, 30)
    assert running.client.status_dict()["state"] == "RUNNING"


def test_drain_loads_everything_checkpoints_and_stops(running: Running) -> None:
    end = running.script.insert(rows=4)
    eventually(lambda: running.script.source.chunks.empty(), "the reader to take the chunk")
    reply = running.client.drain(wait_s=30)
    assert reply.completed
    assert running.engine.durable_lsn == end
    assert running.engine.checkpoints.load() == end
    assert running.script.source.confirmed == end
    data = running.client.status_dict()
    assert data["state"] == "STOPPED" and data["inflight_bytes"] == 0
    assert data["serving"] is False
    assert running.client.health()[0] == "NOT_SERVING"
    with pytest.raises(EngineRequestError, match="cannot pause"):
        running.client.pause()


def test_stop_without_a_source_config_never_drops_anything(running: Running) -> None:
    reply = running.client.stop(wait_s=30)
    assert reply.completed and not reply.slot_dropped
    assert running.service.state == RunState.STOPPED


def test_reload_config_applies_to_the_running_batcher(tmp_path: Path) -> None:
    # Limits so high that nothing flushes until ReloadConfig lowers flush_rows.
    with _running(tmp_path, flush_rows=1_000_000, flush_interval_ms=3_600_000) as running:
        first = running.script.insert(rows=2)
        eventually(lambda: running.engine.progress.received_lsn >= first - 8, "the first read")
        assert running.engine.durable_lsn < first
        reply = running.client.reload_config(flush_rows=1, max_inflight_bytes=96 << 20)
        assert sorted(reply.changed) == ["flush_rows", "max_inflight_bytes"]
        assert reply.settings.flush_rows == 1
        assert running.engine.settings.max_inflight_bytes == 96 << 20
        second = running.script.insert(rows=1)
        assert running.engine.wait_durable(second - 1, 30)
        assert running.client.reload_config(flush_rows=1).changed == []
        with pytest.raises(EngineRequestError, match="must be positive"):
            running.client.reload_config(flush_bytes=0)


def test_metrics_stream_samples(running: Running) -> None:
    end = running.script.insert(rows=5)
    assert running.engine.wait_durable(end - 1, 30)
    samples = list(running.client.metrics(interval_ms=50, max_samples=3))
    assert len(samples) == 3
    last = samples[-1]
    assert last.events == running.engine.progress.messages
    assert last.rows_loaded == 5 and last.batches == 1
    assert last.rss_bytes > 0 and last.cpu_percent >= 0
    assert last.confirmed_lsn == end and last.max_inflight_bytes > 0
    assert samples[0].events_per_s > 0  # first sample: average since start


def test_metrics_stream_can_be_cancelled(running: Running) -> None:
    stream = running.client.metrics(interval_ms=50)
    assert next(stream).events >= 0
    stream.close()  # cancels; the server frees the worker


def test_inspect_list_peek_and_schema(running: Running) -> None:
    end = running.script.insert(rows=3)
    assert running.engine.wait_durable(end - 1, 30)
    [info] = running.client.list_batches()
    assert (info.table, info.rows, info.inserts, info.updates, info.deletes) == (
        "public.orders", 3, 3, 0, 0)
    assert info.first_lsn == info.last_lsn > 0
    batch = running.client.peek_arrow("public.orders")
    assert batch.num_rows == 3
    assert batch.column("__dbmazz_op").to_pylist() == [0, 0, 0]
    assert batch.column("id").to_pylist() == [1, 2, 3]
    frame = running.client.peek("orders", max_rows=2)  # short name, unambiguous
    assert isinstance(frame, pl.DataFrame) and frame.height == 2
    schema = running.client.schema_of("public.orders")
    assert schema.field("id").type == pa.int64()
    assert schema.field("__dbmazz_lsn").type == pa.uint64()
    table = running.client.table_schema("orders")
    assert (table.source_name, table.key_columns, table.column_names) == (
        "public.orders", ("id",), ("id", "note"))
    merged = merge_changes(batch, table)
    assert merged.num_rows == 3 and merged.deletes is None
    with pytest.raises(EngineRequestError, match=r"unknown table public.nope; known: "
                                                 r"public.orders.*NOT_FOUND"):
        running.client.peek_arrow("public.nope")


def test_schema_of_before_any_batch_comes_from_the_catalog(running: Running) -> None:
    schema = running.client.schema_of("public.orders")
    assert schema.names == ["id", "note"]
    with pytest.raises(EngineRequestError, match=r"no batch of public\.orders decoded yet"):
        running.client.peek_arrow("public.orders")


def test_engine_keeps_a_bounded_ring_of_recent_batches(running: Running) -> None:
    running.engine.recent_batches_max = 2
    end = 0
    for _ in range(4):
        end = running.script.insert(rows=1)
        assert running.engine.wait_durable(end - 1, 30)
    recent = running.engine.batches()
    assert len(recent) == 2
    assert [r.batch.column("id").to_pylist() for r in recent] == [[3], [4]]
    assert recent[-1].table.source_name == "public.orders"


def test_fatal_sink_error_turns_health_not_serving_with_the_error(tmp_path: Path) -> None:
    with _running(tmp_path, broken=True) as running:
        assert running.client.health() == ("SERVING", None)
        running.script.insert(rows=1)
        eventually(lambda: running.service.failed, "the fatal error")
        health, error = running.client.health()
        assert health == "NOT_SERVING"
        assert error is not None and "disk full" in error and "free space" in error
        data = running.client.status_dict()
        assert data["state"] == "FAILED"
        assert data["last_error"]["kind"] == "SinkError"
        assert data["last_error"]["fatal"] is True
        assert "disk full" in data["last_error"]["message"]
        assert data["last_error"]["hint"] == "free space on the target, then restart dbmazz"
        with pytest.raises(EngineRequestError, match="FAILED_PRECONDITION"):
            running.client.pause()


def test_setup_failure_keeps_the_server_up_with_the_error(tmp_path: Path) -> None:
    def broken_setup() -> Engine:
        raise SetupError("table public.missing does not exist on the source",
                         "create it or remove it from TABLES")

    service = EngineService(builder=broken_setup)
    with GrpcServer(service, port=0) as server, Client(server.address) as client:
        service.start()
        assert service.wait(30)
        health, error = client.health()
        assert health == "NOT_SERVING"
        assert error == ("table public.missing does not exist on the source — create it or "
                         "remove it from TABLES")
        data = client.status_dict()
        assert (data["stage"], data["state"]) == ("SETUP", "FAILED")
        assert data["last_error"]["kind"] == "SetupError"
        with pytest.raises(EngineRequestError, match="cannot pause: the engine is FAILED"):
            client.pause()
        with pytest.raises(EngineRequestError, match="no pipeline yet"):
            client.list_batches()
        assert client.stop(wait_s=5).completed
    assert service.wait_for_exit(stay_up_on_failure=True) == 1


def test_token_is_required_and_never_shown(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with _running(tmp_path, token=TOKEN) as running:
        address = running.server.address
        with Client(address) as anonymous, pytest.raises(EngineRequestError,
                                                         match="missing bearer token") as err:
            anonymous.status()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(address, token="wrong") as wrong, pytest.raises(
                EngineRequestError, match="invalid bearer token"):
            wrong.pause()
        with Client(address) as anonymous, pytest.raises(EngineRequestError):
            list(anonymous.metrics(max_samples=1))
        with Client(address) as anonymous:
            assert anonymous.health()[0] == "SERVING"  # probes need no token
        data = running.client.status_dict()
        assert data["state"] == "RUNNING"
        assert TOKEN not in json.dumps(data)
    assert TOKEN not in caplog.text
    assert "rejected /dbmazz.v1.Status/GetStatus" in caplog.text


def test_cli_commands_against_a_running_engine(running: Running,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    end = running.script.insert(rows=2)
    assert running.engine.wait_durable(end - 1, 30)
    address = running.server.address
    assert cli.main(["status", "--address", address, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["confirmed_lsn"]["text"] == format_lsn(end)
    assert cli.main(["status", "--address", address]) == 0
    human = capsys.readouterr().out
    assert "RUNNING" in human and "public.orders" in human and format_lsn(end) in human
    assert cli.main(["top", "--address", address, "--once"]) == 0
    frame = capsys.readouterr().out
    assert "dbmazz top" in frame and "events/s" in frame and "public.orders" in frame
    assert cli.main(["pause", "--address", address]) == 0
    assert "PAUSED" in capsys.readouterr().err
    assert cli.main(["resume", "--address", address]) == 0
    assert "RUNNING" in capsys.readouterr().err
    assert cli.main(["drain", "--address", address]) == 0
    assert "drained and stopped: state STOPPED" in capsys.readouterr().err
    assert running.engine.durable_lsn == end


def test_cli_says_clearly_when_no_engine_listens(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    for command in ("status", "top", "pause"):
        assert cli.main([command, "--address", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
        err = capsys.readouterr().err
        assert (f"no dbmazz engine at 127.0.0.1:{port}: is `dbmazz run` running with "
                f"GRPC_PORT={port}?") in err
    with pytest.raises(EngineUnreachable):
        Client(f"127.0.0.1:{port}", timeout_s=5).status()


def test_grpc_port_in_use_is_a_clear_error(running: Running) -> None:
    other = GrpcServer(running.service, port=running.server.port)
    with pytest.raises(Exception, match=f"GRPC_PORT: cannot listen on 127.0.0.1:"
                                        f"{running.server.port}"):
        other.start()


def test_prometheus_endpoint_exposes_dbmazz_series(running: Running) -> None:
    end = running.script.insert(rows=3)
    assert running.engine.wait_durable(end - 1, 30)
    server = MetricsServer(running.service, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response:
            text = response.read().decode()
    finally:
        server.stop()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['dbmazz_table_rows_loaded_total{table="public.orders"}'] == 3
    assert values["dbmazz_rows_loaded_total"] == 3
    assert values["dbmazz_batches_total"] == 1
    assert values["dbmazz_confirmed_lsn"] == end
    assert values['dbmazz_state{state="RUNNING"}'] == 1
    assert values['dbmazz_state{state="PAUSED"}'] == 0
    assert values['dbmazz_stage{stage="CDC"}'] == 1
    assert values["dbmazz_serving"] == 1
    assert values["dbmazz_process_resident_memory_bytes"] > 0
    assert values["dbmazz_replication_lag_seconds"] >= 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl binary")
def test_tls_with_token(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    engine, _script, _sink = scripted_engine(tmp_path)
    service = EngineService(builder=lambda: engine)
    with GrpcServer(service, port=0, token=TOKEN, tls_cert=str(cert),
                    tls_key=str(key)) as server:
        service.start()
        eventually(lambda: service.state == RunState.RUNNING, "running")
        with Client(f"localhost:{server.port}", token=TOKEN, ca_cert=str(cert)) as client:
            assert client.status_dict()["state"] == "RUNNING"
        with Client(f"localhost:{server.port}", token=TOKEN) as plaintext, pytest.raises(
                EngineUnreachable):
            plaintext.status()
        service.stop(timeout=30)
    assert service.stage == Stage.CDC
