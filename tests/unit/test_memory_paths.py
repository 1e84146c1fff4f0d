"""The memory paths: bulk inserts merged without leaving Arrow, JSON bodies rendered slice by
slice into one buffer, request bodies released after sending, allocator settings. Each
must give exactly what the straightforward path gives."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest

from dbmazz.pipeline import merge as merge_module
from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.sink.starrocks import serialize as serialize_module
from dbmazz.sink.starrocks.http import Transport
from dbmazz.sink.starrocks.serialize import serialize
from dbmazz.source.chunk import WalChunk
from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.testing import wal

WIDE = Relation(16390, "public", "wide", "d", (
    RelationColumn("id", 20, -1, True),  # int8
    RelationColumn("n", 23, -1, False),  # int4
    RelationColumn("t", 25, -1, False),  # text
    RelationColumn("amount", 1700, -1, False),  # numeric
    RelationColumn("at", 1184, -1, False),  # timestamptz
    RelationColumn("doc", 3802, -1, False),  # jsonb
    RelationColumn("raw", 17, -1, False),  # bytea
    RelationColumn("ok", 16, -1, False),  # bool
    RelationColumn("f", 701, -1, False),  # float8
    RelationColumn("d", 1082, -1, False),  # date
    RelationColumn("xs", 1007, -1, False),  # int4[]
))


def _row(key: int, i: int) -> list[str | None]:
    if i % 3 == 2:
        return [str(key)] + [None] * 10
    return [str(key), str(i), f"n\"ote\n{i} ü", f"{i}.25", "2026-01-02 03:04:05.123456+02",
            '{"a": [1, "x"]}', "\\x00ff10", "t" if i % 2 else "f", "1.5e-3", "2026-11-24",
            "{1,NULL,3}"]


def _decoded(keys: list[int], ops: list[str] | None = None) -> pa.Table:
    messages = []
    for i, key in enumerate(keys):
        op = ops[i] if ops else "I"
        if op == "I":
            messages.append(wal.insert(WIDE.oid, _row(key, i)))
        else:
            messages.append(wal.update(WIDE.oid, _row(key, i)))
    chunk = WalChunk.from_messages(messages, range(1, len(messages) + 1))
    lsns = np.arange(4000, 4000 + len(messages), dtype=np.uint64)
    return pa.Table.from_batches(
        [decode_changes(WIDE, ("id",), chunk.data, chunk.offsets[:-1], lsns)])


def _table() -> TableSchema:
    schemas = SchemaCache(keys_from_map({"public.wide": ["id"]}))
    schemas.on_relation(WIDE)
    return schemas.table(WIDE.oid)


@pytest.mark.parametrize("keys", [
    [1, 2, 3, 4, 5, 6, 7],  # ascending: decided in Arrow
    [5, 3, 9, 1, 2, 8, 4],  # unique but unordered: decided by polars
    [7],
])
def test_bulk_inserts_merge_like_the_general_path(monkeypatch: pytest.MonkeyPatch,
                                                  keys: list[int]) -> None:
    decoded = _decoded(keys)
    table = _table()
    at = datetime(2026, 1, 1)
    fast = merge_module.merge_changes(decoded, table, synced_at=at)
    monkeypatch.setattr(merge_module, "_bulk_inserts", lambda arrow, keys: False)
    general = merge_module.merge_changes(decoded, table, synced_at=at)
    assert len(fast.upserts) == len(general.upserts) == 1
    assert fast.upserts[0].rows.schema == general.upserts[0].rows.schema
    assert fast.upserts[0].rows.to_pylist() == general.upserts[0].rows.to_pylist()
    assert [r["id"] for r in fast.upserts[0].rows.to_pylist()] == keys
    assert (fast.first_lsn, fast.last_lsn) == (general.first_lsn, general.last_lsn)
    assert fast.deletes is None and fast.source_changes == general.source_changes
    assert (serialize(fast.upserts[0].rows, "json", raw_json={"doc"}).data
            == serialize(general.upserts[0].rows, "json", raw_json={"doc"}).data)


@pytest.mark.parametrize("keys,ops", [
    ([1, 2, 1], None),  # a key twice
    ([1, 2, 3], ["I", "U", "I"]),  # not only inserts
])
def test_batches_that_need_merging_do_not_take_the_bulk_path(
        keys: list[int], ops: list[str] | None) -> None:
    decoded = _decoded(keys, ops)
    assert not merge_module._bulk_inserts(decoded, ["id"])
    batch = merge_module.merge_changes(decoded, _table())
    assert sorted(r["id"] for g in batch.upserts for r in g.rows.to_pylist()) == sorted(set(keys))


@pytest.mark.parametrize("rows", [1, 2, 5, 17])
def test_json_body_with_hostile_text_in_slices_equals_one_piece(monkeypatch: pytest.MonkeyPatch,
                                               rows: int) -> None:
    notes = ['a,b', 'q"uote', "ünï", "x\ny\r\n", "", None, "\\", "]\n["]
    table = pa.table({
        "id": pa.array(range(rows), pa.int64()),
        "note": [notes[i % len(notes)] for i in range(rows)],
        "f": pa.array([float("nan") if i == rows - 1 else i / 3 for i in range(rows)]),
    })
    whole = serialize(table, "json")
    monkeypatch.setattr(serialize_module, "_SLICE_ROWS", 2)
    sliced = serialize(table, "json")
    assert isinstance(sliced.data, bytes)
    assert sliced.data == whole.data and sliced.rows == rows
    parsed = json.loads(sliced.data)
    assert [r["id"] for r in parsed] == list(range(rows))
    assert [r["note"] for r in parsed] == table.column("note").to_pylist()
    # NaN anywhere in the column makes the whole column strings, slice or not.
    assert parsed[-1]["f"] == "nan" and all(isinstance(r["f"], str) for r in parsed)


# -- HTTP --------------------------------------------------------------------------------


class _Discard(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        reply = json.dumps({"received": length}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/load"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_transport_lets_go_of_the_body_after_sending(server: str) -> None:
    transport = Transport("root", "")
    try:
        body = b"x" * (1 << 20)
        before = sys.getrefcount(body)
        response = transport.send("PUT", server, {"format": "json"}, body)
        assert response.status == 200 and json.loads(response.body) == {"received": 1 << 20}
        # Nothing (the curl handle's read callback) keeps the body until the next request.
        assert sys.getrefcount(body) == before
        again = transport.send("PUT", server, {}, b"abc")  # the handle is still usable
        assert json.loads(again.body) == {"received": 3}
    finally:
        transport.close()


# -- allocators --------------------------------------------------------------------------


def test_tune_allocators_is_idempotent() -> None:
    from dbmazz.memory import tune_allocators

    first = tune_allocators()
    assert tune_allocators() == first
    if sys.platform.startswith("linux"):
        assert first  # glibc's mallopt took the thresholds
    # Arrow's buffers come from glibc under those thresholds, not a pool of its own.
    assert pa.default_memory_pool().backend_name == "system"
    # Large buffers still come and go.
    big = np.ones(8 << 20, dtype=np.uint8)
    assert int(big.sum()) == 8 << 20


def test_a_streamed_transaction_spools_a_quarter_of_the_in_flight_budget() -> None:
    from dbmazz.config import Config
    from dbmazz.engine.build import spool_memory_bytes

    assert spool_memory_bytes(Config(max_inflight_bytes=16 << 20)) == 4 << 20
    assert spool_memory_bytes(Config(max_inflight_bytes=256 << 20)) == 64 << 20
    assert spool_memory_bytes(Config(max_inflight_bytes=1 << 20)) == 1 << 20  # a floor
