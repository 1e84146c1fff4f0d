"""Batcher: flush boundaries, split transactions, ordering of control steps."""

from __future__ import annotations

import pytest

from dbmazz.errors import ProtocolError, SetupError
from dbmazz.pipeline.batch import SplitPart
from dbmazz.pipeline.batcher import Batcher, Flush, RowsStep, SchemaStep, TruncateStep
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.source.chunk import WalChunk
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.testing import wal

T1 = Relation(16384, "public", "a", "d", (
    RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, False)))
T2 = Relation(16385, "public", "b", "d", (
    RelationColumn("id", 23, -1, True), RelationColumn("w", 25, -1, False)))
T1_WIDER = Relation(16384, "public", "a", "d", (*T1.columns, RelationColumn("x", 23, -1, False)))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(flush_rows: int = 1000, flush_bytes: int = 1 << 30, interval_ms: int = 1000,
         clock: Clock | None = None) -> Batcher:
    schemas = SchemaCache(keys_from_map({}))
    return Batcher(schemas, flush_rows=flush_rows, flush_bytes=flush_bytes,
                   flush_interval_ms=interval_ms, clock=clock or Clock())


def txn(lsn: int, *changes: bytes) -> list[bytes]:
    return [wal.begin(lsn), *changes, wal.commit(lsn, lsn + 8)]


def chunk(*groups: list[bytes] | bytes) -> WalChunk:
    messages: list[bytes] = []
    for g in groups:
        messages.extend(g if isinstance(g, list) else [g])
    return WalChunk.from_messages(messages, range(1, len(messages) + 1))


def rows_of(flush: Flush, oid: int) -> list[int]:
    """Commit LSNs of the changes of one table in a flush, in order."""
    out: list[int] = []
    for step in flush.steps.get(oid, []):
        if isinstance(step, RowsStep):
            for slab in step.slabs:
                out.extend(int(x) for x in slab.commit_lsns)
    return out


def test_flush_cut_at_commit_once_rows_reach_the_limit() -> None:
    b = make(flush_rows=3)
    flushes = b.add(chunk(
        wal.relation(T1), wal.relation(T2),
        txn(100, wal.insert(T1.oid, ["1", "x"]), wal.insert(T2.oid, ["1", "y"])),
        txn(200, wal.insert(T1.oid, ["2", "x"]), wal.insert(T1.oid, ["3", "x"])),
        txn(300, wal.insert(T2.oid, ["2", "y"])),
    ))
    assert len(flushes) == 1
    [flush] = flushes
    assert flush.end_lsn == 208 and flush.rows == 4 and flush.split is None
    assert rows_of(flush, T1.oid) == [100, 200, 200]
    assert rows_of(flush, T2.oid) == [100]
    # The first flush also carries the tables' creation (first Relation messages).
    assert isinstance(flush.steps[T1.oid][0], SchemaStep)
    [rest] = b.drain()
    assert rest.end_lsn == 308 and rows_of(rest, T2.oid) == [300]


def test_transaction_spanning_chunks_is_not_cut_early() -> None:
    b = make(flush_rows=2)
    first = b.add(chunk(wal.relation(T1), wal.begin(100),
                        wal.insert(T1.oid, ["1", "x"])))
    assert first == [] and b.in_transaction
    done = b.add(chunk(wal.insert(T1.oid, ["2", "x"]), wal.commit(100, 108)))
    assert [f.end_lsn for f in done] == [108]
    assert rows_of(done[0], T1.oid) == [100, 100]
    assert not b.in_transaction


def test_large_transaction_is_split_and_its_commit_ends_a_flush() -> None:
    b = make(flush_rows=10)
    inserts = [wal.insert(T1.oid, [str(i), "v"]) for i in range(25)]
    flushes = b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["0", "v"]))))
    flushes += b.add(chunk(wal.begin(500), *inserts[:12]))
    flushes += b.add(chunk(*inserts[12:]))
    flushes += b.add(chunk(wal.commit(500, 508), *txn(600, wal.insert(T1.oid, ["99", "v"]))))
    flushes += b.drain()
    summary = [(f.end_lsn, f.split, f.rows) for f in flushes]
    assert summary == [
        (108, None, 1),  # the small committed transaction goes out on its own first
        # Parts are cut exactly at FLUSH_ROWS, wherever the chunk boundaries fall.
        (0, SplitPart(500, 0, False), 10),
        (0, SplitPart(500, 1, False), 10),
        (508, SplitPart(500, 2, True), 5),
        (608, None, 1),
    ]


