"""The gRPC server: health, reflection and the dbmazz.v1 services over an EngineService.

A thread-pool server: every handler only reads snapshots or flips engine flags, so none
blocks the engine; a Metrics stream holds one worker while it runs (hence the pool size).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dbmazz.api import convert
from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api._proto import dbmazz_pb2_grpc as pb_grpc
from dbmazz.api.auth import TokenInterceptor
from dbmazz.engine.core import Engine, RecentBatch
from dbmazz.engine.metrics import MetricsSampler
from dbmazz.engine.service import EngineService, InvalidRequestError, ServiceStateError
from dbmazz.errors import ConfigError, DbmazzError

if TYPE_CHECKING:
    from dbmazz.snapshot.ondemand import OnDemandSnapshot

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
#: Trailing metadata of Health/Check carrying the error while NOT_SERVING (UTF-8).
ERROR_METADATA_KEY = "dbmazz-error-bin"
_DEFAULT_DRAIN_WAIT_S = 0.0
#: How often a waiting Snapshot call checks whether its caller went away.
_SNAPSHOT_POLL_S = 0.5

R = TypeVar("R")


def _guard(context: grpc.ServicerContext, action: Callable[[], R]) -> R:
    """Run a control action; turn dbmazz errors into gRPC status codes with their text."""
    try:
        return action()
    except ServiceStateError as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except InvalidRequestError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except LookupError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
    except DbmazzError as exc:
        context.abort(grpc.StatusCode.INTERNAL, str(exc))
    raise AssertionError("unreachable: context.abort raises")


class HealthService(health.HealthServicer):
    """Standard health, following the service state; Check adds the error text."""

    def __init__(self, service: EngineService) -> None:
        super().__init__()
        self._service = service
        service.add_listener(self.refresh)

    def refresh(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self._service.serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVICE_NAMES):
            self.set(name, status)

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        # Serving also depends on time (loads failing for UNHEALTHY_AFTER_S), which no state
        # change announces: re-evaluate on every check.
        self.refresh()
        response = super().Check(request, context)
        error = self._service.error or self._service.status().error
        if error is not None and response.status != health_pb2.HealthCheckResponse.SERVING:
            context.set_trailing_metadata(((ERROR_METADATA_KEY, error.text.encode()),))
        return response


class StatusService(pb_grpc.StatusServicer):
    def __init__(self, service: EngineService) -> None:
        self._service = service

    def GetStatus(self, request: pb.GetStatusRequest,
                  context: grpc.ServicerContext) -> pb.EngineStatus:
        return convert.status_pb(self._service.status())


class ControlService(pb_grpc.ControlServicer):
    def __init__(self, service: EngineService) -> None:
        self._service = service

    def _reply(self, message: str, completed: bool = False,
               slot_dropped: bool = False) -> pb.ControlReply:
        return pb.ControlReply(status=convert.status_pb(self._service.status()), message=message,
                               completed=completed, slot_dropped=slot_dropped)

    def Pause(self, request: pb.PauseRequest,
              context: grpc.ServicerContext) -> pb.ControlReply:
        _guard(context, self._service.pause)
        return self._reply("paused: reading stopped, status updates continue")

    def Resume(self, request: pb.ResumeRequest,
               context: grpc.ServicerContext) -> pb.ControlReply:
        _guard(context, self._service.resume)
        return self._reply("resumed")

    def Drain(self, request: pb.DrainRequest,
              context: grpc.ServicerContext) -> pb.ControlReply:
        wait = request.wait_timeout_s or _DEFAULT_DRAIN_WAIT_S
        done = _guard(context, lambda: self._service.drain(timeout=wait))
        return self._reply("drained and stopped" if done else "draining", completed=done)

    def Stop(self, request: pb.StopRequest,
             context: grpc.ServicerContext) -> pb.ControlReply:
        outcome = _guard(context, lambda: self._service.stop(
            drop_slot=request.drop_slot, timeout=request.wait_timeout_s))
        return self._reply(outcome.message, completed=outcome.completed,
                           slot_dropped=outcome.slot_dropped)

    def ReloadConfig(self, request: pb.ReloadConfigRequest,
                     context: grpc.ServicerContext) -> pb.ReloadConfigReply:
        changes = {name: int(getattr(request, name))
                   for name in ("flush_rows", "flush_bytes", "flush_interval_ms",
                                "max_inflight_bytes")
                   if request.HasField(name)}
        changed = _guard(context, lambda: self._service.reload(**changes))
        if changed:
            log.info("reloaded settings: %s", ", ".join(f"{n}={changes[n]}" for n in changed))
        settings = self._service.status().settings
        return pb.ReloadConfigReply(settings=pb.FlushSettings(**settings), changed=changed)


    def Snapshot(self, request: pb.SnapshotRequest,
                 context: grpc.ServicerContext) -> pb.SnapshotReply:
        tables = list(request.tables)
        handle = _guard(context, lambda: self._service.request_snapshot(tables))
        log.info("on-demand snapshot of %s requested over gRPC", ", ".join(handle.tables))
        if request.wait:
            _wait_for(handle, request.wait_timeout_s, context)
        return snapshot_reply(handle)


    def Verify(self, request: pb.VerifyRequest,
               context: grpc.ServicerContext) -> pb.VerifyReply:
        from dbmazz.verify.run import VerifyRequest
        from dbmazz.verify.service import verify_in_service

        wanted = VerifyRequest(tables=tuple(request.tables), ranges=request.ranges or 64,
                               sample=request.sample or 1.0, max_keys=request.max_keys or 20,
                               repair=request.repair)
        log.info("verify of %s requested over gRPC%s",
                 ", ".join(wanted.tables) or "every table", " with repair" if wanted.repair
                 else "")
        report = _guard(context, lambda: verify_in_service(self._service, wanted))
        return convert.verify_reply(report)


def _wait_for(handle: OnDemandSnapshot, timeout_s: float,
              context: grpc.ServicerContext) -> None:
    """Wait for the snapshot to end, the timeout, or the caller to hang up (the snapshot
    goes on either way: it belongs to the engine, not to the call)."""
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    while context.is_active():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        step = _SNAPSHOT_POLL_S if left is None else min(_SNAPSHOT_POLL_S, left)
        if handle.wait(step):
            return


def snapshot_reply(handle: OnDemandSnapshot) -> pb.SnapshotReply:
    names = ", ".join(handle.tables)
    error = handle.progress.error or ""
    if handle.error is not None and not error:
        error = str(handle.error)
    if error:
        message = f"snapshot of {names} failed"
    elif handle.completed:
        message = f"snapshot of {names} complete"
    elif handle.running:
        message = f"snapshot of {names} started"
    else:
        message = f"snapshot of {names} stopped before it finished"
    return pb.SnapshotReply(accepted=True, completed=handle.completed, message=message,
                            error=error, tables=handle.tables,
                            progress=convert.snapshot_pb(handle.progress.copy()))


class MetricsService(pb_grpc.MetricsServicer):
    def __init__(self, service: EngineService, closing: threading.Event) -> None:
        self._service = service
        self._closing = closing
        self._wakeups: set[threading.Event] = set()
        self._lock = threading.Lock()

    def wake_all(self) -> None:
        with self._lock:
            for event in self._wakeups:
                event.set()

    def Stream(self, request: pb.MetricsRequest,
               context: grpc.ServicerContext) -> Iterator[pb.MetricsSample]:
        interval = max(0.05, (request.interval_ms or 1000) / 1000)
        sampler = MetricsSampler(self._service.status)
        wake = threading.Event()
        context.add_callback(wake.set)  # cancelled by the client: stop waiting at once
        with self._lock:
            self._wakeups.add(wake)
        try:
            sent = 0
            while context.is_active() and not self._closing.is_set():
                yield convert.sample_pb(sampler.sample())
                sent += 1
                if request.max_samples and sent >= request.max_samples:
                    return
                if wake.wait(interval):
                    return
        finally:
            with self._lock:
                self._wakeups.discard(wake)


class InspectService(pb_grpc.InspectServicer):
    def __init__(self, service: EngineService) -> None:
        self._service = service

    def _engine(self) -> Engine:
        engine = self._service.engine
        if engine is None:
            raise ServiceStateError(
                f"no pipeline yet: the engine is {self._service.state.value} "
                f"(stage {self._service.stage.value})",
                "batches can be inspected once it streams (stage CDC)")
        return engine

    def ListBatches(self, request: pb.ListBatchesRequest,
                    context: grpc.ServicerContext) -> pb.ListBatchesReply:
        engine = _guard(context, self._engine)
        return pb.ListBatchesReply(
            batches=[convert.batch_info(b) for b in latest_batches(engine).values()])

    def PeekBatch(self, request: pb.PeekBatchRequest,
                  context: grpc.ServicerContext) -> pb.PeekBatchReply:
        engine = _guard(context, self._engine)
        name = _guard(context, lambda: resolve_table(engine, request.table))
        recent = latest_batches(engine).get(name)
        if recent is None:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"no batch of {name} decoded yet: write to the table and retry")
        assert recent is not None
        table = recent.batch
        if request.max_rows:
            table = table.slice(0, request.max_rows)
        return pb.PeekBatchReply(info=convert.batch_info(recent),
                                 arrow_ipc_stream=convert.table_to_ipc(table))

    def SchemaOf(self, request: pb.SchemaOfRequest,
                 context: grpc.ServicerContext) -> pb.SchemaOfReply:
        engine = _guard(context, self._engine)
        name = _guard(context, lambda: resolve_table(engine, request.table))
        recent = latest_batches(engine).get(name)
        if recent is not None:
            return pb.SchemaOfReply(table=name, source="in_flight",
                                    arrow_schema_ipc=convert.schema_to_ipc(recent.batch.schema),
                                    key_columns=list(recent.table.key_columns))
        schema = engine.table_schema(name)
        if schema is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"table {name} is not known yet")
        assert schema is not None
        return pb.SchemaOfReply(table=name, source="catalog",
                                arrow_schema_ipc=convert.schema_to_ipc(
                                    schema.arrow_schema(with_audit=False)),
                                key_columns=list(schema.key_columns))


def latest_batches(engine: Engine) -> dict[str, RecentBatch]:
    """The newest decoded batch of every table."""
    latest: dict[str, RecentBatch] = {}
    for recent in engine.batches():
        latest[recent.source_name] = recent
    return latest


def resolve_table(engine: Engine, name: str) -> str:
    """'schema.table' as given, or the one known table called ``name``."""
    known = set(engine.table_schemas()) | set(latest_batches(engine))
    if not name:
        raise LookupError(f"name a table; known: {', '.join(sorted(known)) or 'none yet'}")
    if name in known or "." in name:
        if name not in known:
            raise LookupError(f"unknown table {name}; known: {', '.join(sorted(known)) or 'none'}")
        return name
    matches = sorted(t for t in known if t.split(".", 1)[1] == name)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise LookupError(f"table name {name!r} is ambiguous: {', '.join(matches)}")
    raise LookupError(f"unknown table {name}; known: {', '.join(sorted(known)) or 'none yet'}")


class GrpcServer:
    """The control plane of one EngineService. ``port=0`` picks a free port."""

    def __init__(
        self,
        service: EngineService,
        *,
        host: str = "127.0.0.1",
        port: int = 50051,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        max_workers: int = 16,
    ) -> None:
        self.service = service
        self.host = host
        self._requested_port = port
        self.port = 0
        self._token = token or None
        self._tls = _tls_pair(tls_cert, tls_key)
        self._closing = threading.Event()
        self._server: grpc.Server | None = None
        self._max_workers = max_workers
        self._metrics: MetricsService | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        from concurrent.futures import ThreadPoolExecutor

        interceptors = [TokenInterceptor(self._token)] if self._token else []
        # SO_REUSEPORT (grpc's default on Linux) would let a second engine bind the same
        # port silently; a clear "port in use" error is better.
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="dbmazz-grpc"),
            interceptors=interceptors,
            options=[("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(HealthService(self.service), server)
        pb_grpc.add_StatusServicer_to_server(StatusService(self.service), server)
        pb_grpc.add_ControlServicer_to_server(ControlService(self.service), server)
        self._metrics = MetricsService(self.service, self._closing)
        pb_grpc.add_MetricsServicer_to_server(self._metrics, server)
        pb_grpc.add_InspectServicer_to_server(InspectService(self.service), server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        where = f"{self.host}:{self._requested_port}"
        try:
            if self._tls is not None:
                credentials = grpc.ssl_server_credentials([self._tls])
                self.port = server.add_secure_port(where, credentials)
            else:
                self.port = server.add_insecure_port(where)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise ConfigError([
                f"GRPC_PORT: cannot listen on {where} (in use, or GRPC_HOST is not a local "
                "address); choose another GRPC_PORT, or 0 to run without the control plane"])
        server.start()
        self._server = server
        log.info("gRPC control plane on %s%s%s", self.address,
                 " (TLS)" if self._tls else "", " (token required)" if self._token else "")
        return self.port

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting calls; let in-flight unary calls finish within ``grace``."""
        self._closing.set()
        if self._metrics is not None:
            self._metrics.wake_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> GrpcServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop(grace=0)


def _tls_pair(cert: str | None, key: str | None) -> tuple[bytes, bytes] | None:
    if not cert and not key:
        return None
    if not (cert and key):
        missing = "GRPC_TLS_KEY" if cert else "GRPC_TLS_CERT"
        raise ConfigError([f"{missing}: required with TLS; set both GRPC_TLS_CERT and "
                           "GRPC_TLS_KEY (PEM files), or neither"])
    problems = []
    pair: list[bytes] = []
    for variable, path in (("GRPC_TLS_KEY", key), ("GRPC_TLS_CERT", cert)):
        try:
            pair.append(Path(path).read_bytes())
        except OSError as exc:
            problems.append(f"{variable}: cannot read {path}: {exc.strerror}")
    if problems:
        raise ConfigError(problems)
    return pair[0], pair[1]
