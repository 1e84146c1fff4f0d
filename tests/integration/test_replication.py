"""The replication stream against a real server: streaming (the highest protocol the server
speaks: 2 on PostgreSQL 14, 4 with parallel streaming on 16+), resume, status updates,
keepalives while paused, and every failure's error."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from dbmazz.errors import (
    SlotInUseError,
    SlotLostError,
    SourceConnectionError,
    SourceError,
)
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.source import pgoutput as po
from dbmazz.source.protocol import max_protocol
from dbmazz.source.replication import ReplicationStream
from dbmazz.source.setup import setup_source
from dbmazz.source.slots import create_slot, drop_slot, slot_info
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster
from tests.integration._replication_helpers import (
    commits,
    current_lsn,
    kinds,
    make_slot,
    make_table,
    parse_all,
    read_until,
    slot_row,
    texts,
    wait_for,
)

SMALL_WORK_MEM = {"logical_decoding_work_mem": "64kB"}


@pytest.fixture(params=["socket", "libpq"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each reader: the socket one (the default where possible) and the
    libpq one (SSL/GSS connections, streamed transactions)."""
    original = ReplicationStream.open.__func__  # type: ignore[attr-defined]
    use_socket = request.param == "socket"

    def open_with_reader(cls: type, *args: object, **kwargs: object) -> ReplicationStream:
        kwargs.setdefault("socket_reader", use_socket)
        stream: ReplicationStream = original(cls, *args, **kwargs)
        assert stream.reads_socket == use_socket
        return stream

    monkeypatch.setattr(ReplicationStream, "open", classmethod(open_with_reader))
    return str(request.param)


def open_streaming(db: Database, **kwargs: object) -> ReplicationStream:
    kwargs.setdefault("proto_version", "auto")
    return ReplicationStream.open(
        db.dsn, "s1", ["pub"], streaming=True,
        settings=SMALL_WORK_MEM, **kwargs,  # type: ignore[arg-type]
    )


def inserted_ids(msgs: list[po.Message]) -> list[int]:
    return [int(texts(m.new)[0] or 0) for m in msgs if isinstance(m, po.Insert)]


def big_insert(conn: psycopg.Connection, start: int, count: int) -> None:
    conn.execute(
        "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(%s::int, %s::int) g",
        (start, start + count - 1),
    )


# -- streamed transactions (protocol 2+; parallel streaming with protocol 4) ---------------


@pytest.mark.parametrize("skip_empty", [False, True], ids=["all", "skip-empty"])
@pytest.mark.parametrize("spool_memory", [64 << 20, 0], ids=["in-memory", "spilled"])
def test_streamed_transaction_with_aborted_subtransaction(
    pg_db: Database, spool_memory: int, reader: str, skip_empty: bool
) -> None:
    # skip_empty: PostgreSQL 14's empty-transaction filter holds a chunk's trailing Begin
    # back, and the delivery of a streamed transaction is such a chunk (its Begin alone):
    # the changes that follow must not overtake it.
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn, conn.transaction():
        big_insert(conn, 1, 2000)
        conn.execute("SAVEPOINT a")
        big_insert(conn, 10_001, 2000)  # streamed, then rolled back
        conn.execute("ROLLBACK TO SAVEPOINT a")
        big_insert(conn, 20_001, 2000)
        conn.execute("SAVEPOINT b")
        big_insert(conn, 30_001, 500)
        conn.execute("RELEASE SAVEPOINT b")
    with open_streaming(pg_db, spool_memory_bytes=spool_memory,
                        skip_empty_transactions=skip_empty) as stream:
        raw = read_until(stream, commits(1))
        stats = stream.stats
        assert stream.proto_version == max_protocol(pg_db.server.version_num())
        assert stream.parallel == (stream.proto_version >= 4)
    assert stats.stream_blocks > 1, "the transaction was not streamed; test is void"
    assert stats.streamed_committed == 1 and stats.subxacts_aborted >= 1
    # Protocol 4's Stream Abort carries the abort LSN: the rolled-back subtransaction's.
    assert (stats.last_abort_lsn > 0) == stream.parallel
    assert (stats.spilled_bytes > 0) == (spool_memory == 0)
    # Downstream sees one ordinary transaction: no stream messages, no xids.
    assert set(kinds(raw)) <= set("BRIC") and kinds(raw)[0] == "B" and kinds(raw)[-1] == "C"
    assert kinds(raw).count("B") == kinds(raw).count("C") == 1
    msgs = parse_all(raw)
    expected = [*range(1, 2001), *range(20_001, 22_001), *range(30_001, 30_501)]
    assert inserted_ids(msgs) == expected
    relations = {m.oid for m in msgs if isinstance(m, po.Relation)}
    assert all(m.relation_oid in relations for m in msgs if isinstance(m, po.Insert))
    begin, commit = msgs[0], msgs[-1]
    assert isinstance(begin, po.Begin) and isinstance(commit, po.Commit)
    assert begin.final_lsn == commit.commit_lsn and begin.commit_time == commit.commit_time


