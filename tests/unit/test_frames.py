"""Splitting raw protocol bytes into messages (the socket reader's hot path) and chunks
whose messages have frame headers between them."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbmazz.pipeline.batcher import Slab, join_slabs
from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.frames import split_messages, split_messages_reference


def copy_data(payload: bytes) -> bytes:
    return b"d" + struct.pack(">I", 4 + len(payload)) + payload


def xlog(lsn: int, message: bytes) -> bytes:
    return copy_data(b"w" + struct.pack(">QQQ", lsn, lsn + 1, 0) + message)


def keepalive(lsn: int) -> bytes:
    return copy_data(b"k" + struct.pack(">QqB", lsn, 0, 0))


def other(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", 4 + len(body)) + body


# Payload bytes drawn mostly from the bytes that make false candidates ('d', 0, 'w', 'k').
tricky_bytes = st.binary(max_size=120).map(
    lambda raw: bytes(b"d\x00wk\x00\x00d"[b % 7] if b < 160 else b for b in raw))

message = st.one_of(
    st.builds(xlog, st.integers(0, 2**40), tricky_bytes),
    st.builds(keepalive, st.integers(0, 2**40)),
    st.builds(other, st.sampled_from([b"N", b"E", b"S", b"c", b"Z"]), tricky_bytes),
    # A CopyData frame of another kind, and one whose first length byte is not 0 cannot
    # be generated cheaply (16 MiB): see test_large_frame_is_taken_on_its_own.
    st.builds(lambda body: copy_data(b"x" + body), tricky_bytes),
)


def same(a: object, b: object) -> None:
    for name in ("starts", "ends", "kinds"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.consumed == b.consumed  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.lists(message, max_size=60), st.data())
def test_split_matches_one_message_at_a_time(messages: list[bytes], data: st.DataObject
                                             ) -> None:
    raw = b"".join(messages)
    cut = data.draw(st.integers(0, len(raw)))  # the read may end anywhere
    start = 0
    if messages and data.draw(st.booleans()):
        start = len(messages[0]) if len(messages[0]) <= cut else 0
    buffer = np.frombuffer(raw[:cut], dtype=np.uint8)
    same(split_messages(buffer, start), split_messages_reference(raw[:cut], start))


def test_split_finds_each_frame_and_its_kind() -> None:
    parts = [xlog(1, b"Bxxx"), keepalive(2), xlog(3, b"I" + b"d\x00\x00\x00\x00w" * 5),
             other(b"N", b"Mhello\x00\x00"), xlog(4, b"C")]
    raw = b"".join(parts)
    found = split_messages(np.frombuffer(raw, dtype=np.uint8))
    sizes = [len(p) for p in parts]
    assert found.starts.tolist() == np.cumsum([0, *sizes[:-1]]).tolist()
    assert found.ends.tolist() == np.cumsum(sizes).tolist()
    assert bytes(found.kinds.tolist()) == b"wkw\x00w"
    assert found.consumed == len(raw)


def test_a_partial_message_is_left_for_the_next_read() -> None:
    raw = xlog(1, b"B" * 10) + xlog(2, b"I" * 50)
    found = split_messages(np.frombuffer(raw[:-7], dtype=np.uint8))
    assert found.ends.tolist() == [len(xlog(1, b"B" * 10))]
    assert found.consumed == len(xlog(1, b"B" * 10))
    nothing = split_messages(np.frombuffer(raw[:3], dtype=np.uint8))
    assert len(nothing.starts) == 0 and nothing.consumed == 0


def test_large_frame_is_taken_on_its_own() -> None:
    big = xlog(7, b"I" + b"d" * (17 << 20))  # length >= 16 MiB: no candidate
    raw = xlog(6, b"B") + big + xlog(8, b"C")
    found = split_messages(np.frombuffer(raw, dtype=np.uint8))
    assert bytes(found.kinds.tolist()) == b"www"
    assert found.ends[1] - found.starts[1] == len(big)


def test_an_impossible_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="impossible length"):
        split_messages(np.frombuffer(b"d\x00\x00\x00\x02wxyz", dtype=np.uint8))


# -- chunks with frame headers between messages -------------------------------------------


def gapped(messages: list[bytes], lsns: list[int]) -> WalChunk:
    raw = b"".join(xlog(lsn, m) for lsn, m in zip(lsns, messages, strict=True))
    found = split_messages(np.frombuffer(raw, dtype=np.uint8))
    return WalChunk(
        data=np.frombuffer(raw, dtype=np.uint8),
        offsets=np.append(found.starts + 30, found.ends[-1]),
        lsns=np.array(lsns, dtype=np.uint64),
        ends=found.ends,
    )


def test_gapped_chunk_reads_like_a_back_to_back_one() -> None:
    messages = [b"B" + bytes(20), b"Ifirst", b"Isecond!", b"C" + bytes(25)]
    lsns = [10, 20, 30, 40]
    chunk = gapped(messages, lsns)
    plain = WalChunk.from_messages(messages, lsns)
    assert chunk.messages() == messages == plain.messages()
    assert [chunk.message(i) for i in range(4)] == messages
    assert chunk.payload_bytes == plain.payload_bytes == sum(map(len, messages))
    compact = chunk.compact()
    assert compact.ends is None and compact.messages() == messages
    assert np.array_equal(compact.offsets, plain.offsets)
    assert chunk.to_arrow().equals(plain.to_arrow())
    assert WalChunk.from_arrow(chunk.to_arrow()).messages() == messages
    head = chunk.head(2)
    assert head.messages() == messages[:2] and head.lsns.tolist() == lsns[:2]
    joined = concat_chunks([chunk, plain, gapped([b"Ilast"], [50])])
    assert joined.messages() == [*messages, *messages, b"Ilast"]
    assert joined.lsns.tolist() == [*lsns, *lsns, 50]
    back_to_back = concat_chunks([plain, plain])
    assert back_to_back.ends is None and back_to_back.messages() == messages * 2


def test_compact_keeps_messages_listed_out_of_buffer_order() -> None:
    messages = [b"B" + bytes(20), b"Ifirst", b"Isecond!", b"C" + bytes(25)]
    chunk = gapped(messages, [10, 20, 30, 40])
    order = [2, 0, 3, 1]
    shuffled = WalChunk(data=chunk.data,
                        offsets=np.append(chunk.starts[order], 0).astype(np.int64),
                        lsns=chunk.lsns[order], ends=chunk.message_ends[order])
    compact = shuffled.compact()
    assert compact.ends is None
    assert compact.messages() == [messages[i] for i in order]
    assert compact.lsns.tolist() == [10 * (i + 1) for i in order]


def test_join_slabs_of_many_scattered_runs_keeps_every_message() -> None:
    rng = np.random.default_rng(7)
    slabs = []
    for _ in range(3):
        data = rng.integers(0, 256, size=200_000, dtype=np.uint8)
        sizes = rng.integers(1, 40, size=400)
        gaps = rng.integers(60, 200, size=400)  # sparse: far more gap than message
        starts = np.cumsum(np.concatenate(([5], (sizes + gaps)[:-1])))
        slabs.append(Slab(data, starts.astype(np.int64), sizes.astype(np.int64),
                          np.zeros(400, np.uint32), np.zeros(400, np.uint64)))
    joined = join_slabs(slabs)
    want = [s.data[a:a + b].tobytes() for s in slabs for a, b in zip(s.starts, s.sizes,
                                                                         strict=True)]
    got = [joined.data[a:a + b].tobytes() for a, b in zip(joined.starts, joined.sizes,
                                                          strict=True)]
    assert got == want
    assert len(joined.data) == sum(int(s.sizes.sum()) for s in slabs)
