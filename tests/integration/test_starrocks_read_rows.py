"""StarRocksSink.read_rows (RowReader) against the emulator: current rows of some keys
read back over the FE MySQL port with the batch's Arrow types, keys that need quoting,
composite keys, chunked queries, and the refusal inside an open split transaction."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from dbmazz.errors import SinkError
from dbmazz.pipeline.batch import SplitPart, TableSchema
from dbmazz.sink.base import RowReader
from dbmazz.sink.starrocks import current
from dbmazz.sink.starrocks.current import condition
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.integration import test_starrocks_sink as base
from tests.integration.test_starrocks_sink import SinkFactory, batch, col, upsert

make_sink = base.make_sink  # the fixture, shared with the base module

DOCS = TableSchema(
    "public", "docs",
    (
        col("k", pa.string(), "text"),
        col("n", pa.int32(), "int4"),
        col("doc", pa.string(), "text"),
        col("raw", pa.binary(), "bytea"),
        col("meta", pa.string(), "jsonb"),
        col("tags", pa.list_(pa.string()), "_text"),
        col("flag", pa.bool_(), "bool"),
    ),
    ("k", "n"),
    "docs",
    replica_identity="d",
)

AWKWARD = ["plain", "it's", "back\\slash", "new\nline", "ünï cødé", "tab\there", "'", "\\'"]


def rows() -> list[dict[str, Any]]:
    return [{"k": k, "n": i, "doc": f"doc of {k!r}" * 50, "raw": bytes([i, 0, 255]),
             "meta": '{"a": [1, 2]}', "tags": [k, "x"], "flag": i % 2 == 0}
            for i, k in enumerate(AWKWARD)]


def keys(pairs: list[tuple[str, int]]) -> pa.Table:
    return pa.table({"k": pa.array([k for k, _ in pairs], pa.large_string()),
                     "n": pa.array([n for _, n in pairs], pa.int32())})


def test_condition_quotes_every_value() -> None:
    table = keys([("it's", 1), ("\\", 2)])
    assert condition(table, ["k", "n"]) == (
        "(`k` = 'it\\'s' AND `n` = 1) OR (`k` = '\\\\' AND `n` = 2)")
    assert condition(table.select(["n"]), ["n"]) == "`n` IN (1, 2)"


def test_read_rows_returns_current_values_with_the_batch_types(
        make_sink: SinkFactory) -> None:
    sink = make_sink()
    assert isinstance(sink, RowReader)
    sink.setup([DOCS])
    sink.write(batch(DOCS, [upsert(DOCS, rows(), 7)], lsn=7))
    wanted = [(k, i) for i, k in enumerate(AWKWARD)] + [("absent", 99), ("plain", 5)]
    got = sink.read_rows(DOCS, keys(wanted), ["doc", "raw", "meta", "tags", "flag"], None)
    assert got.num_rows == len(AWKWARD)
    assert got.schema.field("raw").type == pa.binary()
    assert got.schema.field("tags").type == pa.list_(pa.string())
    by_key = {(r["k"], r["n"]): r for r in got.to_pylist()}
    for i, expected in enumerate(rows()):
        row = by_key[(expected["k"], i)]
        assert row["doc"] == expected["doc"] and row["raw"] == expected["raw"]
        assert row["tags"] == expected["tags"] and row["flag"] == expected["flag"]
        assert row["dbmazz_cdc_version"] == 7 and row["dbmazz_is_deleted"] is False
        assert row["meta"].replace(" ", "") == '{"a":[1,2]}'


def test_read_rows_queries_in_chunks(make_sink: SinkFactory,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(current, "CHUNK", 3)
    sink = make_sink()
    sink.setup([DOCS])
    sink.write(batch(DOCS, [upsert(DOCS, rows(), 7)], lsn=7))
    got = sink.read_rows(DOCS, keys([(k, i) for i, k in enumerate(AWKWARD)]), ["doc"], None)
    assert sorted(got.column("n").to_pylist()) == list(range(len(AWKWARD)))


def test_read_rows_refuses_keys_an_open_split_part_loaded(make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.setup([DOCS])
    sink.write(batch(DOCS, [upsert(DOCS, rows()[:2], 7)], lsn=7))
    part0 = SplitPart(commit_lsn=9, index=0, last=False)
    sink.write(batch(DOCS, [upsert(DOCS, [{"k": "plain", "n": 0, "doc": "new"}], 9)],
                     lsn=9, split=part0))
    part1 = SplitPart(commit_lsn=9, index=1, last=False)
    # A key the open transaction did not load: read as committed.
    got = sink.read_rows(DOCS, keys([("it's", 1)]), ["doc"], part1)
    assert got.num_rows == 1
    with pytest.raises(SinkError) as caught:
        sink.read_rows(DOCS, keys([("plain", 0)]), ["doc"], part1)
    assert "REPLICA IDENTITY FULL" in (caught.value.hint or "")
    assert not caught.value.retryable
    # Once the transaction committed (its last part), the same read is answered.
    sink.write(batch(DOCS, [], lsn=9, split=SplitPart(commit_lsn=9, index=2, last=True)))
    got = sink.read_rows(DOCS, keys([("plain", 0)]), ["doc"], None)
    assert got.column("doc").to_pylist() == ["new"]


@pytest.mark.parametrize("split", [False, True], ids=["stream-load", "split-transaction"])
def test_read_rows_waits_for_a_load_whose_publish_timed_out(
        starrocks: StarRocksEmulator, make_sink: SinkFactory, split: bool) -> None:
    """"Publish Timeout" is committed, not yet visible (protocol reference §2.3): a read
    in between would carry the row's old value to its new key, silently."""
    sink = make_sink()
    sink.setup([DOCS])
    sink.write(batch(DOCS, [upsert(DOCS, [{"k": "plain", "n": 0, "doc": "old"}], 7)], lsn=7))
    starrocks.faults.publish_timeout()
    new = upsert(DOCS, [{"k": "plain", "n": 0, "doc": "new"}], 9)
    part = SplitPart(commit_lsn=9, index=0, last=True) if split else None
    sink.write(batch(DOCS, [new], lsn=9, split=part))
    published: list[int] = []
    # The publish completes while the sink waits (its first back-off).
    sink._waiter._sleep = lambda _: published.append(starrocks.publish_pending())
    got = sink.read_rows(DOCS, keys([("plain", 0)]), ["doc"], None)
    assert got.column("doc").to_pylist() == ["new"]
    assert published[:1] == [1]
    # Known visible now: the next read asks nothing more.
    sink.read_rows(DOCS, keys([("plain", 0)]), ["doc"], None)
    assert len(published) == 1