def test_streamed_transaction_aborted_entirely_yields_nothing(
    pg_db: Database, reader: str
) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    start = current_lsn(pg_db)
    # Streamed while still open: PostgreSQL 18 skips decoding a transaction it already
    # knows aborted, so aborting first would stream nothing.
    with open_streaming(pg_db) as stream, pg_db.connect() as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            big_insert(conn, 1, 3000)
            wait_for(lambda: stream.read_chunk(timeout_s=0.1) is None
                     and stream.stats.stream_blocks > 0, what="the open transaction streamed")
            raise RuntimeError("abort")
        conn.execute("INSERT INTO t VALUES (-1, 'sentinel')")
        msgs = parse_all(read_until(stream, commits(1)))
        assert stream.stats.streamed_aborted == 1
        if stream.parallel:  # the abort record's position, after the streamed changes
            assert stream.stats.last_abort_lsn > start
        else:
            assert stream.stats.last_abort_lsn == 0
    assert inserted_ids(msgs) == [-1]


def test_explicit_protocol_2_streams_on_every_server(pg_db: Database, reader: str) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn, conn.transaction():
        big_insert(conn, 1, 3000)
    with open_streaming(pg_db, proto_version=2) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
        assert stream.proto_version == 2 and not stream.parallel
        assert stream.stats.stream_blocks > 1
    assert inserted_ids(msgs) == list(range(1, 3001))


