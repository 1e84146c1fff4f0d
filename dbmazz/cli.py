"""Command line: ``dbmazz <command>``.

Commands that run the engine accept every configuration variable as a flag
(``FLUSH_ROWS`` → ``--flush-rows``); flags win over the environment and ``.env``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dbmazz._version import __version__
from dbmazz.config import Config
from dbmazz.errors import ConfigError, DbmazzError, NotImplementedYet
from dbmazz.log import configure_logging

log = logging.getLogger("dbmazz")

Handler = Callable[[argparse.Namespace], int]
_CONFIG_FIELDS = tuple(Config.model_fields)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (each flag overrides its env variable)")
    for name, info in Config.model_fields.items():
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"cfg_{name}",
            default=None,
            metavar=name.upper(),
            help=info.description,
        )


def _more_than_zero(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def _lsn(text: str) -> str:
    from dbmazz.lsn import parse_lsn

    try:
        parse_lsn(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _new_file(text: str) -> str:
    from pathlib import Path

    if not Path(text).expanduser().resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of {text!r} does not exist")
    return text


def load_config(args: argparse.Namespace, **forced: Any) -> Config:
    overrides = {
        name: getattr(args, f"cfg_{name}")
        for name in _CONFIG_FIELDS
        if getattr(args, f"cfg_{name}", None) is not None
    }
    overrides.update({k: v for k, v in forced.items() if v is not None})
    return Config.load(overrides)


def _not_implemented(feature: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        raise NotImplementedYet(f"`dbmazz {args.command}` is not implemented yet ({feature})")

    return handler


def _lazy(module: str, function: str) -> Handler:
    """Import command implementations only when used, so `--help` stays fast."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        impl: Handler = getattr(importlib.import_module(module), function)
        return impl(args)

    return handler


