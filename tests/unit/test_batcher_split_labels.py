"""A split part carries the commit LSN of the transaction it belongs to (found by the
crash suite: a transaction begun in an earlier chunk, split in a chunk that also begins the
next transaction, was labelled with the next one's LSN — StarRocks labels then collided and
the later transaction's rows were skipped as "already loaded")."""

from __future__ import annotations

from dbmazz.testing import wal
from tests.unit.test_batcher import T1, T2, chunk, make, rows_of


def test_split_part_of_a_transaction_begun_earlier_keeps_its_commit_lsn() -> None:
    b = make(flush_rows=3)
    first = b.add(chunk(wal.relation(T1), wal.relation(T2), wal.begin(100),
                        wal.insert(T1.oid, ["1", "x"])))
    assert first == []
    # The rest of transaction 100 (more than a part), its commit, then transaction 200.
    flushes = b.add(chunk(
        wal.insert(T1.oid, ["2", "x"]), wal.insert(T1.oid, ["3", "x"]),
        wal.insert(T2.oid, ["4", "y"]), wal.insert(T2.oid, ["5", "y"]),
        wal.commit(100, 108),
        wal.begin(200), wal.insert(T1.oid, ["6", "x"]),
    ))
    parts = [f for f in flushes if f.split is not None]
    assert parts, flushes
    assert {f.split.commit_lsn for f in parts if f.split} == {100}
    last = [f for f in parts if f.split and f.split.last]
    assert [f.end_lsn for f in last] == [108]
    assert all(set(rows_of(f, T1.oid) + rows_of(f, T2.oid)) <= {100} for f in parts)
    [rest] = b.drain() or [None]
    assert rest is None or rest.split is None
