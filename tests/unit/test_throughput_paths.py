"""The throughput paths: slabs joined before decoding, commits routed in runs, small chunks
gathered by the engine, JSON bodies rendered in slices. Each must give exactly what the
straightforward path gives."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pyarrow as pa
import pytest

from dbmazz.engine.core import Engine, Settings
from dbmazz.pipeline.batcher import Batcher, Flush, RowsStep, Slab, join_slabs
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.sink.starrocks import serialize as serialize_module
from dbmazz.sink.starrocks.serialize import serialize
from dbmazz.source.chunk import WalChunk
from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.state.checkpoint import MemoryCheckpointStore
from dbmazz.testing import wal
from dbmazz.testing.sinks import NullSink

A = Relation(16384, "public", "a", "d", (
    RelationColumn("id", 20, -1, True), RelationColumn("v", 25, -1, False)))
B = Relation(16385, "public", "b", "d", (
    RelationColumn("id", 23, -1, True), RelationColumn("w", 25, -1, False)))


def _batcher(flush_rows: int, flush_bytes: int = 1 << 30) -> Batcher:
    return Batcher(SchemaCache(keys_from_map({})), flush_rows=flush_rows,
                   flush_bytes=flush_bytes, flush_interval_ms=10**9, clock=lambda: 0.0)


def _stream(rng: random.Random, txns: int) -> list[bytes]:
    """Relations, then transactions of 1–4 changes on two tables (interleaved)."""
    messages = [wal.relation(A), wal.relation(B)]
    key = 0
    for t in range(txns):
        lsn = 1000 + 100 * t
        messages.append(wal.begin(lsn))
        for _ in range(rng.randint(1, 4)):
            key += 1
            rel = A if rng.random() < 0.6 else B
            messages.append(wal.insert(rel.oid, [str(key), "x" * rng.randint(0, 30)]))
        messages.append(wal.commit(lsn, lsn + 50))
    return messages


def _chunks(messages: list[bytes], cuts: list[int]) -> list[WalChunk]:
    bounds = [0, *cuts, len(messages)]
    return [WalChunk.from_messages(messages[a:b], range(a + 1, b + 1))
            for a, b in itertools.pairwise(bounds) if b > a]


def _shape(flushes: list[Flush]) -> list[tuple[int, int, list[tuple[int, list[int]]]]]:
    out = []
    for f in flushes:
        tables = []
        for oid, steps in sorted(f.steps.items()):
            lsns = [int(x) for s in steps if isinstance(s, RowsStep)
                    for slab in s.slabs for x in slab.commit_lsns]
            tables.append((oid, lsns))
        out.append((f.end_lsn, f.rows, tables))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_commit_runs_cut_exactly_where_commit_by_commit_would(seed: int) -> None:
    rng = random.Random(seed)
    messages = _stream(rng, 120)
    # Limits above one transaction's size: no transaction is split, so where flushes are
    # cut cannot depend on how the stream was chunked.
    flush_rows = rng.randint(5, 12)
    flush_bytes = rng.choice([1 << 30, 300, 700])
    results = []
    # One message per chunk is the commit-by-commit reference; then random chunkings.
    for cuts in (list(range(1, len(messages))), [],
                 sorted(rng.sample(range(1, len(messages)), 25))):
        b = _batcher(flush_rows, flush_bytes)
        flushes = [f for c in _chunks(messages, cuts) for f in b.add(c)] + b.drain()
        results.append(_shape(flushes))
    assert results[0] == results[1] == results[2]
    assert all(end_lsn for end_lsn, _, _ in results[0])  # no split parts
    assert sum(rows for _, rows, _ in results[0]) == sum(
        1 for m in messages if m[:1] == b"I")


def _decode(slab: Slab, rel: Relation) -> pa.Table:
    batch = decode_changes(rel, ("id",), slab.data, slab.starts, slab.commit_lsns)
    return pa.Table.from_batches([batch]).drop_columns(["__dbmazz_seq"])


@pytest.mark.parametrize("interleaved", [False, True])
def test_joined_slabs_decode_like_the_slabs_one_by_one(interleaved: bool) -> None:
    rng = random.Random(3)
    messages = _stream(rng, 200)
    if not interleaved:  # one table only: dense slabs
        messages = [m for m in messages if not (m[:1] == b"I" and m[1:5] == B.oid.to_bytes(4,
                                                                                       "big"))]
    cuts = sorted(rng.sample(range(1, len(messages)), 30))
    b = _batcher(10**9)
    for c in _chunks(messages, cuts):
        assert b.add(c) == []
    [flush] = b.drain()
    step = next(s for s in flush.steps[A.oid] if isinstance(s, RowsStep))
    assert len(step.slabs) > 1
    joined = join_slabs(step.slabs)
    assert len(joined) == sum(len(s) for s in step.slabs)
    one_by_one = pa.concat_tables([_decode(s, A) for s in step.slabs])
    assert _decode(joined, A).equals(one_by_one)


def test_join_slabs_of_nothing_and_of_one() -> None:
    empty = join_slabs([])
    assert len(empty) == 0 and len(empty.data) == 0
    b = _batcher(10**9)
    b.add(_chunks(_stream(random.Random(1), 3), [])[0])
    [flush] = b.drain()
    [slab] = next(s for s in flush.steps[A.oid] if isinstance(s, RowsStep)).slabs
    assert join_slabs([slab]) is slab


class _Trickle:
    """A source handing out one message per read, like a socket read of a few bytes."""

    reads_socket = False
    exhausted = False
    server_wal_end = 0

    def __init__(self, messages: list[bytes]) -> None:
        self._chunks = _chunks(messages, list(range(1, len(messages))))
        self.reads = 0

    def read_chunk(self, max_bytes: int = 0, timeout_s: float = 0.0) -> WalChunk | None:
        self.reads += 1
        return self._chunks.pop(0) if self._chunks else None

    def confirm(self, lsn: int) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("limit", [1, 300, 1 << 20])
def test_engine_gathers_waiting_chunks_into_one(limit: int) -> None:
    messages = _stream(random.Random(5), 40)
    source = _Trickle(messages)
    engine = Engine(source_factory=lambda _lsn: source, sink=NullSink(),
                    schemas=SchemaCache(keys_from_map({})),
                    checkpoints=MemoryCheckpointStore(),
                    settings=Settings(gather_bytes=limit))
    first = source.read_chunk()
    assert first is not None
    gathered = engine._gather(source, first)
    if limit == 1:
        assert len(gathered) == 1  # at the limit already: nothing more is read
    else:
        taken = len(gathered)
        assert taken > 1
        assert [gathered.message(i) for i in range(taken)] == messages[:taken]
        assert list(gathered.lsns) == list(range(1, taken + 1))
    if limit == 300:
        assert taken < len(messages) and gathered.nbytes < 300 + 200  # stopped near the limit
    if limit == 1 << 20:
        assert len(gathered) == len(messages)  # everything waiting, then None ended it


@pytest.mark.parametrize("rows", [1, 2, 5, 17])
def test_json_body_in_slices_equals_one_piece(monkeypatch: pytest.MonkeyPatch,
                                              rows: int) -> None:
    rng = random.Random(rows)
    table = pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "note": [rng.choice(['a,b', 'q"uote', "ünï", "x\ny", "", None]) for _ in range(rows)],
        "doc": [rng.choice(['{"a": 1}', '[1, 2]', '{"t": "x,\\"y\\""}', "{\n}", None])
                for _ in range(rows)],
    })
    whole = serialize(table, "json", raw_json={"doc"})
    monkeypatch.setattr(serialize_module, "_SLICE_ROWS", 2)
    sliced = serialize(table, "json", raw_json={"doc"})
    assert sliced.data == whole.data and sliced.rows == rows
    parsed = json.loads(sliced.data)
    assert [r["id"] for r in parsed] == list(range(rows))
    assert [r["doc"] for r in parsed] == [
        None if d is None else json.loads(d) for d in table.column("doc").to_pylist()]
    assert [r["note"] for r in parsed] == table.column("note").to_pylist()


def test_json_body_without_raw_columns_is_unchanged() -> None:
    table = pa.table({"id": np.arange(3, dtype=np.int64), "v": ["a", None, "c"]})
    assert json.loads(serialize(table, "json").data) == [
        {"id": 0, "v": "a"}, {"id": 1, "v": None}, {"id": 2, "v": "c"}]


@pytest.mark.parametrize("duplicates", [False, True])
def test_bulk_insert_fast_path_merges_like_the_general_path(
        monkeypatch: pytest.MonkeyPatch, duplicates: bool) -> None:
    from dbmazz.pipeline import merge as merge_module

    keys = [1, 2, 3, 2, 5] if duplicates else [1, 2, 3, 4, 5]
    messages = [wal.insert(A.oid, [str(k), f"v{i}"]) for i, k in enumerate(keys)]
    chunk = WalChunk.from_messages(messages, range(1, len(messages) + 1))
    starts = chunk.offsets[:-1]
    lsns = np.full(len(messages), 4242, dtype=np.uint64)
    decoded = pa.Table.from_batches([decode_changes(A, ("id",), chunk.data, starts, lsns)])
    schemas = SchemaCache(keys_from_map({"public.a": ["id"]}))
    schemas.on_relation(A)
    table = schemas.table(A.oid)
    from datetime import datetime

    at = datetime(2026, 1, 1)
    fast = merge_module.merge_changes(decoded, table, synced_at=at)
    monkeypatch.setattr(merge_module, "_bulk_inserts", lambda arrow, keys: False)
    general = merge_module.merge_changes(decoded, table, synced_at=at)
    assert [g.rows.to_pylist() for g in fast.upserts] == [
        g.rows.to_pylist() for g in general.upserts]
    assert [g.partial for g in fast.upserts] == [g.partial for g in general.upserts]
    assert [g.rows.schema for g in fast.upserts] == [g.rows.schema for g in general.upserts]
    assert (fast.first_lsn, fast.last_lsn) == (general.first_lsn, general.last_lsn) == (4242,
                                                                                        4242)
    assert fast.deletes is None and general.deletes is None
    assert fast.upserts[0].rows.num_rows == len(set(keys))


@pytest.mark.parametrize("seed", range(4))
def test_split_parts_respect_the_limits_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    messages = [wal.relation(A)]
    expected: list[int] = []
    for t in range(6):
        lsn = 10_000 * (t + 1)
        messages.append(wal.begin(lsn))
        for k in range(rng.choice([3, 40, 95])):
            messages.append(wal.insert(A.oid, [str(t * 1000 + k), "y" * rng.randint(0, 20)]))
            expected.append(lsn)
        messages.append(wal.commit(lsn, lsn + 50))
    flush_rows, flush_bytes = rng.randint(7, 30), rng.choice([1 << 30, 600])
    for cuts in ([], list(range(1, len(messages))),
                 sorted(rng.sample(range(1, len(messages)), 12))):
        b = _batcher(flush_rows, flush_bytes)
        flushes = [f for c in _chunks(messages, cuts) for f in b.add(c)] + b.drain()
        seen = [x for _, _, tables in _shape(flushes) for _, lsns in tables for x in lsns]
        assert seen == expected  # every change once, in order
        for f in flushes:
            if f.split is not None:
                assert f.rows <= flush_rows
                assert f.nbytes < flush_bytes + 200  # at most one message past the limit
        # Parts of one transaction are numbered 0, 1, … and only the last one ends it.
        parts = [f.split for f in flushes if f.split is not None]
        for lsn in {p.commit_lsn for p in parts}:
            mine = [p for p in parts if p.commit_lsn == lsn]
            assert [p.index for p in mine] == list(range(len(mine)))
            assert [p.last for p in mine] == [False] * (len(mine) - 1) + [True]