def test_protocol_newer_than_the_server_is_refused(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    highest = max_protocol(pg_db.server.version_num())
    if highest >= 4:
        pytest.skip(f"PostgreSQL {pg_db.server.major} speaks every protocol dbmazz does")
    with pytest.raises(SourceError, match=f"up to {highest}, not 4") as info:
        ReplicationStream.open(pg_db.dsn, "s1", ["pub"], proto_version=4, streaming=True)
    assert "PGOUTPUT_PROTOCOL=auto" in str(info.value)


def test_small_transaction_committed_during_a_streamed_one_comes_first(
    pg_db: Database, reader: str
) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as big, pg_db.connect() as small, big.transaction():
        big_insert(big, 1, 2000)
        small.execute("INSERT INTO t VALUES (-1, 'small')")
        big_insert(big, 5001, 2000)
    with open_streaming(pg_db) as stream:
        raw = read_until(stream, commits(2))
        assert stream.stats.stream_blocks > 1
    msgs = parse_all(raw)
    assert inserted_ids(msgs) == [-1, *range(1, 2001), *range(5001, 7001)]
    assert kinds(raw).count("B") == 2


def test_streaming_off_delivers_large_transaction_whole(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn, conn.transaction():
        big_insert(conn, 1, 3000)
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"], proto_version=2,
                                settings=SMALL_WORK_MEM) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
        assert stream.stats.stream_blocks == 0
    assert inserted_ids(msgs) == list(range(1, 3001))


def test_chunks_respect_max_bytes_and_hold_whole_messages(pg_db: Database, reader: str) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    make_slot(pg_db, "s2")
    with pg_db.connect() as conn:
        big_insert(conn, 1, 2000)
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        raw = read_until(stream, commits(1))
    assert len(parse_all(raw)) == 2003
    # A small limit splits the same stream into more chunks, never inside a message.
    with ReplicationStream.open(pg_db.dsn, "s2", ["pub"]) as stream:
        deadline = time.monotonic() + 60
        got: list[bytes] = []
        while sum(1 for m in got if m[:1] == b"C") < 1:
            assert time.monotonic() < deadline
            chunk = stream.read_chunk(max_bytes=4096, timeout_s=0.2)
            if chunk is not None:
                assert len(chunk.data) < 4096 + 200
                got.extend(chunk.messages())
    assert got == raw


def test_messages_larger_than_the_read_buffer_arrive_whole(pg_db: Database, reader: str
                                                            ) -> None:
    """A 20 MB value: one message past the socket reader's 4 MiB buffer and past the
    16 MiB frames its vectorized split recognizes, between ordinary small ones."""
    make_table(pg_db)
    make_slot(pg_db)
    big = "".join(chr(ord("a") + i % 26) for i in range(26)) * (20_000_000 // 26)
    with pg_db.connect() as conn:
        conn.execute("ALTER TABLE t ALTER COLUMN v SET STORAGE EXTERNAL")  # no compression
        conn.execute("INSERT INTO t VALUES (1, 'small')")
        conn.execute("INSERT INTO t VALUES (2, %s)", (big,))
        conn.execute("INSERT INTO t VALUES (3, 'small again')")
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        msgs = parse_all(read_until(stream, commits(3)))
    values = [texts(m.new)[1] for m in msgs if isinstance(m, po.Insert)]
    assert values == ["small", big, "small again"]


# -- positions, confirmation, resume ------------------------------------------------------


def test_resume_from_confirmed_lsn_without_gaps_or_repeats(pg_db: Database, reader: str) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    for i in range(1, 6):
        pg_db.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        msgs = parse_all(read_until(stream, commits(5)))
        third_commit = [m for m in msgs if isinstance(m, po.Commit)][2]
        stream.confirm(third_commit.end_lsn)
        stream.confirm(third_commit.end_lsn - 1)  # never lowers
        assert stream.durable_lsn == third_commit.end_lsn
        assert stream.received_lsn >= third_commit.end_lsn
        assert stream.server_wal_end >= third_commit.end_lsn
    assert slot_row(pg_db)[0] == third_commit.end_lsn
    for i in range(6, 8):
        pg_db.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        assert stream.durable_lsn == third_commit.end_lsn
        resumed = parse_all(read_until(stream, commits(4)))
    assert inserted_ids(resumed) == [4, 5, 6, 7]
    # An explicit start LSN equal to the confirmed one resumes at the same place.
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"], third_commit.end_lsn) as stream:
        assert inserted_ids(parse_all(read_until(stream, commits(4)))) == [4, 5, 6, 7]


def test_status_updates_report_only_the_durable_lsn(pg_db: Database, reader: str) -> None:
    make_table(pg_db)
    start = make_slot(pg_db)
    for i in range(20):
        pg_db.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        msgs = parse_all(read_until(stream, commits(20)))
        ends = [m.end_lsn for m in msgs if isinstance(m, po.Commit)]
        assert stream.received_lsn >= ends[-1]
        # Everything received, nothing confirmed: status updates must not move the slot.
        for _ in range(3):
            stream.keepalive(force=True)
        assert stream.stats.status_updates >= 3
        target = ends[4]
        stream.confirm(target)
        stream.keepalive(force=True)
        seen: list[int | None] = []

        def reached() -> bool:
            seen.append(slot_row(pg_db)[0])
            return seen[-1] == target

        # The forced updates before the confirm were processed before this one.
        wait_for(reached, what="confirmed_flush_lsn to reach the confirmed LSN")
        assert all(v is not None and start <= v <= target for v in seen), [
            format_lsn(v or 0) for v in seen
        ]
        # More traffic read but not confirmed: the slot stays put.
        pg_db.execute("INSERT INTO t VALUES (1000, 'x')")
        read_until(stream, commits(1))
        stream.keepalive(force=True)
        assert slot_row(pg_db)[0] == target
    assert slot_row(pg_db)[0] == target  # close() reported the durable LSN, not more


def test_a_newly_durable_lsn_is_reported_at_the_next_read(pg_db: Database, reader: str) -> None:
    """The slot follows durability at the reader's next step, not on a status cadence (the
    interval here is an hour, and no update was due by time)."""
    make_table(pg_db)
    make_slot(pg_db)
    for i in range(5):
        pg_db.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"], status_interval_s=3600) as stream:
        msgs = parse_all(read_until(stream, commits(5)))
        ends = [m.end_lsn for m in msgs if isinstance(m, po.Commit)]
        stream.read_chunk(timeout_s=0.01)
        before = stream.stats.status_updates
        reported = stream.reported_lsn
        assert reported < ends[2]  # nothing confirmed yet: not reported
        stream.confirm(ends[2])
        stream.read_chunk(timeout_s=0.01)
        assert stream.stats.status_updates == before + 1
        assert stream.reported_lsn == ends[2]
        wait_for(lambda: slot_row(pg_db)[0] == ends[2],
                 what="confirmed_flush_lsn to reach the confirmed LSN")
        # Nothing newly durable: no further update before the interval.
        stream.read_chunk(timeout_s=0.01)
        assert stream.stats.status_updates == before + 1


def test_confirm_is_thread_safe_and_monotonic(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]) as stream:
        base = stream.durable_lsn
        def confirm_many(k: int) -> None:
            for i in range(1000):
                stream.confirm(base + k * 1000 + i)

        threads = [threading.Thread(target=confirm_many, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stream.durable_lsn == base + 3999


# -- keepalives and the walsender timeout (private cluster, wal_sender_timeout 2 s) -------

TIMEOUT_S = 2.0


def _cluster_with_short_timeout(cluster: PostgresCluster) -> str:
    cluster.set_setting("wal_sender_timeout", f"{int(TIMEOUT_S * 1000)}ms")
    db = cluster.create_database()
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE t", db)
    create_slot(cluster.dsn(db), "s1", export_snapshot=False).close()
    return db


def _walsender_pid(cluster: PostgresCluster, db: str) -> int | None:
    with cluster.connect(db) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's1'"
        ).fetchone()
    return None if row is None else row[0]


def test_keepalive_while_paused_keeps_the_walsender_alive(
    private_pg_cluster: PostgresCluster,
) -> None:
    cluster = private_pg_cluster
    db = _cluster_with_short_timeout(cluster)
    with ReplicationStream.open(cluster.dsn(db), "s1", ["pub"]) as stream:
        assert stream.status_interval_s == TIMEOUT_S / 2
        pid = _walsender_pid(cluster, db)
        with cluster.connect(db) as conn:
            # More than the socket buffers hold: the walsender blocks writing meanwhile.
            conn.execute(
                "INSERT INTO t SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g"
            )
        # Paused (backpressure): never read, only keepalive(), for 3× the server timeout.
        before = stream.stats.status_updates
        end = time.monotonic() + 3 * TIMEOUT_S
        while time.monotonic() < end:
            stream.keepalive()
            time.sleep(0.05)  # the caller's pause loop; the behaviour under test
        assert stream.stats.status_updates - before >= 3
        assert _walsender_pid(cluster, db) == pid
        msgs = parse_all(read_until(stream, commits(1)))
        assert len(inserted_ids(msgs)) == 20000
        cluster.execute("INSERT INTO t VALUES (-1, 'after the pause')", db)
        assert inserted_ids(parse_all(read_until(stream, commits(1)))) == [-1]


def test_without_status_updates_the_walsender_times_out(
    private_pg_cluster: PostgresCluster,
) -> None:
    """Control for the test above: the same pause without keepalive() kills the session."""
    cluster = private_pg_cluster
    db = _cluster_with_short_timeout(cluster)
    with ReplicationStream.open(cluster.dsn(db), "s1", ["pub"]) as stream:
        wait_for(lambda: _walsender_pid(cluster, db) is None, timeout_s=10 * TIMEOUT_S,
                 what="the walsender to time out")
        with pytest.raises(SourceConnectionError) as info:
            read_until(stream, commits(1), timeout_s=10 * TIMEOUT_S)
        assert info.value.retryable


def test_reply_requests_are_answered_while_reading(
    private_pg_cluster: PostgresCluster, reader: str
) -> None:
    cluster = private_pg_cluster
    db = _cluster_with_short_timeout(cluster)
    # An interval longer than the timeout: only answering the server's pings keeps it up.
    with ReplicationStream.open(cluster.dsn(db), "s1", ["pub"], status_interval_s=3600) as stream:
        pid = _walsender_pid(cluster, db)
        stream.read_chunk(timeout_s=0.2)  # sends the first status update
        end = time.monotonic() + 3 * TIMEOUT_S
        while time.monotonic() < end:
            stream.read_chunk(timeout_s=0.2)
        assert stream.stats.replies_requested >= 1
        assert _walsender_pid(cluster, db) == pid
        # Nothing was delivered, so the idle rule reports how far the server has read.
        wait_for(lambda: slot_row_cluster(cluster, db) == stream.reported_lsn,
                 what="the slot to follow the reported position")
        assert stream.reported_lsn >= stream.durable_lsn


def slot_row_cluster(cluster: PostgresCluster, db: str) -> int:
    with cluster.connect(db) as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots").fetchone()
    assert row is not None
    return parse_lsn(row[0])


# -- idle: nothing delivered is unconfirmed ---------------------------------------------


@pytest.mark.parametrize("advance", [True, False])
def test_idle_stream_moves_the_slot_past_unpublished_activity(
    pg_db: Database, advance: bool, reader: str) -> None:
    make_table(pg_db)
    pg_db.execute("CREATE TABLE other (id int PRIMARY KEY)")  # not published
    make_slot(pg_db)
    pg_db.execute("INSERT INTO t VALUES (1, 'a')")
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"], advance_when_idle=advance) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
        end = next(m for m in msgs if isinstance(m, po.Commit)).end_lsn
        # Delivered but not confirmed: never reported.
        stream.keepalive(force=True)
        assert stream.reported_lsn < end
        stream.confirm(end)
        for i in range(20):  # WAL the publication does not care about
            pg_db.execute("INSERT INTO other VALUES (%s)", (i,))
        wal_now = current_lsn(pg_db)
        confirmed = end

        def server_read_past() -> bool:
            nonlocal confirmed
            chunk = stream.read_chunk(timeout_s=0.1)
            if chunk is not None:
                # PostgreSQL 14 sends the other table's transactions as empty B, C pairs
                # (15+ skips them); confirm them as the engine would.
                ends = [m.end_lsn for m in parse_all(chunk.messages())
                        if isinstance(m, po.Commit)]
                if ends:
                    confirmed = max(ends)
                    stream.confirm(confirmed)
            return stream.server_wal_end >= wal_now

        wait_for(server_read_past, what="a keepalive past the unpublished writes")
        stream.keepalive(force=True)
        if pg_db.server.major >= 15:
            assert confirmed == end, "an empty transaction was sent"
        if advance:
            assert stream.reported_lsn >= wal_now > end
            wait_for(lambda: (slot_row(pg_db)[0] or 0) >= wal_now,
                     what="the slot to advance")
        else:
            assert stream.reported_lsn == confirmed
        before = stream.reported_lsn
        # A new transaction is delivered: while it is unconfirmed the report stays put
        # (never lowered, never reaching it).
        pg_db.execute("INSERT INTO t VALUES (2, 'b')")
        msgs = parse_all(read_until(stream, commits(1)))
        end2 = next(m for m in msgs if isinstance(m, po.Commit)).end_lsn
        stream.keepalive(force=True)
        assert stream.reported_lsn == before < end2
        stream.confirm(end2)
        stream.keepalive(force=True)
        assert stream.reported_lsn >= end2
    assert (slot_row(pg_db)[0] or 0) >= end2


# -- failures -----------------------------------------------------------------------------


def test_no_empty_transaction_is_delivered_even_when_every_read_splits_one(
        pg_db: Database, reader: str) -> None:
    # One message per read: every Begin arrives apart from its Commit. PostgreSQL 14 sends
    # the unpublished table's transactions as such pairs; none may reach the pipeline
    # (each would be flushed and checkpointed), and the slot still moves past them.
    make_table(pg_db)
    pg_db.execute("CREATE TABLE other (id int PRIMARY KEY)")  # not published
    make_slot(pg_db)
    pg_db.execute("INSERT INTO t VALUES (1, 'a')")
    for i in range(10):
        pg_db.execute("INSERT INTO other VALUES (%s)", (i,))
    pg_db.execute("INSERT INTO t VALUES (2, 'b')")
    wal_now = current_lsn(pg_db)
    delivered: list[bytes] = []
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"],
                                skip_empty_transactions=True) as stream:

        def read_past_the_writes() -> bool:
            chunk = stream.read_chunk(max_bytes=1, timeout_s=0.1)
            if chunk is not None:
                assert len(chunk) == 1
                delivered.extend(chunk.messages())
                for m in parse_all(chunk.messages()):
                    if isinstance(m, po.Commit):
                        stream.confirm(m.end_lsn)
            return commits(2)(delivered) and stream.server_wal_end >= wal_now

        wait_for(read_past_the_writes, what="both changes and a keepalive past the writes")
        assert kinds(delivered).replace("R", "").replace("Y", "") == "BICBIC"
        stream.keepalive(force=True)
        assert stream.reported_lsn >= wal_now


def test_missing_slot(pg_db: Database, reader: str) -> None:
    make_table(pg_db)
    with pytest.raises(SlotLostError, match="'nope' does not exist") as info:
        ReplicationStream.open(pg_db.dsn, "nope", ["pub"])
    assert "dbmazz setup" in str(info.value)
    assert pg_db.server.password not in str(info.value)


def test_tls_required_from_a_server_without_tls_names_the_fix(pg_db: Database) -> None:
    # The test server has no TLS: the fix is on the server or in sslmode, not "is it up?".
    make_table(pg_db)
    make_slot(pg_db)
    sep = "&" if "?" in pg_db.dsn else "?"
    with pytest.raises(SourceError) as info:
        ReplicationStream.open(f"{pg_db.dsn}{sep}sslmode=require", "s1", ["pub"])
    assert not info.value.retryable
    assert "does not accept TLS connections" in info.value.message
    assert info.value.hint is not None and "ssl = on" in info.value.hint
    assert "sslmode" in info.value.hint


def test_missing_publication(pg_db: Database) -> None:
    make_slot(pg_db)
    with pytest.raises(SourceError, match="'no pub' do not exist"):
        ReplicationStream.open(pg_db.dsn, "s1", ["no pub"])


def test_slot_in_use(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]):
        with pytest.raises(SlotInUseError, match="in use by another session") as info:
            ReplicationStream.open(pg_db.dsn, "s1", ["pub"])
        assert info.value.retryable


