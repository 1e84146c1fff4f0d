"""``dbmazz snapshot``: snapshot tables into the target, with progress bars.

* The slot does not exist yet, or its initial snapshot was interrupted (and no ``--table``
  is given): take / finish the initial snapshot of TABLES (like ``run`` with
  ``SNAPSHOT=initial_only``) and leave the slot for ``dbmazz run``.
* Otherwise: an on-demand snapshot of the ``--table`` tables (default: TABLES) under a
  temporary slot. They join the publication and are replicated by every later ``run``.

A running engine holds the slot and takes on-demand snapshots itself
(``Engine.request_snapshot``): when its control plane answers at GRPC_HOST:GRPC_PORT (and
replicates SLOT_NAME), the command sends it the Snapshot RPC and draws the progress it
reports in Status. Without a reachable engine it refuses to race one that holds the slot.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from dbmazz.api.client import engine_address, running_engine
from dbmazz.cli import load_config
from dbmazz.config import Config
from dbmazz.errors import DbmazzError, SetupError
from dbmazz.log import configure_logging
from dbmazz.source.catalog import split_table_name

if TYPE_CHECKING:
    from dbmazz.api._proto import dbmazz_pb2 as pb
    from dbmazz.api.client import Client


def _qualified(name: str) -> str:
    schema, table = split_table_name(name)
    return f"{schema}.{table}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    from dbmazz.snapshot.progress import INITIAL, SnapshotProgressStore
    from dbmazz.source.database import SourceDatabase
    from dbmazz.source.slots import slot_info

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    dsn = config.source_dsn
    wanted = [_qualified(t) for t in args.table]
    client = running_engine(config, args.address)
    if client is not None:
        with client:
            return _through_engine(client, wanted or [_qualified(t) for t in config.tables])
    info = slot_info(dsn, config.slot_name)
    if info.exists and info.active:
        raise SetupError(
            f"replication slot {config.slot_name!r} is in use (pid {info.active_pid}): dbmazz "
            f"is running, but no control plane of it answers at "
            f"{engine_address(config, args.address)}",
            "point GRPC_HOST/GRPC_PORT (and GRPC_TOKEN) at the running engine so this command "
            "asks it to take the snapshot; or stop it and run this command again",
        )
    store = SnapshotProgressStore(SourceDatabase(dsn), config.slot_name)
    try:
        unfinished = any(not r.done for r in store.load(INITIAL)) if info.exists else False
    finally:
        store.close()
    if not info.exists or (unfinished and not wanted):
        tables = list(dict.fromkeys([*config.tables, *wanted]))
        return _initial(config.model_copy(update={"snapshot": "initial_only",
                                                  "tables": tables}))
    return _on_demand(config, wanted or [_qualified(t) for t in config.tables])


# --- through a running engine (api.client.running_engine finds it) ---------------------------
def _through_engine(client: Client, tables: list[str], console: Console | None = None) -> int:
    """Ask the running engine for the snapshot (Snapshot RPC, waiting on a thread) and draw
    the progress its Status reports until the call returns."""
    from dbmazz.api.client import EngineRequestError

    before = client.status().snapshot
    outcome: list[pb.SnapshotReply | BaseException] = []

    def call() -> None:
        try:
            outcome.append(client.snapshot(tables, wait=True))
        except BaseException as exc:  # noqa: BLE001 - the main thread raises it
            outcome.append(exc)

    waiter = threading.Thread(target=call, name="dbmazz-snapshot-rpc", daemon=True)
    waiter.start()

    def finished() -> bool:
        waiter.join(0.2)
        return not waiter.is_alive()

    def read() -> RemoteProgress | None:
        current = client.status().snapshot
        return RemoteProgress.of(current) if _is_this(current, before, tables) else None

    print(f"asking the engine at {client.address} to snapshot {', '.join(tables)}",
          file=sys.stderr)
    try:
        show_progress(read, finished, console)
    except KeyboardInterrupt:
        print("the snapshot goes on in the engine; follow it with `dbmazz status`",
              file=sys.stderr)
        raise
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    if result.error:
        raise EngineRequestError(f"snapshot of {', '.join(result.tables)} failed: "
                                 f"{result.error}", "the engine's log has the details")
    if not result.completed:
        raise EngineRequestError(f"{result.message} (the engine is stopping)",
                                 "run the command again once the engine runs")
    print(f"snapshot of {', '.join(result.tables)} complete: "
          f"{result.progress.rows_copied:,} row(s); replicated from now on", file=sys.stderr)
    return 0


def _is_this(progress: pb.SnapshotProgress, before: pb.SnapshotProgress,
             tables: list[str]) -> bool:
    """Status shows the engine's latest snapshot: until ours has planned its chunks, that
    is an earlier one (told apart by its snapshot point)."""
    if progress.kind != "on_demand" or {t.table for t in progress.tables} != set(tables):
        return False
    return before.kind != "on_demand" or progress.version.value != before.version.value


# --- standalone -----------------------------------------------------------------------------
def _initial(config: Config) -> int:
    from dbmazz.engine.build import build_live_engine

    engine = build_live_engine(config)
    engine.start()
    try:
        show_progress(lambda: engine.snapshot_progress, lambda: engine.wait(0.2))
    except KeyboardInterrupt:
        engine.stop()
        engine.wait(60)
        raise
    finally:
        engine.sink.close()
    print(f"initial snapshot complete; slot {config.slot_name} is ready for `dbmazz run`",
          file=sys.stderr)
    return 0


def _on_demand(config: Config, tables: list[str]) -> int:
    from dbmazz.engine.build import build_standalone_snapshots

    snapshots = build_standalone_snapshots(config, tables)
    context = snapshots.context
    stop = threading.Event()
    handle = snapshots.request(tables, None, stop.is_set)
    try:
        show_progress(lambda: handle.progress.copy(), lambda: handle.wait(0.2))
    except KeyboardInterrupt:
        stop.set()
        handle.wait(60)
        raise
    finally:
        context.sink.close()
        context.store.close()
    if handle.error is not None:
        if isinstance(handle.error, DbmazzError):
            raise handle.error
        raise RuntimeError(f"snapshot failed: {handle.error!r}")
    print(f"snapshot of {', '.join(tables)} complete; they are replicated by `dbmazz run` "
          "from now on", file=sys.stderr)
    return 0


# --- progress bars --------------------------------------------------------------------------
class TableView(Protocol):
    """What a bar shows of a table: an engine's TableProgress, or one read from Status."""

    @property
    def rows_done(self) -> int: ...
    @property
    def rows_expected(self) -> int: ...
    @property
    def rows_per_s(self) -> float: ...
    @property
    def eta_s(self) -> float | None: ...
    @property
    def done(self) -> bool: ...


