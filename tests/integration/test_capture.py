"""Capturing a live slot into a file and reading it back, against a real server."""

from __future__ import annotations

from pathlib import Path

from dbmazz.source.capture import capture, capture_metadata, iter_capture, read_capture
from dbmazz.source.replication import ReplicationStream
from dbmazz.testing.fixtures import Database
from tests.integration._replication_helpers import (
    commits,
    current_lsn,
    kinds,
    make_slot,
    read_until,
    slot_row,
)


def traffic(db: Database, start: int) -> None:
    """Four transactions of several message types."""
    with db.connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (%s, 'a'), (%s, 'b')", (start, start + 1))
            conn.execute("SELECT pg_logical_emit_message(true, 'dbmazz', 'marker')")
        conn.execute("UPDATE t SET v = 'c' WHERE id = %s", (start,))
        conn.execute("SELECT pg_logical_emit_message(false, 'dbmazz', 'loose')")
        conn.execute("DELETE FROM t WHERE id = %s", (start + 1,))
        conn.execute('INSERT INTO "Odd Schema"."Mixed ""Case"" Tab" VALUES (%s, 1)', (start,))


def setup_db(db: Database) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    db.execute('CREATE SCHEMA "Odd Schema"')
    db.execute('CREATE TABLE "Odd Schema"."Mixed ""Case"" Tab" ("K 2" int, "k1" int, '
               'PRIMARY KEY ("K 2", "k1"))')
    db.execute('CREATE PUBLICATION pub FOR TABLE t, "Odd Schema"."Mixed ""Case"" Tab"')


def messages_of(path: Path) -> tuple[list[bytes], list[int]]:
    msgs: list[bytes] = []
    lsns: list[int] = []
    for chunk in iter_capture(path):
        msgs += chunk.messages()
        lsns += chunk.lsns.tolist()
    return msgs, lsns


def test_capture_replays_the_exact_stream_and_resumes(pg_db: Database, tmp_path: Path) -> None:
    setup_db(pg_db)
    make_slot(pg_db, "cap")
    make_slot(pg_db, "direct")
    traffic(pg_db, 1)
    until = current_lsn(pg_db)
    first = tmp_path / "first.arrows"
    summary = capture(pg_db.dsn, "cap", "pub", first, until_lsn=until, duration_s=120)
    assert summary.stopped_because == "until_lsn"
    assert summary.transactions == 4
    # Confirmed only what the fsync'd file holds: exactly the last complete transaction.
    assert summary.confirmed_lsn == summary.last_commit_lsn
    assert slot_row(pg_db, "cap")[0] == summary.last_commit_lsn

    traffic(pg_db, 100)
    second = tmp_path / "second.arrows"
    summary2 = capture(pg_db.dsn, "cap", "pub", second, until_lsn=current_lsn(pg_db),
                       duration_s=120)
    assert summary2.transactions == 4

    with ReplicationStream.open(pg_db.dsn, "direct", ["pub"], messages=True) as stream:
        direct: list[bytes] = []
        direct_lsns: list[int] = []

        def keep(chunk: object) -> None:
            direct_lsns.extend(chunk.lsns.tolist())  # type: ignore[attr-defined]

        direct = read_until(stream, commits(8), on_chunk=keep)
    got1, lsns1 = messages_of(first)
    got2, _ = messages_of(second)
    # Byte-identical message sequence (both sessions fresh) ...
    assert got1 == direct[: len(got1)]
    assert lsns1 == direct_lsns[: len(got1)]
    # ... and no gap nor repeat across the two captures (the second session describes
    # its relations again, so Relation messages are compared apart).
    def changes(msgs: list[bytes]) -> list[bytes]:
        return [m for m in msgs if m[:1] != b"R"]

    assert changes(got2) == changes(direct[len(got1) :])
    assert {m for m in got2 if m[:1] == b"R"} <= {m for m in got1 if m[:1] == b"R"}
    assert kinds(got1) == "BRIIMCBUCMBDCBRIC"
    assert kinds(got2)[0] == "B"  # resumed at a transaction boundary

    meta = capture_metadata(first)
    assert meta.publication == "pub" and meta.proto_version == 1
    assert meta.primary_keys == {
        "public.t": ("id",),
        'Odd Schema.Mixed "Case" Tab': ("K 2", "k1"),
    }
    assert meta.raw["dbmazz.slot"] == "cap"
    assert read_capture(first).num_rows == len(got1)


def test_max_messages_cuts_exactly_and_confirms_only_whole_transactions(
    pg_db: Database, tmp_path: Path
) -> None:
    setup_db(pg_db)
    make_slot(pg_db, "cap")
    initial = slot_row(pg_db, "cap")[0]
    traffic(pg_db, 1)
    out = tmp_path / "cut.arrows"
    summary = capture(pg_db.dsn, "cap", "pub", out, max_messages=7, duration_s=120)
    assert summary.stopped_because == "max_messages"
    got, _ = messages_of(out)
    assert len(got) == summary.messages == 7
    assert kinds(got) == "BRIIMCB"  # the second transaction is cut after its Begin
    assert summary.transactions == 1
    assert slot_row(pg_db, "cap")[0] == summary.last_commit_lsn
    assert summary.last_commit_lsn is not None and initial is not None
    assert summary.last_commit_lsn > initial
    # The cut transaction comes again next time, whole.
    rest = tmp_path / "rest.arrows"
    capture(pg_db.dsn, "cap", "pub", rest, until_lsn=current_lsn(pg_db), duration_s=120)
    assert kinds(messages_of(rest)[0]) == "BRUCMBDCBRIC"  # new session: Relation again


def test_duration_limit_with_no_traffic(pg_db: Database, tmp_path: Path) -> None:
    setup_db(pg_db)
    make_slot(pg_db, "cap")
    out = tmp_path / "idle.arrows"
    summary = capture(pg_db.dsn, "cap", "pub", out, duration_s=0.5)
    assert summary.stopped_because == "duration"
    assert summary.messages == 0 and summary.last_commit_lsn is None
    assert read_capture(out).num_rows == 0
    assert capture_metadata(out).primary_keys["public.t"] == ("id",)