def _add_client_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Flags of the commands that talk to a running engine over gRPC."""
    parser.add_argument("--token", default=None,
                        help="bearer token of the engine (default: GRPC_TOKEN)")
    parser.add_argument("--ca-cert", default=None,
                        help="CA certificate (PEM) to reach an engine serving TLS")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    if command == "status":
        parser.add_argument("--json", action="store_true", help="print JSON")
    elif command == "top":
        parser.add_argument("--once", action="store_true", help="render one frame and exit")
        parser.add_argument("--interval", type=float, default=1.0, help="refresh seconds")
    elif command in ("drain", "stop"):
        parser.add_argument("--wait", type=float, default=300.0 if command == "drain" else 60.0,
                            help="seconds to wait for the engine to stop (0: do not wait)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbmazz",
        description="Stream PostgreSQL changes (logical replication) into StarRocks or DuckDB.",
    )
    parser.add_argument("--version", action="version", version=f"dbmazz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, handler: Handler, config: bool = False) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if config:
            _add_config_flags(p)
        return p

    command("run", "Run the engine: setup, snapshot, then stream changes until stopped.",
            _lazy("dbmazz.commands", "cmd_run"), config=True)
    p = command("setup", "Prepare (or with --check only verify) the source and the target.",
                _lazy("dbmazz.commands", "cmd_setup"), config=True)
    p.add_argument("--check", action="store_true", help="verify only; change nothing")
    p = command("snapshot", "Snapshot tables into the target (also while CDC runs).",
                _lazy("dbmazz.ui.snapshot", "cmd_snapshot"), config=True)
    p.add_argument("--table", action="append", default=[], help="table to snapshot (repeatable)")
    p.add_argument("--address", default=None,
                   help="gRPC address of the running engine to ask (default GRPC_HOST:GRPC_PORT)")
    p = command("verify", "Compare the target with the source (and --repair what differs); "
                "exit 0 only when equal.", _lazy("dbmazz.verify.command", "cmd_verify"),
                config=True)
    p.add_argument("--table", action="append", default=[],
                   help="table to verify (repeatable; default: TABLES)")
    p.add_argument("--ranges", type=int, default=64,
                   help="ranges per table (rows are grouped by their key's hash)")
    p.add_argument("--sample", type=float, default=1.0,
                   help="share of the ranges to check, (0, 1]")
    p.add_argument("--max-keys", type=int, default=20,
                   help="differing keys listed per table and kind")
    p.add_argument("--repair", action="store_true",
                   help="re-copy the differing keys from the source")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = command("capture", "Record the replication stream of a slot into an Arrow IPC file.",
                _lazy("dbmazz.commands", "cmd_capture"), config=True)
    p.add_argument("--slot", help="replication slot (default SLOT_NAME)")
    p.add_argument("--publication", help="publication (default PUBLICATION_NAME)")
    p.add_argument("--out", required=True, type=_new_file, help="output file (.arrows)")
    p.add_argument("--create-slot", action="store_true",
                   help="create the slot when it does not exist (the capture then starts at "
                   "its creation point)")
    stop_at = p.add_mutually_exclusive_group()
    stop_at.add_argument("--until-lsn", type=_lsn,
                         help="stop after the transaction committing at this LSN")
    stop_at.add_argument("--duration", type=_more_than_zero(float),
                         help="stop after this many seconds")
    stop_at.add_argument("--max-messages", type=_more_than_zero(int),
                         help="stop after this many messages")
    p = command("slots", "List the source's replication slots (no running engine needed).",
                _lazy("dbmazz.ui.slots", "cmd_slots"), config=True)
    p.add_argument("--json", action="store_true", help="print JSON")
    slots = p.add_subparsers(dest="slots_action", metavar="ACTION")
    drop = slots.add_parser("drop", help="Drop an inactive slot (and its dbmazz checkpoint).",
                            description="Drop an inactive replication slot after "
                            "confirmation; its dbmazz checkpoint is deleted with it.")
    drop.add_argument("name", help="slot name")
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_config_flags(drop)
    p = command("replay", "Run the pipeline over a capture file into the sink, then exit.",
                _lazy("dbmazz.commands", "cmd_replay"), config=True)
    p.add_argument("file", help="capture file written by `dbmazz capture`")
    p.add_argument("--primary-keys", default=None, metavar="SCHEMA.TABLE=COL[,COL];...",
                   help="primary keys of tables the capture does not record keys for "
                   "(default: the capture's metadata, then SOURCE_URL's catalog if set)")
    for name, text in (
        ("status", "Show the state of a running engine."),
        ("pause", "Pause reading (status updates to PostgreSQL continue)."),
        ("resume", "Resume a paused engine."),
        ("drain", "Flush everything in flight, checkpoint and stop."),
        ("stop", "Stop the engine (never drops the slot unless --drop-slot)."),
        ("top", "Live dashboard of a running engine."),
    ):
        p = command(name, text, _lazy("dbmazz.ui.commands", f"cmd_{name}"))
        p.add_argument("--address", default=None,
                       help="engine gRPC address host:port (default GRPC_HOST:GRPC_PORT from "
                       "the environment and .env, as `dbmazz run` serves)")
        if name == "stop":
            p.add_argument("--drop-slot", action="store_true",
                           help="also drop the replication slot (changes not yet loaded are lost)")
        _add_client_flags(p, name)
    p = command("demo", "Start a private PostgreSQL, generate traffic and replicate it.",
                _lazy("dbmazz.demo", "cmd_demo"))
    p.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    p.add_argument("--sink", choices=["duckdb", "starrocks"],
                   help="target (default DEMO_SINK or duckdb)")
    p.add_argument("--rate", type=float, default=100.0, help="source transactions per second")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        result: int = args.handler(args)
        return result
    except NotImplementedYet as exc:
        print(f"dbmazz: {exc.message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"dbmazz: {exc.message}", file=sys.stderr)
        return 2
    except DbmazzError as exc:
        print(f"dbmazz: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of a pipe went away (`dbmazz status --json | head`): stop quietly,
        # and let the interpreter's final flush of stdout write nowhere.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