def test_invalid_slot_name_and_options(pg_db: Database) -> None:
    with pytest.raises(SourceError, match="invalid replication slot name"):
        ReplicationStream.open(pg_db.dsn, "Bad Name", ["pub"])
    with pytest.raises(ValueError, match="proto_version 2"):
        ReplicationStream.open(pg_db.dsn, "s1", ["pub"], streaming=True)


def test_foreign_slot(pg_db: Database) -> None:
    make_table(pg_db)
    pg_db.execute("SELECT pg_create_logical_replication_slot('td', 'test_decoding')")
    with pytest.raises(SourceError, match="not a pgoutput slot"):
        ReplicationStream.open(pg_db.dsn, "td", ["pub"])


def test_wrong_password_and_unreachable_server(pg_db: Database) -> None:
    bad = pg_db.dsn.replace(pg_db.server.password, "not-the-password")
    with pytest.raises(SourceError) as info:
        ReplicationStream.open(bad, "s1", ["pub"])
    assert not info.value.retryable and "not-the-password" not in str(info.value)
    assert "credentials" in str(info.value)
    from dbmazz.testing.postgres import free_port

    unreachable = f"postgresql://u:secret-pw@127.0.0.1:{free_port()}/db"
    with pytest.raises(SourceConnectionError) as info2:
        ReplicationStream.open(unreachable, "s1", ["pub"])
    assert info2.value.retryable and "secret-pw" not in str(info2.value)
    assert "u@127.0.0.1" in str(info2.value)


