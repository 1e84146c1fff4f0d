"""Implementations of the CLI commands (kept apart so ``dbmazz --help`` imports little)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from dbmazz.cli import load_config
from dbmazz.engine.core import Engine
from dbmazz.log import configure_logging
from dbmazz.lsn import format_lsn, parse_lsn

log = logging.getLogger("dbmazz")


def _drain_on_signals(engine: Engine) -> None:
    """SIGTERM and SIGINT drain: load what is in flight, checkpoint, exit 0."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        engine.drain()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from dbmazz.engine.build import build_live_engine

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    engine = build_live_engine(config)
    _drain_on_signals(engine)
    engine.run()
    log.info("stopped; confirmed LSN %s", format_lsn(engine.durable_lsn))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from dbmazz.engine.build import build_replay_engine

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    engine = build_replay_engine(config, args.file)
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
    summary = capture(
        config.source_dsn,
        args.slot or config.slot_name,
        args.publication or config.publication_name,
        args.out,
        until_lsn=parse_lsn(args.until_lsn) if args.until_lsn else None,
        duration_s=args.duration,
        max_messages=args.max_messages,
    )
    print(summary, file=sys.stderr)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from dbmazz.engine.build import make_sink
    from dbmazz.engine.setup.postgres import setup_source

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    if args.check:
        from dbmazz.errors import NotImplementedYet

        raise NotImplementedYet("`dbmazz setup --check` (verification without changes)")
    result = setup_source(
        config.source_dsn,
        config.tables,
        publication=config.publication_name,
        slot=config.slot_name,
        replica_identity=config.replica_identity,
    )
    make_sink(config).close()
    print(f"source ready: {result}", file=sys.stderr)
    return 0