class ProgressView(Protocol):
    @property
    def tables(self) -> Mapping[str, TableView]: ...


@dataclass(frozen=True)
class RemoteTable:
    rows_done: int
    rows_expected: int
    rows_per_s: float
    eta_s: float | None
    done: bool


@dataclass(frozen=True)
class RemoteProgress:
    """A snapshot's progress as the Status RPC reports it."""

    tables: dict[str, RemoteTable]

    @classmethod
    def of(cls, progress: pb.SnapshotProgress) -> RemoteProgress:
        return cls({t.table: RemoteTable(t.rows_done, t.rows_expected, t.rows_per_s,
                                         t.eta_s if t.HasField("eta_s") else None, t.done)
                    for t in progress.tables})


def _rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f}M rows/s"
    if rows_per_s >= 1e3:
        return f"{rows_per_s / 1e3:.1f}k rows/s"
    return f"{rows_per_s:.0f} rows/s"


def _eta(table: TableView) -> str:
    from dbmazz.ui.format import human_eta

    return "done" if table.done else human_eta(table.eta_s)


def show_progress(read: Callable[[], ProgressView | None],
                  finished: Callable[[], bool], console: Console | None = None) -> None:
    """One bar per table (rows, rows/s, ETA) until ``finished()`` returns True.

    ``finished`` is expected to block briefly (it paces the refresh). Without a terminal
    nothing is drawn: the snapshot logs its progress instead.
    """
    console = console or Console(stderr=True)
    if not console.is_terminal:
        while not finished():
            pass
        return
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[rows]}"), TextColumn("{task.fields[rate]}"),
               TextColumn("{task.fields[eta]}"))
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as bars:
        while True:
            done = finished()
            progress = read()
            for name, table in (progress.tables if progress else {}).items():
                if name not in tasks:
                    tasks[name] = bars.add_task(name, total=None, rows="", rate="", eta="")
                expected = table.rows_expected
                bars.update(tasks[name], completed=table.rows_done,
                            total=expected or None,
                            rows=f"{table.rows_done:,}/{expected:,} rows",
                            rate=_rate(table.rows_per_s), eta=_eta(table))
            if done:
                return
