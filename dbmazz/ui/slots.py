"""``dbmazz slots``: the source's replication slots, and dropping an unused one — straight
against PostgreSQL, no running engine needed."""

from __future__ import annotations

import argparse
import json
import sys

from dbmazz.cli import load_config
from dbmazz.errors import SetupError
from dbmazz.log import human_bytes
from dbmazz.lsn import format_lsn
from dbmazz.source.slots import SlotRow, list_slots


def _used_by(row: SlotRow, configured: str) -> str:
    users = []
    if row.checkpoint_lsn is not None:
        users.append(f"dbmazz (checkpoint {format_lsn(row.checkpoint_lsn)})")
    if row.name == configured:
        users.append("this configuration (SLOT_NAME)")
    if row.active and row.consumer and row.consumer != "dbmazz":
        users.append(f"session {row.consumer!r}")
    return ", ".join(users) or "-"


def _row_dict(row: SlotRow, configured: str) -> dict[str, object]:
    return {
        "name": row.name, "plugin": row.plugin, "type": row.slot_type,
        "database": row.database, "active": row.active, "active_pid": row.active_pid,
        "retained_wal_bytes": row.retained_bytes,
        "confirmed_lsn": format_lsn(row.confirmed_flush_lsn)
        if row.confirmed_flush_lsn is not None else None,
        "wal_status": row.wal_status, "safe_wal_size": row.safe_wal_size,
        "consumer": row.consumer, "used_by": _used_by(row, configured),
    }


def cmd_slots(args: argparse.Namespace) -> int:
    config = load_config(args)
    if getattr(args, "slots_action", None) == "drop":
        return _drop(config.source_dsn, args.name, args.yes, config.slot_name)
    rows = list_slots(config.source_dsn)
    if args.json:
        print(json.dumps([_row_dict(r, config.slot_name) for r in rows], indent=2))
        return 0
    if not rows:
        print("no replication slots on the source")
        return 0
    header = ("name", "plugin", "active pid", "retained WAL", "wal_status", "confirmed LSN",
              "used by")
    lines = [header]
    for r in rows:
        lines.append((
            r.name, r.plugin or r.slot_type,
            str(r.active_pid) if r.active else "-",
            human_bytes(r.retained_bytes) if r.retained_bytes is not None else "-",
            r.wal_status or "-",
            format_lsn(r.confirmed_flush_lsn) if r.confirmed_flush_lsn is not None else "-",
            _used_by(r, config.slot_name),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                 strict=True)).rstrip())
    return 0


def _drop(dsn: str, name: str, yes: bool, configured: str) -> int:
    from dbmazz.source.slots import drop_slot, read_slots
    from dbmazz.source.slots import slot_info as _slot_info
    from dbmazz.state.checkpoint import forget_checkpoint

    info = _slot_info(dsn, name)
    if not info.exists:
        raise SetupError(f"replication slot {name!r} does not exist on the source",
                         "`dbmazz slots` lists the slots there are")
    if info.active:
        raise SetupError(
            f"replication slot {name!r} is in use by the session with pid {info.active_pid}",
            "stop its consumer first (`dbmazz stop`, or see pg_stat_replication); an active "
            "slot is never dropped")
    from dbmazz.source.database import SourceDatabase

    with SourceDatabase(dsn).connect("slots") as conn:
        [row] = read_slots(conn, only=name)
    retained = human_bytes(row.retained_bytes) if row.retained_bytes is not None else "?"
    summary = (f"slot {name!r} ({row.plugin or row.slot_type}, retains {retained} of WAL, "
               f"used by {_used_by(row, configured)})")
    if not yes:
        if not sys.stdin.isatty():
            raise SetupError(f"not dropping {summary} without confirmation",
                             "pass --yes to confirm")
        answer = input(f"Drop {summary}? Changes it holds that no consumer has read are lost. "
                       "[y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not dropped")
            return 1
    dropped = drop_slot(dsn, name, wait_s=0.0)
    forgot = forget_checkpoint(SourceDatabase(dsn), name)
    print(f"dropped {summary}" + ("; its dbmazz checkpoint was deleted" if forgot else "")
          if dropped else f"slot {name!r} was already gone")
    return 0
