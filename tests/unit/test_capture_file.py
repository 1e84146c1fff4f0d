"""Capture file format without a database: round trip, plain-pyarrow readability, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from dbmazz.errors import CaptureFormatError
from dbmazz.source.capture import (
    CaptureWriter,
    capture_metadata,
    iter_capture,
    read_capture,
)
from dbmazz.source.chunk import CAPTURE_SCHEMA, WalChunk

CHUNKS = [
    WalChunk.from_messages([b"B" + bytes(20), b"I\x00\x00\x00\x07N\x00\x00"], [10, 11]),
    WalChunk.from_messages([b"C" + bytes(25)], [12]),
    WalChunk.from_messages([b"M" + b"x" * 1000] * 3, [13, 14, 15]),
]


def write(path: Path, chunks: list[WalChunk] = CHUNKS, **kw: object) -> None:
    with CaptureWriter(path, proto_version=2, publication="my pub",
                       primary_keys={"public.t": ["id"], 'S."odd.t"': ["a", "b"]},
                       **kw) as writer:  # type: ignore[arg-type]
        for chunk in chunks:
            writer.write(chunk)
        writer.write(WalChunk.from_messages([]))  # empty chunks are skipped


@pytest.mark.parametrize("compression", ["zstd", None])
def test_round_trip(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / "c.arrows"
    write(path, compression=compression)
    got = list(iter_capture(path))
    assert [c.messages() for c in got] == [c.messages() for c in CHUNKS]
    assert [c.lsns.tolist() for c in got] == [c.lsns.tolist() for c in CHUNKS]
    table = read_capture(path)
    assert table.num_rows == 6 and table.schema.equals(CAPTURE_SCHEMA)
    meta = capture_metadata(path)
    assert meta.version == "1" and meta.proto_version == 2 and meta.publication == "my pub"
    assert meta.primary_keys == {"public.t": ("id",), 'S."odd.t"': ("a", "b")}


def test_plain_pyarrow_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "c.arrows"
    write(path)
    with pa.ipc.open_stream(str(path)) as reader:
        table = reader.read_all()
    md = table.schema.metadata
    assert md[b"dbmazz.capture.version"] == b"1"
    assert md[b"dbmazz.proto_version"] == b"2"
    assert json.loads(md[b"dbmazz.primary_keys"]) == {"S.\"odd.t\"": ["a", "b"],
                                                      "public.t": ["id"]}
    assert table.column("lsn").to_pylist() == [10, 11, 12, 13, 14, 15]
    assert table.column("payload")[2].as_py() == b"C" + bytes(25)


def test_foreign_writer_without_dbmazz_metadata(tmp_path: Path) -> None:
    """Any tool writing {lsn, payload} can feed replay; defaults fill the metadata."""
    path = tmp_path / "foreign.arrows"
    batch = pa.record_batch(
        [pa.array([1, 2], pa.uint64()), pa.array([b"B" + bytes(20), b"C" + bytes(25)],
                                                 pa.large_binary())],
        names=["lsn", "payload"],
    )
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, batch.schema) as w:
        w.write_batch(batch)
    assert [c.messages() for c in iter_capture(path)] == [[b"B" + bytes(20), b"C" + bytes(25)]]
    meta = capture_metadata(path)
    assert meta.proto_version == 1 and meta.primary_keys == {}


def test_truncated_file_yields_complete_batches_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "c.arrows"
    write(path)
    raw = path.read_bytes()
    cut = tmp_path / "cut.arrows"
    cut.write_bytes(raw[: len(raw) - 120])
    seen = []
    with pytest.raises(CaptureFormatError, match="truncated"):
        for chunk in iter_capture(cut):
            seen.append(chunk)
    assert 1 <= len(seen) < 3
    with pytest.raises(CaptureFormatError):
        read_capture(cut)


def test_not_a_capture(tmp_path: Path) -> None:
    junk = tmp_path / "junk.arrows"
    junk.write_bytes(b"hello")
    with pytest.raises(CaptureFormatError, match="not an Arrow IPC stream"):
        read_capture(junk)
    wrong = tmp_path / "wrong.arrows"
    batch = pa.record_batch([pa.array([1])], names=["x"])
    with pa.OSFile(str(wrong), "wb") as f, pa.ipc.new_stream(f, batch.schema) as w:
        w.write_batch(batch)
    with pytest.raises(CaptureFormatError, match="lsn: uint64, payload: binary"):
        list(iter_capture(wrong))
    future = tmp_path / "v2.arrows"
    with CaptureWriter(future, proto_version=1, publication="p", primary_keys={},
                       extra_metadata={}) as w2:
        w2.write(CHUNKS[0])
    table = read_capture(future)
    md = {**table.schema.metadata, b"dbmazz.capture.version": b"2"}
    with pa.OSFile(str(future), "wb") as f, pa.ipc.new_stream(
        f, table.schema.with_metadata(md)
    ) as w3:
        w3.write_table(table)
    with pytest.raises(CaptureFormatError, match="version 2"):
        capture_metadata(future)