def test_server_shutdown_is_retryable_and_resume_works(
    private_pg_cluster: PostgresCluster, reader: str) -> None:
    """A fast shutdown completes while dbmazz stays connected and answering (the walsender
    exits only once the reported flush position reaches what it sent), the reader gets a
    retryable error, and a new stream resumes after the confirmed transaction."""
    cluster = private_pg_cluster
    db = cluster.create_database()
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE t", db)
    create_slot(cluster.dsn(db), "s1", export_snapshot=False).close()
    cluster.execute("INSERT INTO t VALUES (1, 'a')", db)
    stream = ReplicationStream.open(cluster.dsn(db), "s1", ["pub"])
    errors: list[BaseException] = []
    try:
        msgs = parse_all(read_until(stream, commits(1)))
        end = next(m for m in msgs if isinstance(m, po.Commit)).end_lsn
        stream.confirm(end)
        stream.keepalive(force=True)
        wait_for(lambda: slot_row_cluster(cluster, db) >= end, what="the confirmation")
        # PostgreSQL < 17 writes a slot's position to disk only at a checkpoint (not at
        # shutdown); without this, restart re-delivers the transaction (allowed by
        # invariant 3, but this test checks the exact resume point).
        cluster.execute("CHECKPOINT", db)

        def reader() -> None:
            deadline = time.monotonic() + 120
            try:
                while time.monotonic() < deadline:
                    stream.read_chunk(timeout_s=0.2)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        cluster.stop("fast")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.dsn(db), connect_timeout=5).close()
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        stream.close()
    assert len(errors) == 1 and isinstance(errors[0], SourceConnectionError), errors
    assert errors[0].retryable
    cluster.start()
    cluster.execute("INSERT INTO t VALUES (2, 'b')", db)
    with ReplicationStream.open(cluster.dsn(db), "s1", ["pub"]) as resumed:
        assert inserted_ids(parse_all(read_until(resumed, commits(1)))) == [2]


