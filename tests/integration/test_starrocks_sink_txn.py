"""Source transactions split across batches: the transaction interface makes StarRocks show
all of one or nothing, including across failures, restarts and replays."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dbmazz.contract import OP_UPDATE
from dbmazz.errors import SinkReplayRequired
from dbmazz.pipeline.batch import SplitPart, TableBatch
from dbmazz.sink.starrocks.labels import make_label
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.integration import test_starrocks_sink as base
from tests.integration.test_starrocks_sink import (
    DB,
    ITEMS,
    SLOT,
    SinkFactory,
    batch,
    deletes,
    select,
    upsert,
)

make_sink = base.make_sink  # the fixture, shared with the base module

TX = 5000  # commit LSN of the big source transaction


def seg(n: int) -> str:
    return make_label(SLOT, "items", TX, TX, f"s{n}")


def row(i: int, name: str = "tx") -> dict[str, object]:
    return {"id": i, "name": f"{name}{i}", "qty": i, "price": Decimal(i)}


def parts(*bodies: tuple[list, object], truncate_at: int | None = None) -> list[TableBatch]:
    """One TableBatch per part; ``bodies`` are (upsert groups, deletes) pairs."""
    out = []
    for i, (groups, dels) in enumerate(bodies):
        split = SplitPart(TX, i, i == len(bodies) - 1)
        out.append(batch(ITEMS, groups, dels, lsn=TX, split=split, truncate=i == truncate_at))
    return out


def simple_parts() -> list[TableBatch]:
    return parts(
        ([upsert(ITEMS, [row(1), row(2)], TX)], None),
        ([upsert(ITEMS, [row(3)], TX)], None),
        ([upsert(ITEMS, [row(4)], TX)], None),
    )


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_nothing_is_visible_before_the_last_part(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
    fmt: str,
) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([ITEMS])
    first, middle, last = simple_parts()
    assert sink.write(first).label == seg(0)
    sink.write(middle)
    assert select(starrocks, "items") == []
    assert starrocks.label_state(DB, seg(0)) == "PREPARE"
    sink.write(last)
    assert starrocks.label_state(DB, seg(0)) == "VISIBLE"
    assert select(starrocks, "items", "id, name, dbmazz_cdc_version") == [
        (i, f"tx{i}", TX) for i in (1, 2, 3, 4)
    ]


def test_shape_changes_keep_source_order(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(9, "old")], 100)], lsn=100))
    batches = parts(
        ([upsert(ITEMS, [row(1), row(2), row(3)], TX)], None),
        # A partial update of 3 and a delete of 2 (two shapes), then 2 comes back.
        (
            [upsert(ITEMS, [{"id": 3, "qty": 33}], TX, columns=["id", "qty"], op=OP_UPDATE)],
            deletes(ITEMS, [{"id": 2}, {"id": 9}], TX),
        ),
        ([upsert(ITEMS, [row(2, "again")], TX)], None),
    )
    for b in batches[:-1]:
        sink.write(b)
    assert select(starrocks, "items", "id, name") == [(9, "old9")]
    sink.write(batches[-1])
    assert select(starrocks, "items", "id, name, qty, dbmazz_is_deleted") == [
        (1, "tx1", 1, 0),
        (2, "again2", 2, 0),
        (3, "tx3", 33, 0),
        (9, "old9", 9, 1),
    ]
    assert [starrocks.label_state(DB, seg(n)) for n in range(4)] == ["VISIBLE"] * 4


def test_hard_deletes_inside_a_split_transaction(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink(delete_mode="hard", load_format="csv")
    sink.setup([ITEMS])
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(7, "old")], 100)], lsn=100))
    for b in parts(
        ([upsert(ITEMS, [row(1), row(2)], TX)], None),
        ([], deletes(ITEMS, [{"id": 1}, {"id": 7}], TX)),
    ):
        sink.write(b)
    assert select(starrocks, "items", "id") == [(2,)]


def test_truncate_inside_a_split_transaction(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(8, "old")], 100)], lsn=100))
    for b in parts(
        ([upsert(ITEMS, [row(1)], TX)], None),
        ([upsert(ITEMS, [row(2)], TX)], None),
        ([upsert(ITEMS, [row(3)], TX)], None),
        truncate_at=1,
    ):
        sink.write(b)
    assert select(starrocks, "items", "id") == [(2,), (3,)]


def test_connection_reset_mid_load_rolls_back_and_asks_for_a_replay(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    first, middle, last = simple_parts()
    sink.write(first)
    starrocks.faults.connection_reset(after_bytes=5, label=seg(0))
    with pytest.raises(SinkReplayRequired) as info:
        sink.write(middle)
    assert info.value.retryable and info.value.table == "items"
    assert starrocks.label_state(DB, seg(0)) == "ABORTED"
    assert select(starrocks, "items") == []
    # Retrying that part alone cannot be right: its earlier parts are gone.
    with pytest.raises(SinkReplayRequired):
        sink.write(last)
    for b in simple_parts():
        sink.write(b)
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_too_many_versions_at_prepare_asks_for_a_replay(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    batches = simple_parts()
    sink.write(batches[0])
    sink.write(batches[1])
    starrocks.faults.too_many_versions(label=seg(0))
    with pytest.raises(SinkReplayRequired):
        sink.write(batches[2])
    assert select(starrocks, "items") == []
    for b in simple_parts():
        sink.write(b)
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_transient_errors_on_transaction_calls_are_retried(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    f1 = starrocks.faults.txn_in_processing(op="load")
    f2 = starrocks.faults.running_txn_limit()  # refuses `begin`
    f3 = starrocks.faults.be_unreachable()  # the 307 of some call points nowhere
    f4 = starrocks.faults.txn_in_processing(op="prepare")
    f5 = starrocks.faults.txn_in_processing(op="commit")
    f6 = starrocks.faults.publish_timeout(label=seg(0))
    for b in simple_parts():
        sink.write(b)
    assert [f.fired for f in (f1, f2, f3, f4, f5, f6)] == [1] * 6
    starrocks.publish_pending()
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_restart_in_the_middle_rolls_back_the_stale_transaction(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    crashed = make_sink()
    crashed.setup([ITEMS])
    batches = simple_parts()
    crashed.write(batches[0])
    crashed.write(batches[1])  # ... and the process dies: s0 stays in PREPARE
    assert starrocks.label_state(DB, seg(0)) == "PREPARE"
    restarted = make_sink()
    restarted.setup([ITEMS])
    for b in simple_parts():
        restarted.write(b)
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]
    assert starrocks.label_state(DB, seg(0)) == "VISIBLE"


def test_replay_of_a_committed_transaction_keeps_later_changes(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    for b in simple_parts():
        sink.write(b)
    # A later transaction changed row 1: the replay of the committed one (its segments load
    # again, see the next test) cannot undo it — the version guard keeps the newer row.
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(1, "later")], TX + 10)], lsn=TX + 10))
    replay = make_sink()
    for b in simple_parts():
        replay.write(b)
    assert select(starrocks, "items", "id, name") == [
        (1, "later1"),
        (2, "tx2"),
        (3, "tx3"),
        (4, "tx4"),
    ]


def test_a_replay_cut_into_other_parts_loads_every_row(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    # One source transaction: insert 1, 2; delete 9; insert 3, 4. The first run cuts it in
    # three parts (segments s0 = 1, 2; s1 = the delete; s2 = 3, 4) and dies after s0 is
    # committed. The replay (another FLUSH_ROWS) holds it in one part: its s0 is 1-4.
    from dbmazz.errors import SinkError
    from dbmazz.sink.starrocks import RetryPolicy

    crashed = make_sink(retry=RetryPolicy(max_attempts=1, max_elapsed=None, base_delay=0.01))
    crashed.setup([ITEMS])
    crashed.write(batch(ITEMS, [upsert(ITEMS, [row(9, "old")], 100)], lsn=100))
    starrocks.faults.txn_in_processing(times=None, op="commit", label=seg(1))
    first = parts(
        ([upsert(ITEMS, [row(1), row(2)], TX)], None),
        ([], deletes(ITEMS, [{"id": 9}], TX)),
        ([upsert(ITEMS, [row(3), row(4)], TX)], None),
    )
    with pytest.raises(SinkError):
        for b in first:
            crashed.write(b)
    assert starrocks.label_state(DB, seg(0)) == "VISIBLE"
    assert select(starrocks, "items", "id") == [(1,), (2,), (9,)]
    starrocks.faults.clear()
    restarted = make_sink()
    restarted.setup([ITEMS])
    [whole] = parts(([upsert(ITEMS, [row(i) for i in (1, 2, 3, 4)], TX)],
                     deletes(ITEMS, [{"id": 9}], TX)))
    restarted.write(whole)
    assert select(starrocks, "items", "id, name, dbmazz_is_deleted") == [
        (1, "tx1", 0), (2, "tx2", 0), (3, "tx3", 0), (4, "tx4", 0), (9, "old9", 1)]


def test_a_retried_last_part_does_not_load_twice(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    from dbmazz.errors import SinkError
    from dbmazz.sink.starrocks import RetryPolicy

    sink = make_sink(retry=RetryPolicy(max_attempts=2, max_elapsed=None, base_delay=0.01))
    sink.setup([ITEMS])
    batches = simple_parts()
    sink.write(batches[0])
    sink.write(batches[1])
    fault = starrocks.faults.txn_in_processing(times=2, op="commit")
    with pytest.raises(SinkError) as info:
        sink.write(batches[2])
    assert info.value.retryable and not isinstance(info.value, SinkReplayRequired)
    assert fault.fired == 2 and starrocks.label_state(DB, seg(0)) == "PREPARED"
    sink.write(batches[2])  # the engine retries the same part
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_several_writes_for_one_part(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    # The engine writes each step of a part (rows, schema change, rows) separately.
    sink = make_sink()
    sink.setup([ITEMS])
    first = SplitPart(TX, 0, False)
    last = SplitPart(TX, 1, True)
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(1)], TX)], lsn=TX, split=first))
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(2)], TX)], lsn=TX, split=first))
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(3)], TX)], lsn=TX, split=last))
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,)]
    # A further step of the last part after the commit still lands (in its own segment).
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(4)], TX)], lsn=TX, split=last))
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_a_table_absent_from_the_last_part_is_committed_by_the_next_batch(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(1)], TX)], lsn=TX, split=SplitPart(TX, 0, False)))
    assert select(starrocks, "items") == []
    # The transaction's last part had no rows for this table; the next transaction has.
    sink.write(batch(ITEMS, [upsert(ITEMS, [row(2, "next")], TX + 10)], lsn=TX + 10))
    assert select(starrocks, "items", "id, name") == [(1, "tx1"), (2, "next2")]


def test_the_first_part_again_starts_over(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    batches = simple_parts()
    sink.write(batches[0])
    sink.write(batches[1])
    for b in simple_parts():  # the engine restarted from the checkpoint
        sink.write(b)
    assert select(starrocks, "items", "id") == [(1,), (2,), (3,), (4,)]


def test_a_table_may_begin_at_a_later_part(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    """A table with no rows in the first parts of a source transaction begins at part k."""
    sink = make_sink()
    sink.setup([ITEMS])
    _, middle, last = simple_parts()
    sink.write(middle)
    assert select(starrocks, "items") == []
    sink.write(last)
    assert select(starrocks, "items", "id") == [(3,), (4,)]


def test_after_a_dropped_transaction_only_its_first_part_restarts_it(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    _, middle, last = simple_parts()
    sink.write(middle)  # this table's rows begin at part 1
    starrocks.faults.connection_reset(after_bytes=5, label=seg(0))
    with pytest.raises(SinkReplayRequired):
        sink.write(last)
    with pytest.raises(SinkReplayRequired):
        sink.write(last)  # part 2 alone would commit half of the source transaction
    assert select(starrocks, "items") == []
    _, middle, last = simple_parts()
    sink.write(middle)
    sink.write(last)
    assert select(starrocks, "items", "id") == [(3,), (4,)]