def test_large_transaction_whole_in_one_chunk_is_split_like_one_spanning_chunks() -> None:
    """How much of a transaction one read holds depends on how far the reader lags (and a
    committed streamed transaction comes whole): the flushes must not."""
    inserts = [wal.insert(T1.oid, [str(i), "v"]) for i in range(25)]
    messages = [wal.relation(T1), *txn(100, wal.insert(T1.oid, ["0", "v"])),
                *txn(500, *inserts), *txn(600, wal.insert(T1.oid, ["99", "v"]))]

    def flushes(*cuts: int) -> list[tuple[int, SplitPart | None, int]]:
        b = make(flush_rows=10)
        got: list[Flush] = []
        for lo, hi in zip((0, *cuts), (*cuts, len(messages)), strict=True):
            got += b.add(chunk(messages[lo:hi]))
        return [(f.end_lsn, f.split, f.rows) for f in [*got, *b.drain()]]

    whole = flushes()
    assert whole == [
        (108, None, 1),
        (0, SplitPart(500, 0, False), 10),
        (0, SplitPart(500, 1, False), 10),
        (508, SplitPart(500, 2, True), 5),
        (608, None, 1),
    ]
    assert flushes(5, 17) == flushes(10) == whole


def test_transaction_at_the_limits_in_one_chunk_is_not_split() -> None:
    b = make(flush_rows=10)
    inserts = [wal.insert(T1.oid, [str(i), "v"]) for i in range(10)]
    flushes = b.add(chunk(wal.relation(T1), txn(500, *inserts)))
    flushes += b.drain()
    assert [(f.end_lsn, f.split, f.rows) for f in flushes] == [(508, None, 10)]


def test_large_transaction_in_one_chunk_is_split_by_bytes() -> None:
    inserts = [wal.insert(T1.oid, [str(i), "v" * 90]) for i in range(10)]  # 109 bytes each

    def flushes(*chunks: list[bytes]) -> list[tuple[int, SplitPart | None, int, int]]:
        b = make(flush_bytes=400)
        got = [f for c in chunks for f in b.add(chunk(c))] + b.drain()
        return [(f.end_lsn, f.split, f.rows, f.nbytes) for f in got]

    whole = flushes([wal.relation(T1), *txn(500, *inserts)])
    assert [(lsn, split, rows) for lsn, split, rows, _ in whole] == [
        (0, SplitPart(500, 0, False), 4),
        (0, SplitPart(500, 1, False), 4),
        (508, SplitPart(500, 2, True), 2),
    ]
    assert whole == flushes([wal.relation(T1), wal.begin(500), *inserts[:3]],
                            [*inserts[3:], wal.commit(500, 508)])


def test_relation_change_orders_rows_around_the_schema_step() -> None:
    b = make()
    b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]))))
    b.add(chunk(wal.relation(T1), txn(200, wal.insert(T1.oid, ["2", "y"]))))  # same shape
    b.add(chunk(wal.relation(T1_WIDER), txn(300, wal.insert(T1.oid, ["3", "z", "7"]))))
    [flush] = b.drain()
    kinds = [type(s).__name__ for s in flush.steps[T1.oid]]
    assert kinds == ["SchemaStep", "RowsStep", "SchemaStep", "RowsStep"]
    before, after = flush.steps[T1.oid][1], flush.steps[T1.oid][3]
    assert isinstance(before, RowsStep) and isinstance(after, RowsStep)
    assert before.relation == T1 and before.rows == 2
    assert after.relation == T1_WIDER and after.rows == 1
    delta = flush.steps[T1.oid][2]
    assert isinstance(delta, SchemaStep) and [c.name for c in delta.delta.added] == ["x"]


def test_a_new_column_order_without_a_schema_change_starts_a_new_step() -> None:
    # DROP COLUMN v + ADD COLUMN v: same names and types, v now last. No schema step (the
    # sink has nothing to change), but the rows after it decode with the new order.
    wide = Relation(16384, "public", "a", "d", (
        RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, False),
        RelationColumn("w", 25, -1, False)))
    moved = Relation(16384, "public", "a", "d", (
        RelationColumn("id", 20, -1, True), RelationColumn("w", 25, -1, False),
        RelationColumn("v", 25, -1, False)))
    b = make()
    b.add(chunk(wal.relation(wide), txn(100, wal.insert(wide.oid, ["1", "v1", "w1"]),
                                         wal.relation(moved),
                                         wal.insert(wide.oid, ["2", "w2", "v2"]))))
    [flush] = b.drain()
    kinds = [type(s).__name__ for s in flush.steps[wide.oid]]
    assert kinds == ["SchemaStep", "RowsStep", "RowsStep"]
    first, second = flush.steps[wide.oid][1:]
    assert isinstance(first, RowsStep) and isinstance(second, RowsStep)
    assert (first.relation, first.rows) == (wide, 1)
    assert (second.relation, second.rows) == (moved, 1)


