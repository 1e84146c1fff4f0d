"""Verify run by a serving engine (the Verify RPC), and the last results for Prometheus.

Inside the engine's process the verify reads the target through the engine's own
connection (DuckDB allows one process per file), waits for the engine's durable LSN
directly, and writes a repair through the engine's sink, where CDC and snapshot writes of
one table are serialized.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dbmazz.engine.core import Stage
from dbmazz.engine.service import EngineService, InvalidRequestError, ServiceStateError
from dbmazz.errors import SetupError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.verify.report import VerifyReport
from dbmazz.verify.run import (
    BadVerifyRequest,
    RepairRefused,
    VerifyRequest,
    open_target,
    run_verify,
)
from dbmazz.verify.target import DuckDBTarget, TargetReader


@dataclass(frozen=True)
class LastResult:
    """One table's last verify, for the ``dbmazz_verify_*`` gauges."""

    table: str
    at_unix_s: float
    equal: bool
    missing: int
    extra: int
    changed: int
    rows: int
    seconds: float


class LastResults:
    """The last verify per table in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, LastResult] = {}

    def record(self, report: VerifyReport, at_unix_s: float) -> None:
        with self._lock:
            for t in report.tables:
                self._tables[t.table] = LastResult(t.table, at_unix_s, t.equal, t.missing,
                                                   t.extra, t.changed, t.source_rows,
                                                   t.seconds)

    def snapshot(self) -> list[LastResult]:
        with self._lock:
            return sorted(self._tables.values(), key=lambda r: r.table)


#: What this process verified last (read by the Prometheus collector).
LAST_RESULTS = LastResults()
_RUNNING = threading.Lock()


def _engine_target(service: EngineService, sink: object) -> TargetReader:
    if isinstance(sink, DuckDBSink):
        return DuckDBTarget(sink.read_cursor(), owned=True)
    assert service.config is not None
    return open_target(service.config)


def verify_in_service(service: EngineService, request: VerifyRequest) -> VerifyReport:
    """Run a verify beside the streaming engine of ``service`` (one at a time)."""
    import time

    config = service.config
    engine = service.engine
    if config is None or config.source_url is None or engine is None:
        raise ServiceStateError("verify needs an engine streaming from PostgreSQL",
                                "start it with `dbmazz run`")
    if service.stage != Stage.CDC:
        raise ServiceStateError(
            f"cannot verify yet: the engine is in stage {service.stage.value}",
            "retry once it streams (stage CDC)")
    if not _RUNNING.acquire(blocking=False):
        raise ServiceStateError("a verify is already running in this engine",
                                "wait for it to finish")
    try:
        target = _engine_target(service, engine.sink)
        try:
            report = run_verify(config, request, target=target, engine=engine,
                                write=engine.writer.write, should_stop=lambda: not service.serving)
        except RepairRefused as exc:
            raise ServiceStateError(exc.message, exc.hint) from None
        except (BadVerifyRequest, SetupError) as exc:
            # Missing or keyless tables, bad ranges/sample: the request is to change.
            raise InvalidRequestError(exc.message, exc.hint) from None
        finally:
            target.close()
        LAST_RESULTS.record(report, time.time())
        return report
    finally:
        _RUNNING.release()
