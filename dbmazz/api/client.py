"""Python client of a running engine: the CLI commands and notebooks use it.

    import dbmazz
    engine = dbmazz.connect("localhost:50051")
    engine.status()                 # dbmazz.v1.EngineStatus (.snapshot: snapshot progress)
    engine.snapshot(["public.new_table"], wait=True)  # on-demand snapshot while CDC runs
    engine.peek("public.orders")    # polars.DataFrame of the last decoded batch
    for sample in engine.metrics(interval_ms=500, max_samples=10): ...
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pyarrow as pa

from dbmazz.api import convert
from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api._proto import dbmazz_pb2_grpc as pb_grpc
from dbmazz.errors import DbmazzError
from dbmazz.pipeline.batch import TableSchema

if TYPE_CHECKING:
    import polars as pl

    from dbmazz.config import Config

DEFAULT_ADDRESS = "127.0.0.1:50051"
R = TypeVar("R")


class EngineUnreachable(DbmazzError):
    """No engine answers at the address."""


class EngineRequestError(DbmazzError):
    """The engine answered with an error (the text is the engine's)."""

    def __init__(self, message: str, hint: str | None = None,
                 code: grpc.StatusCode | None = None) -> None:
        self.code = code
        super().__init__(message, hint)


def _port_of(address: str) -> str:
    return address.rsplit(":", 1)[-1] if ":" in address else "50051"


class Client:
    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        ca_cert: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        if ca_cert:
            credentials = grpc.ssl_channel_credentials(Path(ca_cert).read_bytes())
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        # Metadata rather than call credentials: those require TLS, the token does not.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._status = pb_grpc.StatusStub(self._channel)
        self._control = pb_grpc.ControlStub(self._channel)
        self._metrics = pb_grpc.MetricsStub(self._channel)
        self._inspect = pb_grpc.InspectStub(self._channel)

    # ------------------------------------------------------------------ calls
    def _call(self, method: Callable[..., R], request: Any, timeout: float | None = None) -> R:
        try:
            return method(request, timeout=timeout or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: grpc.RpcError) -> DbmazzError:
        code = exc.code() if hasattr(exc, "code") else None
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return EngineUnreachable(
                f"no dbmazz engine at {self.address}: is `dbmazz run` running with "
                f"GRPC_PORT={_port_of(self.address)}?",
                f"({details})" if details else None,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EngineUnreachable(f"the engine at {self.address} did not answer in time")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return EngineRequestError(
                f"the engine at {self.address} refused the call: {details}",
                "pass --token or set GRPC_TOKEN to the engine's token", code=code)
        name = code.name if code is not None else "error"
        return EngineRequestError(f"{details} [{name}]", code=code)

    def status(self) -> pb.EngineStatus:
        return self._call(self._status.GetStatus, pb.GetStatusRequest())

    def status_dict(self) -> dict[str, Any]:
        return convert.message_dict(self.status())

    def health(self, service: str = "") -> tuple[str, str | None]:
        """(SERVING | NOT_SERVING | ..., error text when not serving)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from dbmazz.api.server import ERROR_METADATA_KEY

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        error = None
        for key, value in call.trailing_metadata() or ():
            if key == ERROR_METADATA_KEY:
                error = value.decode() if isinstance(value, bytes) else str(value)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status), error

    def pause(self) -> pb.ControlReply:
        return self._call(self._control.Pause, pb.PauseRequest())

    def resume(self) -> pb.ControlReply:
        return self._call(self._control.Resume, pb.ResumeRequest())

    def drain(self, wait_s: float = 300.0) -> pb.ControlReply:
        """Drain; with ``wait_s`` > 0 return once the engine stopped (or the wait ended)."""
        return self._call(self._control.Drain, pb.DrainRequest(wait_timeout_s=wait_s),
                          timeout=wait_s + self.timeout_s)

    def stop(self, drop_slot: bool = False, wait_s: float = 60.0) -> pb.ControlReply:
        return self._call(self._control.Stop,
                          pb.StopRequest(drop_slot=drop_slot, wait_timeout_s=wait_s),
                          timeout=wait_s + self.timeout_s)

    def reload_config(self, **settings: int) -> pb.ReloadConfigReply:
        """Change flush_rows / flush_bytes / flush_interval_ms / max_inflight_bytes."""
        return self._call(self._control.ReloadConfig, pb.ReloadConfigRequest(**settings))

    def snapshot(self, tables: list[str], wait: bool = False,
                 wait_s: float = 0.0) -> pb.SnapshotReply:
        """On-demand snapshot of ``tables`` while CDC keeps running; they stay replicated.

        Returns once it started (``accepted``), or with ``wait`` once it finished
        (``completed``, or ``error``) or ``wait_s`` > 0 passed. Refusals raise
        :class:`EngineRequestError` (``code`` INVALID_ARGUMENT for a missing table,
        FAILED_PRECONDITION when the engine cannot take one now). Progress: ``status().snapshot``.
        """
        request = pb.SnapshotRequest(tables=tables, wait=wait, wait_timeout_s=wait_s)
        # Waiting has no deadline of its own unless wait_s is given: a snapshot takes hours.
        timeout = (wait_s + self.timeout_s if wait_s else None) if wait else self.timeout_s
        try:
            return self._control.Snapshot(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None

    def verify(self, tables: list[str] | None = None, *, ranges: int = 64, sample: float = 1.0,
               max_keys: int = 20, repair: bool = False,
               timeout_s: float | None = None) -> dict[str, Any]:
        """Compare the target with the source (``dbmazz verify`` run by the engine) and
        return the report as a dict: ``equal``, per table ``missing``/``extra``/``changed``
        counts and ``diffs`` (key, columns). ``repair``: re-copy what differs. Waits until
        done (``timeout_s``: give up waiting; default none — large tables take long)."""
        import json

        request = pb.VerifyRequest(tables=tables or [], ranges=ranges, sample=sample,
                                   max_keys=max_keys, repair=repair)
        try:
            reply = self._control.Verify(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        report: dict[str, Any] = json.loads(reply.report_json)
        return report

    def metrics(self, interval_ms: int = 1000,
                max_samples: int = 0) -> Generator[pb.MetricsSample, None, None]:
        """Samples every ``interval_ms`` (the first at once), until cancelled or
        ``max_samples``. Closing the iterator cancels the stream."""
        try:
            stream = self._metrics.Stream(
                pb.MetricsRequest(interval_ms=interval_ms, max_samples=max_samples),
                metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._translate(exc) from None
        try:
            yield from stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise self._translate(exc) from None
        finally:
            stream.cancel()

    def list_batches(self) -> list[pb.BatchInfo]:
        return list(self._call(self._inspect.ListBatches, pb.ListBatchesRequest()).batches)

    def peek_arrow(self, table: str, max_rows: int = 0) -> pa.Table:
        """The last decoded (pre-merge) batch of ``table`` as Arrow (DESIGN.md §3)."""
        reply = self._call(self._inspect.PeekBatch,
                           pb.PeekBatchRequest(table=table, max_rows=max_rows))
        return convert.ipc_to_table(reply.arrow_ipc_stream)

    def peek(self, table: str, max_rows: int = 0) -> pl.DataFrame:
        import polars as pl

        frame = pl.from_arrow(self.peek_arrow(table, max_rows))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def schema_of(self, table: str) -> pa.Schema:
        reply = self._call(self._inspect.SchemaOf, pb.SchemaOfRequest(table=table))
        return convert.ipc_to_schema(reply.arrow_schema_ipc)

    def table_schema(self, table: str) -> TableSchema:
        """The table as the pipeline sees it (columns, key): enough to run
        :func:`dbmazz.pipeline.merge.merge_changes` on a peeked batch."""
        reply = self._call(self._inspect.SchemaOf, pb.SchemaOfRequest(table=table))
        return convert.table_schema_from(reply.table, convert.ipc_to_schema(
            reply.arrow_schema_ipc), list(reply.key_columns))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<dbmazz.Client {self.address}>"


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    ca_cert: str | None = None,
    timeout_s: float = 10.0,
) -> Client:
    """A client of the engine at ``address``; by default where ``dbmazz run`` with the same
    settings serves: ``GRPC_HOST:GRPC_PORT`` (token ``GRPC_TOKEN``), from the environment
    and ``.env`` (:class:`dbmazz.config.ControlPlaneSettings`)."""
    from dbmazz.config import ControlPlaneSettings

    settings = ControlPlaneSettings.load() if address is None or token is None else None
    if address is None:
        assert settings is not None
        address = settings.address
    if token is None:
        assert settings is not None
        token = settings.token
    return Client(address, token=token, ca_cert=ca_cert, timeout_s=timeout_s)


# --- the engine of a configuration (dbmazz snapshot / verify ask it first) ------------------
def engine_address(config: Config, override: str | None = None) -> str:
    """Where a local client reaches the engine CONFIG describes (GRPC_HOST/GRPC_PORT), or
    ``override`` (a command's ``--address``)."""
    from dbmazz.config import reachable_address

    return override or reachable_address(config.grpc_host, config.grpc_port)


def running_engine(config: Config, address: str | None = None) -> Client | None:
    """A client of the engine that streams SLOT_NAME, if its control plane answers (at
    ``address`` when given, else where CONFIG's engine serves)."""
    if not config.grpc_port and address is None:
        return None
    token = config.grpc_token.get_secret_value() if config.grpc_token else None
    client = Client(engine_address(config, address), token=token,
                    ca_cert=config.grpc_tls_cert, timeout_s=5.0)
    try:
        client.health()  # open to everyone: tells "nobody there" from "wrong token"
        status = client.status()
    except EngineUnreachable:
        client.close()
        return None
    except BaseException:
        client.close()
        raise
    if status.slot != config.slot_name:  # another pipeline's engine: not ours to ask
        client.close()
        return None
    return client