def test_invalidated_slot(private_pg_cluster: PostgresCluster, reader: str) -> None:
    cluster = private_pg_cluster
    cluster.set_setting("max_slot_wal_keep_size", "1MB")
    db = cluster.create_database()
    cluster.execute("CREATE TABLE t (id int PRIMARY KEY, v text)", db)
    cluster.execute("CREATE PUBLICATION pub FOR TABLE t", db)
    create_slot(cluster.dsn(db), "s1", export_snapshot=False).close()

    def lost() -> bool:
        with cluster.connect(db) as conn:
            conn.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g "
                         "ON CONFLICT DO NOTHING")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's1'"
            ).fetchone()
        return row is not None and row[0] == "lost"

    wait_for(lost, what="the slot to be invalidated")
    assert slot_info(cluster.dsn(db), "s1").wal_status == "lost"
    with pytest.raises(SlotLostError, match="invalidated") as info:
        ReplicationStream.open(cluster.dsn(db), "s1", ["pub"])
    assert "max_slot_wal_keep_size" in str(info.value)
    assert "SNAPSHOT=initial" in str(info.value)
    with pytest.raises(SlotLostError, match="invalidated"):
        setup_source(cluster.dsn(db), ["t"], "pub", "s1")
    assert slot_info(cluster.dsn(db), "s1").exists  # reported, never dropped