def test_a_changed_primary_key_in_a_relation_message_is_an_error() -> None:
    # Under REPLICA IDENTITY DEFAULT the Relation message flags the key columns: another
    # key than the one dbmazz loads by is a primary key changed while streaming.
    rekeyed = Relation(16384, "public", "a", "d", (
        RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, True)))
    b = Batcher(SchemaCache(keys_from_map({"public.a": ["id"]})), flush_rows=1000,
                flush_bytes=1 << 30, flush_interval_ms=1000, clock=Clock())
    b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]))))
    with pytest.raises(SetupError, match=r"primary key of public\.a changed while streaming"):
        b.add(chunk(wal.relation(rekeyed), txn(200, wal.insert(T1.oid, ["1", "y"]))))
    full = Relation(16384, "public", "a", "f", (
        RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, True)))
    b = Batcher(SchemaCache(keys_from_map({"public.a": ["id"]})), flush_rows=1000,
                flush_bytes=1 << 30, flush_interval_ms=1000, clock=Clock())
    b.add(chunk(wal.relation(T1), wal.relation(full)))  # FULL flags every column: no sign


class Catalog:
    """The source catalog's key of each table oid now (absent: the table is gone)."""

    def __init__(self, keys: dict[int, tuple[str, ...]]) -> None:
        self.keys = keys
        self.asked: list[int] = []

    def current_key(self, oid: int) -> tuple[str, ...] | None:
        self.asked.append(oid)
        return self.keys.get(oid)

    def close(self) -> None:
        pass


def keyed_by_id(catalog: Catalog) -> Batcher:
    """A batcher for public.a, keyed by id, whose schema cache asks ``catalog``."""
    return Batcher(SchemaCache(keys_from_map({"public.a": ["id"]}), catalog=catalog),
                   flush_rows=1000, flush_bytes=1 << 30, flush_interval_ms=1000, clock=Clock())


def test_under_full_identity_a_relation_sent_again_is_checked_against_the_catalog() -> None:
    full = Relation(16384, "public", "a", "f", (
        RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, True)))
    catalog = Catalog({full.oid: ("id",)})
    b = keyed_by_id(catalog)
    b.add(chunk(wal.relation(full), txn(100, wal.insert(full.oid, ["1", "x"]))))
    assert catalog.asked == []  # the first message: its key was just read with the catalog
    b.add(chunk(wal.relation(full), txn(200, wal.insert(full.oid, ["1", "y"]))))
    assert catalog.asked == [full.oid]
    del catalog.keys[full.oid]  # dropped since: the changes before the drop still load
    b.add(chunk(wal.relation(full), txn(300, wal.insert(full.oid, ["2", "y"]))))
    catalog.keys[full.oid] = ("id", "v")
    with pytest.raises(SetupError, match=r"primary key of public\.a changed while streaming: "
                       r"its primary key is \(id, v\), the target is keyed by \(id\)"):
        b.add(chunk(wal.relation(full), txn(400, wal.insert(full.oid, ["1", "z"]))))


def test_truncate_is_a_step_between_rows() -> None:
    b = make()
    b.add(chunk(wal.relation(T1), wal.relation(T2),
                txn(100, wal.insert(T1.oid, ["1", "x"])),
                txn(200, wal.truncate([T1.oid, T2.oid])),
                txn(300, wal.insert(T1.oid, ["2", "x"]))))
    [flush] = b.drain()
    kinds = [type(s).__name__ for s in flush.steps[T1.oid]]
    assert kinds == ["SchemaStep", "RowsStep", "TruncateStep", "RowsStep"]
    assert isinstance(flush.steps[T2.oid][-1], TruncateStep)


def test_interval_flush_and_heartbeat_only_commits() -> None:
    clock = Clock()
    b = make(interval_ms=500, clock=clock)
    assert b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"])))) == []
    assert b.poll() == []
    clock.now = 0.6
    [flush] = b.poll()
    assert flush.end_lsn == 108
    # A transaction with only a logical message still moves the durable LSN.
    b.add(chunk(txn(200, wal.message("dbmazz_heartbeat", b""))))
    clock.now = 2.0
    [beat] = b.poll()
    assert beat.end_lsn == 208 and beat.rows == 0 and beat.steps == {}
    assert b.messages_seen == {"dbmazz_heartbeat": 1}
    assert b.poll() == []


def test_an_idle_source_after_full_batches_flushes_the_rest_at_once() -> None:
    # A backlog read at full batches: its tail goes when the source has nothing more, not
    # an interval later. The clock never moves here.
    b = make(flush_rows=2, interval_ms=60_000)
    [full] = b.add(chunk(
        wal.relation(T1),
        txn(100, wal.insert(T1.oid, ["1", "x"]), wal.insert(T1.oid, ["2", "x"])),
        txn(200, wal.insert(T1.oid, ["3", "x"])),
    ))
    assert full.end_lsn == 108
    assert b.poll() == []  # more may come: the interval still rules
    [tail] = b.poll(idle=True)
    assert tail.end_lsn == 208 and rows_of(tail, T1.oid) == [200]
    # Once used, the rule waits for the next full batch: a trickle after a backlog waits
    # for the interval, idle or not.
    b.add(chunk(txn(300, wal.insert(T1.oid, ["4", "x"]))))
    assert b.poll(idle=True) == []


