"""Implementations of the CLI commands (kept apart so ``dbmazz --help`` imports little)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from dbmazz.cli import load_config
from dbmazz.errors import ConfigError, DbmazzError, SetupProblems
from dbmazz.log import configure_logging
from dbmazz.lsn import format_lsn, parse_lsn

if TYPE_CHECKING:
    from dbmazz.config import Config
    from dbmazz.engine.service import EngineService
    from dbmazz.pipeline.batch import TableSchema

log = logging.getLogger("dbmazz")


class _Drainable(Protocol):
    def drain(self) -> object: ...

    def stop(self) -> object: ...


def _drain_on_signals(engine: _Drainable) -> None:
    """SIGTERM and SIGINT drain: load what is in flight, checkpoint, exit 0. A second
    signal stops at once (what is not loaded yet is read again from the slot next time)."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            log.warning("received %s again: stopping without draining",
                        signal.Signals(signum).name)
            engine.stop()
            return
        log.info("received %s: draining", signal.Signals(signum).name)
        engine.drain()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    """Serve the control plane, run setup → snapshot → CDC; exit 0 after drain/stop.

    A failure exits 1 with the error as the last line (``ON_ERROR=exit``, the default), or
    with ``ON_ERROR=serve`` and gRPC on keeps the process up (health NOT_SERVING, Status
    carries the error, a log line every minute says so) until drain/stop.
    """
    from dbmazz.api.runtime import start_control_plane
    from dbmazz.engine.service import EngineService

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    service = EngineService(config)
    plane = start_control_plane(service, config)
    _drain_on_signals(service)
    try:
        service.start()
        code = service.wait_for_exit(
            stay_up_on_failure=plane.grpc is not None and config.on_error == "serve")
    finally:
        plane.stop()
        _close_sink(service)
    if code:
        exc = service.exception
        if isinstance(exc, ConfigError):  # exit 2 as at start, the problems on one line
            print(f"dbmazz: error: invalid configuration: {'; '.join(exc.problems)}",
                  file=sys.stderr)
            return 2
        print(f"dbmazz: error: {service.error.text if service.error else 'failed'}",
              file=sys.stderr)
        return code
    engine = service.engine
    log.info("stopped; confirmed LSN %s", format_lsn(engine.durable_lsn if engine else 0))
    return 0


def _close_sink(service: EngineService) -> None:
    """Close the target while the interpreter is whole: left to interpreter shutdown,
    DuckDB's own threads may call into a finalizing Python and abort the process (exit
    -6, "terminate called … exception not rethrown") after a clean drain."""
    engine = service.engine
    if engine is None or not service.wait(0):
        return  # still running (a second signal stopped the wait): leave it alone
    try:
        engine.sink.close()
    except Exception as exc:  # noqa: BLE001 - exiting anyway; the data is durable
        log.warning("closing the target failed: %s", exc)


def cmd_replay(args: argparse.Namespace) -> int:
    from dbmazz.engine.build import build_replay_engine

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    from dbmazz.engine.replay_keys import parse_primary_keys

    keys = parse_primary_keys(args.primary_keys) if args.primary_keys else None
    engine = build_replay_engine(config, args.file, primary_keys=keys)
    _drain_on_signals(engine)
    engine.run()
    print(
        f"replayed {args.file}: {engine.progress.messages} messages, "
        f"{engine.progress.rows_applied} changes applied, last commit "
        f"{format_lsn(engine.durable_lsn)}",
        file=sys.stderr,
    )
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from dbmazz.source.capture import capture

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    slot = args.slot or config.slot_name
    _capture_slot(config.source_dsn, slot, create=args.create_slot)
    summary = capture(
        config.source_dsn,
        slot,
        args.publication or config.publication_name,
        args.out,
        until_lsn=parse_lsn(args.until_lsn) if args.until_lsn else None,
        duration_s=args.duration,
        max_messages=args.max_messages,
    )
    last = format_lsn(summary.last_commit_lsn) if summary.last_commit_lsn else "none"
    print(
        f"captured {summary.messages} messages ({summary.transactions} transactions, "
        f"{summary.payload_bytes} bytes) into {summary.path}; last commit {last}; "
        f"stopped: {summary.stopped_because}",
        file=sys.stderr,
    )
    return 0


def _capture_slot(dsn: str, slot: str, *, create: bool) -> None:
    """The slot a capture records from exists, or is created with ``--create-slot``."""
    from dbmazz.errors import SetupError
    from dbmazz.source.slots import create_slot, slot_info

    if slot_info(dsn, slot).exists:
        return
    if not create:
        raise SetupError(
            f"replication slot {slot!r} does not exist: `dbmazz capture` records from an "
            "existing slot",
            "pass --create-slot to create it (the capture starts at its creation point), or "
            "name an existing slot with --slot (`dbmazz slots` lists them)")
    create_slot(dsn, slot, export_snapshot=False).close()
    print(f"created replication slot {slot!r}", file=sys.stderr)


def cmd_setup(args: argparse.Namespace) -> int:
    """Prepare both ends (or with --check only verify them); exit 1 when not ready."""
    from dbmazz.engine.build import make_sink, setup_source_for, target_tables

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    if not config.tables:
        raise ConfigError(["TABLES: required; list the tables to replicate, e.g. public.orders"])
    if args.check:
        return _setup_check(config)
    source = setup_source_for(config)
    tables = target_tables(config, source)
    for warning in source.warnings:
        print(f"warning: {warning}")
    sink = make_sink(config)
    try:
        sink.setup(tables)
    finally:
        sink.close()
    print(f"ready: {len(tables)} table(s) on both ends; slot {config.slot_name!r} "
          f"{'created' if source.slot_created else 'reused'}")
    return 0


def _setup_check(config: Config) -> int:
    """Check both ends, change nothing (no slot, no publication, no target file or table),
    and report every problem found, not only the first."""
    from dbmazz.engine.build import setup_source_for
    from dbmazz.engine.check import check_target

    problems: list[str] = []
    try:
        source = setup_source_for(config, check_only=True)
    except SetupProblems as exc:
        problems += [f"source: {problem}" for problem in exc.problems]
        tables: list[TableSchema] = []
    except DbmazzError as exc:
        problems.append(f"source: {exc}")
        tables = []
    else:
        from dbmazz.engine.build import target_tables

        tables = target_tables(config, source)
        for warning in source.warnings:
            print(f"warning: {warning}")
        if source.pending_changes:
            print("source: `dbmazz setup` would " + "; ".join(source.pending_changes))
        print(f"source{' ready' if not source.pending_changes else ''}: "
              f"{len(source.tables)} table(s), publication {config.publication_name!r}, "
              f"slot {config.slot_name!r}")
    target = check_target(config, tables)
    for line in target.found:
        print(line)
    problems += target.problems
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"not ready: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    if source.pending_changes:
        print("not ready: run `dbmazz setup` (or `dbmazz run`, which sets up first)")
        return 1
    print("ready")
    return 0