# -- slots ----------------------------------------------------------------------------------


def test_slot_lifecycle_and_exported_snapshot(pg_db: Database) -> None:
    make_table(pg_db)
    pg_db.execute("INSERT INTO t VALUES (1, 'before')")
    with create_slot(pg_db.dsn, "snap", export_snapshot=True) as creation:
        assert creation.snapshot_name
        pg_db.execute("INSERT INTO t VALUES (2, 'after')")
        with pg_db.connect(autocommit=False) as reader:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reader.execute(f"SET TRANSACTION SNAPSHOT '{creation.snapshot_name}'")
            assert reader.execute("SELECT id FROM t").fetchall() == [(1,)]
            reader.rollback()
    info = slot_info(pg_db.dsn, "snap")
    assert info.exists and not info.active and info.plugin == "pgoutput"
    assert info.confirmed_flush_lsn == creation.consistent_point
    assert info.database == pg_db.name and info.wal_status == "reserved"
    # The change made after the snapshot is exactly what the slot streams first.
    with ReplicationStream.open(pg_db.dsn, "snap", ["pub"]) as stream:
        assert inserted_ids(parse_all(read_until(stream, commits(1)))) == [2]
    assert drop_slot(pg_db.dsn, "snap") is True
    assert drop_slot(pg_db.dsn, "snap") is False
    assert not slot_info(pg_db.dsn, "snap").exists