def test_a_trickle_waits_for_the_interval_even_when_the_source_is_idle() -> None:
    clock = Clock()
    b = make(flush_rows=2, interval_ms=500, clock=clock)
    b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]))))
    assert b.poll(idle=True) == []
    clock.now = 0.6
    [flush] = b.poll(idle=True)
    assert flush.end_lsn == 108


def test_a_backlog_slower_than_a_flush_per_interval_ends_without_waiting() -> None:
    # Full batches, then a flush cut by the interval while the source never ran dry: still
    # a backlog, so its end goes at once.
    clock = Clock()
    b = make(flush_rows=2, interval_ms=500, clock=clock)
    [full] = b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]),
                                              wal.insert(T1.oid, ["2", "x"]))))
    assert full.end_lsn == 108
    b.add(chunk(txn(200, wal.insert(T1.oid, ["3", "x"]))))
    clock.now = 0.6
    [by_interval] = b.poll()
    assert by_interval.end_lsn == 208
    b.add(chunk(txn(300, wal.insert(T1.oid, ["4", "x"]))))
    [tail] = b.poll(idle=True)
    assert tail.end_lsn == 308


def test_once_the_source_ran_dry_the_next_batch_waits_for_the_interval() -> None:
    clock = Clock()
    b = make(flush_rows=2, interval_ms=500, clock=clock)
    b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]),
                                      wal.insert(T1.oid, ["2", "x"]))))
    assert b.poll(idle=True) == []  # dry, with nothing committed left to load
    b.add(chunk(txn(200, wal.insert(T1.oid, ["3", "x"]))))
    clock.now = 0.6
    [by_interval] = b.poll()
    assert by_interval.end_lsn == 208
    # That flush closed a trickle's batch: the next one waits for the interval too.
    b.add(chunk(txn(300, wal.insert(T1.oid, ["4", "x"]))))
    assert b.poll(idle=True) == []
    clock.now = 1.2
    [later] = b.poll(idle=True)
    assert later.end_lsn == 308


def test_due_in_counts_down_to_the_interval_flush() -> None:
    clock = Clock()
    b = make(interval_ms=500, clock=clock)
    assert b.due_in() is None  # nothing pending: no deadline
    b.add(chunk(wal.relation(T1), [wal.begin(100), wal.insert(T1.oid, ["1", "x"])]))
    assert b.due_in() is None  # an open transaction cannot be flushed yet
    b.add(chunk(wal.commit(100, 108)))
    clock.now = 0.2
    assert b.due_in() == pytest.approx(0.3)
    assert b.poll() == []
    clock.now = 0.7
    assert b.due_in() == 0.0
    [flush] = b.poll()
    assert flush.end_lsn == 108
    assert b.due_in() is None


def test_unknown_message_type_is_a_protocol_error() -> None:
    b = make()
    with pytest.raises(ProtocolError, match="0x5a"):
        b.add(chunk(wal.begin(100), b"Z\x00\x00"))


def test_an_identity_index_other_than_the_primary_key_is_named_as_such() -> None:
    # ALTER TABLE … REPLICA IDENTITY USING INDEX on a unique index that is not the primary
    # key: the Relation message flags that index's columns. The key did not change (the
    # catalog says so), so the error names the identity and the ALTER that undoes it, not a
    # primary-key change and a reload "with the new key".
    by_code = Relation(16384, "public", "a", "i", (
        RelationColumn("id", 20, -1, False), RelationColumn("v", 25, -1, True)))
    catalog = Catalog({by_code.oid: ("id",)})
    b = keyed_by_id(catalog)
    b.add(chunk(wal.relation(T1), txn(100, wal.insert(T1.oid, ["1", "x"]))))
    with pytest.raises(SetupError, match=r"replica identity of public\.a was set while "
                       r"streaming to an index on \(v\), not its primary key \(id\)") as err:
        b.add(chunk(wal.relation(by_code), txn(200, wal.insert(T1.oid, ["1", "y"]))))
    assert "ALTER TABLE public.a REPLICA IDENTITY FULL" in (err.value.hint or "")
    catalog.keys[by_code.oid] = ("v",)  # the key itself moved to v: a key change
    with pytest.raises(SetupError, match=r"primary key of public\.a changed while streaming"):
        b.add(chunk(wal.relation(by_code), txn(300, wal.insert(T1.oid, ["1", "z"]))))
