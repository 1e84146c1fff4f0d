"""notebooks/inspect_batches.ipynb runs top to bottom on a real kernel and a real PostgreSQL,
in local mode (engine in the kernel) and in remote mode (inspecting an engine over gRPC)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

from dbmazz.api.server import GrpcServer
from dbmazz.engine.core import RunState
from dbmazz.engine.service import EngineService
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config, mark
from tests.scripted import eventually

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "inspect_batches.ipynb"
ROWS = 1000


def _kernel_name(tmp_path: Path) -> str:
    """A kernelspec running this interpreter (the venv), installed into a temp dir."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(kernel_name="dbmazz-test", prefix=str(prefix))
    spec = prefix / "share" / "jupyter" / "kernels" / "dbmazz-test" / "kernel.json"
    data = json.loads(spec.read_text())
    data["argv"][0] = sys.executable
    spec.write_text(json.dumps(data))
    return "dbmazz-test"


def _execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    kernel = _kernel_name(tmp_path)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert kernel in KernelSpecManager().find_kernel_specs()
    client = NotebookClient(notebook, timeout=600, kernel_name=kernel,
                            resources={"metadata": {"path": str(NOTEBOOK.parents[1])}})
    client.execute()
    return notebook


def _texts(notebook: Any) -> list[str]:
    out = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                out.append(output.text)
            elif "data" in output:
                # HTML: the text form of a wide DataFrame wraps its column names.
                out.append(output["data"].get("text/html", output["data"].get("text/plain", "")))
    return out


def _summary(notebook: Any) -> dict[str, Any]:
    for text in _texts(notebook):
        for line in text.splitlines():
            if line.startswith("SUMMARY "):
                result: dict[str, Any] = json.loads(line.removeprefix("SUMMARY "))
                return result
    raise AssertionError("the notebook printed no SUMMARY line")


def test_local_mode_against_real_postgres(pg_db: Database, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute(tmp_path, monkeypatch, DBMAZZ_NOTEBOOK_PG_DSN=pg_db.dsn,
                        DBMAZZ_NOTEBOOK_ROWS=str(ROWS))
    summary = _summary(notebook)
    updates = len(range(3, ROWS + 1, 3))
    deletes = ROWS // 10
    assert summary["mode"] == "local"
    # The in-flight batch holds every change of the transaction, decoded, pre-merge.
    assert summary["ops"] == {"0": ROWS, "1": updates, "2": deletes}
    assert summary["in_flight_changes"] == ROWS + updates + deletes
    # The merge keeps one row per key; deleted keys become delete rows.
    assert summary["merged_rows"] == ROWS
    assert summary["merged_deletes"] == deletes
    assert summary["samples"] == 6 and summary["rows_loaded"] > ROWS
    assert summary["target_rows"] == summary["source_rows"]
    assert summary["state"] == "STOPPED"
    texts = "\n".join(_texts(notebook))
    assert "__dbmazz_op" in texts and "dbmazz_cdc_version" in texts
    assert "rows/s" in texts


@pytest.fixture
def remote_engine(pg_db: Database, tmp_path: Path) -> Iterator[GrpcServer]:
    # A key not named `id`: remote mode must sort by the table's own key.
    pg_db.execute("CREATE TABLE public.orders (order_no int PRIMARY KEY, customer text, "
                  "amount numeric(10,2), status text)")
    config = duckdb_config(pg_db, tmp_path, ["public.orders"])
    sink = DuckDBSink(config.duckdb_path)
    service = EngineService(config, sink=sink)
    server = GrpcServer(service, port=0)
    server.start()
    service.start()
    try:
        eventually(lambda: service.state == RunState.RUNNING, "the engine", 120)
        with pg_db.connect() as conn, conn.transaction():
            conn.execute("INSERT INTO public.orders SELECT g, 'c' || g, g, 'new' "
                         "FROM generate_series(1, 100) g")
            conn.execute("UPDATE public.orders SET status = 'paid' WHERE order_no <= 10")
        engine = service.engine
        assert engine is not None and engine.wait_durable(mark(pg_db), 120)
        yield server
    finally:
        service.stop(timeout=60)
        server.stop(grace=0)
        sink.close()


def test_remote_mode_inspects_a_running_engine(remote_engine: GrpcServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_TOKEN", raising=False)
    notebook = _execute(tmp_path, monkeypatch, DBMAZZ_NOTEBOOK_ADDRESS=remote_engine.address)
    summary = _summary(notebook)
    assert summary["mode"] == "remote"
    assert summary["ops"] == {"0": 100, "1": 10}
    assert summary["merged_rows"] == 100 and summary["merged_deletes"] == 0
    assert summary["samples"] == 5 and summary["rows_loaded"] == 100
