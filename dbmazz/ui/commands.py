"""CLI clients of a running engine: status, pause, resume, drain, stop, top."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console

from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api.client import Client, connect
from dbmazz.api.convert import message_dict, state_name
from dbmazz.ui.format import status_renderable


def _client(args: argparse.Namespace) -> Client:
    """The engine at ``--address``, else where ``dbmazz run`` with the same settings serves
    (GRPC_HOST/GRPC_PORT/GRPC_TOKEN from the environment and ``.env``)."""
    client = connect(args.address, token=args.token, ca_cert=args.ca_cert,
                     timeout_s=args.timeout)
    args.address = client.address  # shown by `status`
    return client


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _report(reply: pb.ControlReply) -> None:
    status = reply.status
    print(f"{reply.message}: state {state_name(status.state)}, confirmed LSN "
          f"{status.confirmed_lsn.text or '0/0'}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    if args.json:
        print(json.dumps(message_dict(status), indent=2))
    else:
        _console().print(status_renderable(status, args.address))
    return 1 if state_name(status.state) == "FAILED" else 0


def cmd_pause(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _report(client.pause())
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _report(client.resume())
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.drain(wait_s=args.wait)
    _report(reply)
    return 0 if reply.completed or not args.wait else 1


def cmd_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        reply = client.stop(drop_slot=args.drop_slot, wait_s=args.wait)
    _report(reply)
    if args.drop_slot and not reply.slot_dropped:
        print("the replication slot was not dropped", file=sys.stderr)
        return 1
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from dbmazz.ui import dashboard

    with _client(args) as client:
        if args.once:
            dashboard.once(client, _console())
        else:
            dashboard.run(client, _console(), interval_s=max(0.1, args.interval))
    return 0
