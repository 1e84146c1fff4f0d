"""The lifecycle service: setup + engine behind one state machine the control plane drives.

Stages INIT → SETUP → SNAPSHOT → CDC; states STARTING / RUNNING / PAUSED / DRAINING /
STOPPED / FAILED. A setup or fatal error does not end the process: the service records it
(FAILED, health NOT_SERVING, the error in Status) and waits for an operator to stop it, so
the cause stays visible where the operator looks (invariant 6).

Everything runs on a ``dbmazz-service`` thread; the caller's thread (``dbmazz run``'s main
thread, a notebook, a test) only waits, and the gRPC/Prometheus servers read snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbmazz._version import __version__
from dbmazz.config import Config
from dbmazz.engine.core import LIVE_SETTINGS, Engine, RunState, Stage
from dbmazz.engine.metrics import ErrorSnapshot, StatusSnapshot, TableSnapshot
from dbmazz.errors import DbmazzError, SetupError
from dbmazz.signals import wait_for
from dbmazz.sink.base import Interruptible, Sink
from dbmazz.sink.load_health import LoadFailure, LoadHealth
from dbmazz.snapshot.sink import SnapshotAwareSink
from dbmazz.source.publication import PUBLISHED_AGAIN

if TYPE_CHECKING:
    from dbmazz.engine.slot_health import SlotMonitor
    from dbmazz.snapshot.ondemand import OnDemandSnapshot

log = logging.getLogger(__name__)

#: Runs the initial snapshot between setup and CDC (the snapshot issue plugs in here).
SnapshotHook = Callable[["EngineService", Engine], None]
Listener = Callable[[], None]

_SERVING = (RunState.RUNNING, RunState.PAUSED, RunState.DRAINING)


class ServiceStateError(DbmazzError):
    """A control request that the current state does not allow (e.g. pause while failed)."""


class InvalidRequestError(DbmazzError):
    """A control request whose arguments are wrong (e.g. a table that does not exist)."""


@dataclass(frozen=True)
class StopOutcome:
    completed: bool  # the engine has stopped
    slot_dropped: bool = False
    message: str = ""


def error_snapshot(exc: BaseException, fatal: bool = True) -> ErrorSnapshot:
    """An actionable description of ``exc``; unexpected exceptions are flagged as bugs."""
    if isinstance(exc, DbmazzError):
        return ErrorSnapshot(message=exc.message, hint=exc.hint or "", kind=type(exc).__name__,
                             fatal=fatal)
    return ErrorSnapshot(
        message=f"unexpected {type(exc).__name__}: {exc}",
        hint="this is a dbmazz bug: report it with the log (the traceback is logged); "
             "restarting resumes from the last checkpoint",
        kind=type(exc).__name__,
        fatal=fatal,
    )


class EngineService:
    #: How long Pause waits for the reader to stop (it may be reconnecting meanwhile).
    pause_ack_timeout_s = 10.0
    #: How often a failed service kept up by ``ON_ERROR=serve`` repeats that it failed.
    serve_notice_interval_s = 60.0
    #: How often the replication slot's health is sampled.
    slot_sample_interval_s = 10.0

    def __init__(
        self,
        config: Config | None = None,
        *,
        builder: Callable[[], Engine] | None = None,
        sink: Sink | None = None,
        snapshot: SnapshotHook | None = None,
    ) -> None:
        """``builder`` makes the engine (default: live setup from ``config``); a builder
        that returns an already started engine is adopted as is (notebooks, tests)."""
        if builder is None:
            if config is None:
                raise ValueError("EngineService needs a config or a builder")
            live_config = config

            def builder() -> Engine:
                from dbmazz.engine.build import build_live_engine

                return build_live_engine(live_config, sink=sink, stop=self._exit_requested)

        self.config = config
        self._builder = builder
        self._snapshot = snapshot
        # Stage and state are the engine's (Engine.progress); before it exists the service
        # only knows whether setup has begun.
        self._setting_up = False
        self._error: ErrorSnapshot | None = None
        self._exception: BaseException | None = None
        self._engine: Engine | None = None
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._started_at = time.time()
        #: The service thread is over: engine stopped, failed, or setup failed.
        self._ended = threading.Event()
        #: Someone asked the process to end (drain, stop, a signal).
        self._exit_requested = threading.Event()
        self._drain_requested = False
        self._slot_dropped = False
        self._slot_monitor: SlotMonitor | None = None
        #: On-demand snapshots that add tables dropped from the publication back.
        self._readding: dict[str, OnDemandSnapshot] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run setup, snapshot and CDC on a background thread (returns at once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="dbmazz-service", daemon=True)
        self._thread.start()

    def _start_slot_monitor(self) -> None:
        config = self.config
        if config is None or config.source_url is None or self._slot_monitor is not None:
            return
        from dbmazz.engine.slot_health import SlotMonitor
        from dbmazz.source.catalog import split_table_name

        self._slot_monitor = SlotMonitor(
            config.source_dsn, config.slot_name, config.slot_wal_warn_bytes,
            interval_s=self.slot_sample_interval_s, publication=config.publication_name,
            tables=[split_table_name(t) for t in config.tables],
            on_unpublished=self._reload_unpublished, on_widened=self._reload_widened)
        self._slot_monitor.start()

    def _run(self) -> None:
        try:
            self._setting_up = True
            self._notify()
            engine = self._builder()
            with self._lock:
                self._engine = engine
                stop_early = self._exit_requested.is_set()
            if stop_early:
                # Drain/stop arrived during setup: nothing was read, nothing to load.
                if engine.progress.state != RunState.STARTING:
                    engine.stop()
                    engine.wait()
                return
            if self._snapshot is not None:
                engine.enter(Stage.SNAPSHOT)
                self._notify()
                self._snapshot(self, engine)
            self._start_slot_monitor()  # the slot exists once setup is done
            if not engine.started:
                engine.start()
            self._notify()
            engine.wait()
        except BaseException as exc:  # noqa: BLE001 - reported through status and health
            self._fail(exc)
        finally:
            if self._slot_monitor is not None:
                self._slot_monitor.stop()
            self._ended.set()
            self._notify()

    def _fail(self, exc: BaseException) -> None:
        error = error_snapshot(exc)
        with self._lock:
            self._error = error
            self._exception = exc
        if self.stage != Stage.CDC:
            # The engine logs its own fatal errors; setup/snapshot errors are ours to log.
            log.error("%s failed: %s", self.stage.value.lower(), error.text,
                      exc_info=not isinstance(exc, DbmazzError))
        self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the engine stopped, failed, or setup failed (True) or timeout."""
        return self._ended.wait(timeout)

    def wait_for_exit(self, stay_up_on_failure: bool) -> int:
        """What ``dbmazz run`` blocks on: 0 after a drain/stop, 1 after a failure.

        With ``stay_up_on_failure`` (``ON_ERROR=serve`` with gRPC on) a failed service keeps
        waiting for drain/stop, so the gRPC server can report the error meanwhile; it says
        so in the log every :attr:`serve_notice_interval_s`, so a process kept up on
        purpose never reads as hung.
        """
        # Short waits keep the main thread responsive to signals on every platform, and
        # wait_for never holds an event's lock: `dbmazz run`'s signal handler (drain) sets
        # _exit_requested from this very thread.
        while not wait_for(self._ended, 0.5):
            pass
        if self.failed and stay_up_on_failure:
            next_notice = time.monotonic()
            while not wait_for(self._exit_requested, 0.5):
                if time.monotonic() >= next_notice:
                    self._log_serving_failed()
                    next_notice = time.monotonic() + self.serve_notice_interval_s
        return 1 if self.failed else 0

    def _log_serving_failed(self) -> None:
        error = self._error
        log.error("dbmazz failed and is NOT serving (health NOT_SERVING): %s. The control "
                  "plane stays up because ON_ERROR=serve; stop with `dbmazz stop` or SIGTERM "
                  "(ON_ERROR=exit ends the process on a fatal error instead)",
                  error.text if error else "unknown error")

    # ------------------------------------------------------------------ control
    def pause(self) -> None:
        engine = self._require_engine("pause")
        state = self.state
        if state not in (RunState.RUNNING, RunState.PAUSED):
            raise ServiceStateError(f"cannot pause: the engine is {state.value}",
                                    "pause applies to a running engine")
        engine.pause()
        # Return once reading really stopped, so "paused" means nothing more is read.
        engine.wait_paused(self.pause_ack_timeout_s)
        self._notify()

    def resume(self) -> None:
        engine = self._require_engine("resume")
        state = self.state
        if state not in (RunState.RUNNING, RunState.PAUSED):
            raise ServiceStateError(f"cannot resume: the engine is {state.value}",
                                    "resume applies to a paused engine")
        engine.resume()
        self._notify()

    def drain(self, timeout: float | None = 0) -> bool:
        """Load everything in flight, checkpoint and stop; with a timeout, wait for it.

        Returns whether the engine has stopped. Safe from a signal handler (timeout 0).
        """
        with self._lock:
            self._exit_requested.set()
            self._drain_requested = True
            engine = self._engine
        if engine is not None and not self._ended.is_set():
            failure = self._load_failure()
            if failure is not None:
                # A drain would wait for loads that keep failing: stop instead. Nothing
                # unloaded was confirmed; the next start reads it again from the slot.
                log.warning("not draining: %s; stopping instead (what is not loaded is read "
                            "again from the slot on the next start)", failure.text)
                self._interrupt(engine)
            else:
                engine.drain()
        self._notify()
        if timeout:
            self._ended.wait(timeout)
        return self._ended.is_set()

    def stop(self, *, drop_slot: bool = False, timeout: float | None = 0) -> StopOutcome:
        """Stop without loading what is queued. The slot is dropped only with ``drop_slot``,
        and only after the engine stopped (so no session is still streaming from it)."""
        with self._lock:
            self._exit_requested.set()
            engine = self._engine
        if engine is not None:
            self._interrupt(engine)
        if drop_slot and not timeout:
            timeout = 60.0
        if timeout:
            self._ended.wait(timeout)
        if not self._ended.is_set():
            if drop_slot:
                return StopOutcome(False, False, "the engine did not stop in time; the slot "
                                   "was not dropped: retry `dbmazz stop --drop-slot`")
            return StopOutcome(False, False, "stopping")
        dropped = self._drop_slot() if drop_slot else False
        self._notify()
        return StopOutcome(True, dropped, "stopped" + ("; slot dropped" if dropped else ""))

    @staticmethod
    def _interrupt(engine: Engine) -> None:
        """Stop the engine and wake the sink's retry back-offs, so a stop while loads fail
        takes seconds, not the rest of a retry schedule."""
        engine.stop()
        if isinstance(engine.sink, Interruptible):  # the target itself (engine.sink)
            engine.sink.cancel()

    def reload(self, **settings: int) -> list[str]:
        """Apply flush settings to the running pipeline; return the names that changed."""
        unknown = sorted(set(settings) - set(LIVE_SETTINGS))
        if unknown:
            raise ServiceStateError(f"cannot change {', '.join(unknown)} while running",
                                    f"only {', '.join(LIVE_SETTINGS)} can be reloaded")
        engine = self._require_engine("reload settings")
        try:
            return engine.apply_settings(**settings)
        except ValueError as exc:
            raise ServiceStateError(str(exc), "flush settings must be positive") from None

    def request_snapshot(self, tables: list[str]) -> OnDemandSnapshot:
        """Start an on-demand snapshot of ``tables`` (Engine.request_snapshot) once they are
        known to exist with a key, so a wrong name is refused here, at once, instead of
        failing later on the snapshot's thread where only Status would tell."""
        from dbmazz.source.catalog import split_table_name

        if not tables or any(not t.strip() for t in tables):
            raise InvalidRequestError("name the tables to snapshot, e.g. public.orders",
                                      "'table' means public.table")
        names = list(dict.fromkeys(".".join(split_table_name(t)) for t in tables))
        engine = self._require_engine("take a snapshot")
        if engine.snapshots is None:
            raise ServiceStateError("on-demand snapshots need a live PostgreSQL source; this "
                                    "engine replays a capture file",
                                    "run the engine with `dbmazz run`")
        if self.exit_requested:
            raise ServiceStateError("cannot take a snapshot: the engine is stopping",
                                    "start it again with `dbmazz run`, then retry")
        if self.stage != Stage.CDC:
            raise ServiceStateError(
                f"cannot take a snapshot yet: the engine is in stage {self.stage.value}",
                "retry once it streams (stage CDC), e.g. after the initial snapshot")
        self._check_tables(engine, names)
        try:
            return engine.request_snapshot(names)
        except SetupError as exc:  # a snapshot of one of the tables is already running
            raise ServiceStateError(exc.message, exc.hint) from None

    def _reload_unpublished(self, tables: list[str]) -> bool:
        """Configured tables dropped from the publication by hand while streaming: their
        changes are passed over from then on. Under SNAPSHOT=initial an on-demand snapshot
        adds them back and loads their rows again, as a restart would (once streaming runs:
        False until then); otherwise the slot health warning stands until they are
        published again."""
        config = self.config
        if config is None or config.snapshot != "initial":
            return True
        if self.stage != Stage.CDC:
            return False
        log.warning("publication %r no longer publishes %s: adding them back and loading "
                    "their rows again with an on-demand snapshot", config.publication_name,
                    ", ".join(tables))
        try:
            handle = self.request_snapshot(tables)
        except DbmazzError as exc:
            log.warning("could not load %s again: %s (restart dbmazz to do it)",
                        ", ".join(tables), exc.message)
            return True
        # It publishes them again: the next sample finds them back (publication.widenings).
        self._readding.update(dict.fromkeys(tables, handle))
        return True

    def _reload_widened(self, tables: dict[str, str]) -> bool:
        """The publication now sends rows or values of configured tables that it left out
        (slot_health, publication.widenings): the stream sends them only when they change.
        Under SNAPSHOT=initial an on-demand snapshot loads the tables again once streaming
        runs (False until then, or while one of them is being loaded); otherwise a warning
        names the command that does."""
        config = self.config
        if config is None:
            return True
        pending = [t for t, change in tables.items()
                   if change == PUBLISHED_AGAIN and self._readding.get(t) is not None
                   and self._readding[t].running]
        if pending:
            return False  # the snapshot re-adding them runs: whether it loads them is open
        tables = {t: change for t, change in tables.items()
                  if not (change == PUBLISHED_AGAIN and self._readd_loaded(t))}
        if not tables:
            return True
        how = "; ".join(f"{table}: {change}" for table, change in tables.items())
        if config.snapshot != "initial":
            log.warning("publication %r widened while streaming (%s): the rows and values it "
                        "now sends are in the target only once they change; load them with "
                        "`dbmazz snapshot --table %s`", config.publication_name, how,
                        " --table ".join(tables))
            return True
        if self.stage != Stage.CDC:
            return False
        try:
            self.request_snapshot(list(tables))
        except ServiceStateError:
            return False  # e.g. a snapshot of one of them runs: the next sample asks again
        except DbmazzError as exc:
            log.warning("publication %r widened while streaming (%s); could not load the "
                        "tables again: %s (run `dbmazz snapshot --table %s`)",
                        config.publication_name, how, exc.message, " --table ".join(tables))
            return True
        log.warning("publication %r widened while streaming (%s): loading the tables again "
                    "with an on-demand snapshot", config.publication_name, how)
        return True

    def _readd_loaded(self, table: str) -> bool:
        """Whether the snapshot that re-added ``table`` to the publication loaded it (not:
        it failed, e.g. under publish_via_partition_root = false, or there was none)."""
        handle = self._readding.pop(table, None)
        return handle is not None and handle.completed and handle.error is None

    @staticmethod
    def _check_tables(engine: Engine, names: list[str]) -> None:
        from dbmazz.source.setup import primary_keys

        assert engine.snapshots is not None
        with engine.snapshots.context.connect() as conn:
            try:
                primary_keys(conn, names, strict=True)  # names every missing/keyless table
            except SetupError as exc:
                raise InvalidRequestError(exc.message, exc.hint) from None

    def _require_engine(self, action: str) -> Engine:
        engine = self._engine
        if engine is None or self._ended.is_set():
            state, stage = self.state, self.stage
            raise ServiceStateError(
                f"cannot {action}: the engine is {state.value} (stage {stage.value})",
                "wait until it streams (stage CDC)" if state == RunState.STARTING
                else "start it again with `dbmazz run`",
            )
        return engine

    def _drop_slot(self) -> bool:
        config = self.config
        if config is None or config.source_url is None:
            raise ServiceStateError("cannot drop the slot: this engine has no PostgreSQL source")
        from dbmazz.source.slots import drop_slot

        dropped = drop_slot(config.source_dsn, config.slot_name, wait_s=30.0)
        from dbmazz.source.database import SourceDatabase
        from dbmazz.state.checkpoint import forget_checkpoint

        forget_checkpoint(SourceDatabase(config.primary_dsn), config.slot_name)
        if dropped:
            log.warning("dropped replication slot %s on request", config.slot_name)
        self._slot_dropped = self._slot_dropped or dropped
        return dropped

    # ------------------------------------------------------------------ observation
    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def failed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> ErrorSnapshot | None:
        return self._error

    @property
    def exception(self) -> BaseException | None:
        """The exception behind :attr:`error` (for ``dbmazz run`` without gRPC)."""
        return self._exception

    @property
    def stage(self) -> Stage:
        engine = self._engine
        if engine is not None and engine.progress.stage != Stage.INIT:
            return engine.progress.stage
        return Stage.SETUP if self._setting_up else Stage.INIT

    @property
    def state(self) -> RunState:
        if self._error is not None:
            return RunState.FAILED
        engine = self._engine
        if engine is not None and engine.progress.state != RunState.STARTING:
            return engine.progress.state
        return RunState.STOPPED if self._ended.is_set() else RunState.STARTING

    @property
    def serving(self) -> bool:
        """Health SERVING: running, and loads not failing for UNHEALTHY_AFTER_S or longer."""
        if self.state not in _SERVING:
            return False
        failure = self._load_failure()
        return failure is None or failure.failing_for() < self._unhealthy_after_s

    @property
    def _unhealthy_after_s(self) -> float:
        return self.config.unhealthy_after_s if self.config is not None else 120.0

    def _load_health(self) -> LoadHealth | None:
        engine = self._engine
        # Every load (CDC and snapshot) passes the engine's locked writer, which observes
        # their outcomes; a replay engine writes to its target directly (no health).
        if engine is not None and isinstance(engine.writer, SnapshotAwareSink):
            return engine.writer.health
        return None

    def _load_failure(self) -> LoadFailure | None:
        health = self._load_health()
        return health.current() if health is not None else None

    @property
    def exit_requested(self) -> bool:
        return self._exit_requested.is_set()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener()`` after every state change (health status follows it)."""
        self._listeners.append(listener)
        listener()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a broken observer must not break the lifecycle
                log.exception("state listener failed")

    def status(self) -> StatusSnapshot:
        engine = self._engine
        config = self.config
        error = self._error
        failure = self._load_failure()
        if error is None and failure is not None:
            # Loads retrying right now: the operator sees it while it happens.
            error = ErrorSnapshot(
                message=failure.text, kind="retrying", fatal=False, at=failure.since,
                hint=("health is NOT_SERVING (failing for UNHEALTHY_AFTER_S); " if not
                      self.serving and self.state in _SERVING else "")
                + "check that the target is reachable on both ports and accepts loads")
        if error is None and engine is not None and engine.progress.last_error:
            # A retried problem (e.g. a dropped connection): show it, not fatal.
            error = ErrorSnapshot(message=engine.progress.last_error, kind="retrying",
                                  fatal=False, at=0.0)
        if engine is not None:
            progress = engine.progress
            settings = {name: int(getattr(engine.settings, name)) for name in LIVE_SETTINGS}
            return StatusSnapshot(
                stage=self.stage,
                state=self.state,
                serving=self.serving,
                received_lsn=progress.received_lsn,
                confirmed_lsn=engine.durable_lsn,
                server_wal_end=engine.server_wal_end,
                replication_lag_ms=engine.replication_lag_ms,
                inflight_bytes=progress.inflight_bytes,
                messages=progress.messages,
                bytes_received=progress.bytes_received,
                flushes=progress.flushes,
                rows_applied=progress.rows_applied,
                tables=self._tables(engine),
                error=error,
                settings=settings,
                slot=config.slot_name if config else "",
                slot_failover=engine.slot_failover,
                slot_synced=engine.slot_synced,
                publication=config.publication_name if config else "",
                sink=engine.sink.name,
                version=__version__,
                started_at=self._started_at,
                snapshot=engine.snapshot_progress,
                load_failing_s=failure.failing_for() if failure is not None else 0.0,
                slot_health=self._slot_monitor.latest if self._slot_monitor else None,
                source=engine.source_channel,
            )
        settings = ({name: int(getattr(config, name)) for name in LIVE_SETTINGS}
                    if config else {})
        return StatusSnapshot(
            stage=self.stage,
            state=self.state,
            serving=self.serving,
            tables=tuple(TableSnapshot(t) for t in self._configured_tables()),
            error=error,
            settings=settings,
            slot=config.slot_name if config else "",
            publication=config.publication_name if config else "",
            sink=str(config.sink or "") if config else "",
            version=__version__,
            started_at=self._started_at,
        )

    def _configured_tables(self) -> list[str]:
        if self.config is None:
            return []
        return [t if "." in t else f"public.{t}" for t in self.config.tables]

    def _tables(self, engine: Engine) -> tuple[TableSnapshot, ...]:
        stats = engine.applier.stats
        with stats.lock:
            counters = dict(stats.tables)
        schemas = engine.table_schemas()
        health = self._load_health()
        snapshotted = health.snapshot_tables() if health is not None else []
        names = list(dict.fromkeys([*self._configured_tables(), *schemas, *counters,
                                    *snapshotted]))
        out = []
        for name in sorted(names):
            table = counters.get(name)
            schema = schemas.get(name)
            batch = engine.in_flight_batch(name)
            out.append(TableSnapshot(
                table=name,
                target=schema.target_name if schema is not None else "",
                changes=table.changes if table else 0,
                # CDC rows plus the rows snapshots loaded (initial and on demand).
                rows_loaded=(table.rows_loaded if table else 0)
                + (health.snapshot_rows(name) if health is not None else 0),
                batches=table.batches if table else 0,
                truncates=table.truncates if table else 0,
                # Every failed load attempt (CDC and snapshot), as the loads see them.
                retries=max(table.retries if table else 0,
                            health.failed_attempts(name) if health is not None else 0),
                last_load_ms=table.last_load_ms if table else 0.0,
                in_flight_rows=batch.num_rows if batch is not None else 0,
                rejected_rows=health.rejected_rows(name) if health is not None else 0,
            ))
        return tuple(out)

