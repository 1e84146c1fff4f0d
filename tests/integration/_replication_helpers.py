"""Shared helpers for the replication integration tests (not a test module)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dbmazz.lsn import parse_lsn
from dbmazz.source import pgoutput as po
from dbmazz.source.replication import ReplicationStream
from dbmazz.source.slots import create_slot
from dbmazz.testing.fixtures import Database

DEADLINE_S = 60.0


def make_slot(db: Database, slot: str = "s1") -> int:
    """Create a pgoutput slot; → its consistent point."""
    with create_slot(db.dsn, slot, export_snapshot=False) as creation:
        return creation.consistent_point


def make_table(db: Database, name: str = "t", publication: str = "pub",
               identity: str | None = None) -> None:
    db.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    if identity:
        db.execute(f"ALTER TABLE {name} REPLICA IDENTITY {identity}")
    db.execute(f"CREATE PUBLICATION {publication} FOR TABLE {name}")


def read_until(
    stream: ReplicationStream,
    done: Callable[[list[bytes]], bool],
    timeout_s: float = DEADLINE_S,
    on_chunk: Callable[[object], None] | None = None,
) -> list[bytes]:
    """Read raw messages until ``done(messages)``; bounded by a deadline, not a sleep."""
    messages: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while not done(messages):
        if time.monotonic() > deadline:
            kinds = "".join(chr(m[0]) for m in messages)
            raise AssertionError(f"stream did not deliver in {timeout_s}s; got {kinds!r}")
        chunk = stream.read_chunk(timeout_s=0.2)
        if chunk is not None:
            if on_chunk is not None:
                on_chunk(chunk)
            messages.extend(chunk.messages())
    return messages


def commits(n: int) -> Callable[[list[bytes]], bool]:
    """Done once ``n`` transactions that carried a change have committed. PostgreSQL 14
    also sends every other transaction it decodes (a DDL statement's, an unpublished
    table's) as an empty Begin, Commit pair; 15+ skips them. Those are not counted, or a
    test would stop reading one transaction early whenever a read ends between them."""

    def done(msgs: list[bytes]) -> bool:
        changed, count = False, 0
        for m in msgs:
            kind = m[:1]
            if kind == b"B":
                changed = False
            elif kind in CHANGE_KINDS:
                changed = True
            elif kind == b"C" and changed:
                count += 1
        return count >= n

    return done


CHANGE_KINDS = frozenset((b"I", b"U", b"D", b"T", b"M"))


def parse_all(messages: Sequence[bytes]) -> list[po.Message]:
    return [po.parse_message(m) for m in messages]


def kinds(messages: Sequence[bytes]) -> str:
    return "".join(chr(m[0]) for m in messages)


def current_lsn(db: Database) -> int:
    [(lsn,)] = db.query("SELECT pg_current_wal_lsn()::text")
    return parse_lsn(str(lsn))


def slot_row(db: Database, slot: str = "s1") -> tuple[int | None, int | None]:
    """(confirmed_flush_lsn, active_pid)."""
    [(confirmed, pid)] = db.query(
        "SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    )
    return (parse_lsn(str(confirmed)) if confirmed else None, pid)  # type: ignore[return-value]


def wait_for(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval of a bounded wait, not synchronisation


def texts(values: po.TupleData | None) -> list[str | None]:
    assert values is not None
    return [None if v.value is None else v.value.decode() for v in values]
