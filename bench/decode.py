"""Decode benchmark: vectorized columnar decoder vs a straightforward per-row decoder.

A synthetic batch of Insert messages of a 6-column table (int8 key, int4, text ~40 bytes,
timestamptz, numeric(12,2), small jsonb) is decoded by :func:`decode_changes` and by a
per-row Python decoder (``struct.unpack`` per field, values into Python lists, then
``pyarrow.array`` per column). Each is timed several times (best run kept: the machine is
shared); the last line printed is one JSON object:

    {"rows": N, "vectorized_rows_per_s": X, "per_row_rows_per_s": Y, "ratio": X/Y,
     "peak_rss_mb": Z}

Usage: ``python bench/decode.py [--rows 1000000] [--repeat 5] [--per-row-rows 200000]``.
The per-row decoder runs on at most ``--per-row-rows`` rows (it is ~20x slower; its rate
does not depend on the batch size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import resource
import struct
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation, RelationColumn

OID = 16384
RELATION = Relation(
    oid=OID, namespace="public", name="events", replica_identity="d",
    columns=(
        RelationColumn("id", 20, -1, True),
        RelationColumn("qty", 23, -1, False),
        RelationColumn("note", 25, -1, False),
        RelationColumn("created_at", 1184, -1, False),
        RelationColumn("amount", 1700, ((12 << 16) | 2) + 4, False),
        RelationColumn("payload", 3802, -1, False),
    ),
)
KEYS = ("id",)


def make_batch(rows: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Insert messages as the walsender would send them (text values, PostgreSQL syntax)."""
    rnd = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    notes = [" ".join(rnd.choice(words) for _ in range(6))[:rnd.randint(30, 50)].encode()
             for _ in range(997)]
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    stamps = []
    for _ in range(1009):
        ts = base + dt.timedelta(microseconds=rnd.randrange(10**14))
        text = ts.strftime("%Y-%m-%d %H:%M:%S")
        if ts.microsecond:
            text += f".{ts.microsecond:06d}".rstrip("0")
        stamps.append((text + "+00").encode())
    head = b"I" + struct.pack(">I", OID) + b"N" + struct.pack(">h", 6)
    pack = struct.Struct(">i").pack
    # Appended chunk by chunk so generation peaks near the batch's own size, not twice it.
    buffer = bytearray()
    parts: list[bytes] = []
    starts = np.empty(rows, dtype=np.int64)
    pos = 0
    for i in range(rows):
        if len(parts) == 10_000:
            buffer += b"".join(parts)
            parts.clear()
        amount = rnd.randrange(-10**11, 10**11)
        values = (
            str(i).encode(),
            str(rnd.randrange(-2**31, 2**31)).encode(),
            notes[i % 997],
            stamps[i % 1009],
            f"{amount // 100}.{amount % 100:02d}".encode(),
            b'{"k": %d, "tag": "x%d"}' % (i % 1000, i % 7),
        )
        message = head + b"".join(b"t" + pack(len(v)) + v for v in values)
        starts[i] = pos
        pos += len(message)
        parts.append(message)
    buffer += b"".join(parts)
    data = np.frombuffer(buffer, dtype=np.uint8)
    lsns = np.arange(rows, dtype=np.uint64) + 0x1000000
    return data, starts, lsns


def decode_per_row(data: np.ndarray, starts: np.ndarray, lsns: np.ndarray) -> pa.RecordBatch:
    """The straightforward decoder: one message, one field, one Python object at a time."""
    # Only the sampled messages' bytes (every message here is far below 4 KiB).
    raw = data[: int(starts.max()) + 4096].tobytes()
    unpack_i16 = struct.Struct(">h").unpack_from
    unpack_i32 = struct.Struct(">i").unpack_from
    ncols = len(RELATION.columns)
    columns: list[list[object]] = [[] for _ in range(ncols)]
    ops: list[int] = []
    for start in starts.tolist():
        kind = raw[start]
        pos = start + 5
        marker = raw[pos]
        if marker in (0x4B, 0x4F):  # K / O: skip the old tuple
            (count,) = unpack_i16(raw, pos + 1)
            pos += 3
            for _ in range(count):
                pos += 5 + unpack_i32(raw, pos + 1)[0] if raw[pos] == 0x74 else 1
        (count,) = unpack_i16(raw, pos + 1)
        pos += 3
        values: list[str | None] = []
        for _ in range(count):
            if raw[pos] == 0x74:
                (length,) = unpack_i32(raw, pos + 1)
                values.append(raw[pos + 5 : pos + 5 + length].decode())
                pos += 5 + length
            else:
                values.append(None)
                pos += 1
        ops.append({0x49: 0, 0x55: 1, 0x44: 2}[kind])
        key, qty, note, created, amount, payload = values
        columns[0].append(int(key) if key is not None else None)
        columns[1].append(int(qty) if qty is not None else None)
        columns[2].append(note)
        columns[3].append(dt.datetime.fromisoformat(created) if created is not None else None)
        columns[4].append(Decimal(amount) if amount is not None else None)
        columns[5].append(payload)
    types = [pa.int64(), pa.int32(), pa.string(), pa.timestamp("us", tz="UTC"),
             pa.decimal128(12, 2), pa.string()]
    arrays = [pa.array(col, typ) for col, typ in zip(columns, types, strict=True)]
    arrays += [pa.array(ops, pa.int8()), pa.array(lsns, pa.uint64()),
               pa.array(np.arange(len(ops), dtype=np.uint32))]
    names = [*RELATION.column_names, "__dbmazz_op", "__dbmazz_lsn", "__dbmazz_seq"]
    return pa.RecordBatch.from_arrays(arrays, names=names)


class Timer:
    """Best (shortest) CPU and wall time of repeated runs of one function.

    CPU time is the primary figure: the machine is shared, and CPU seconds of this process
    (all its threads; Arrow is limited to one) are what "rows/s on one core" means.
    """

    def __init__(self, fn: Callable[[], object], rows: int) -> None:
        self.fn, self.rows = fn, rows
        self.cpu = self.wall = float("inf")

    def run(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        self.fn()
        self.cpu = min(self.cpu, time.process_time() - cpu)
        self.wall = min(self.wall, time.perf_counter() - wall)

    @property
    def rates(self) -> tuple[float, float]:
        return self.rows / self.cpu, self.rows / self.wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--per-row-rows", type=int, default=200_000)
    args = parser.parse_args(argv)

    pa.set_cpu_count(1)  # one core: no Arrow thread pool fan-out
    data, starts, lsns = make_batch(args.rows)
    sample = min(args.rows, args.per_row_rows)
    ours = Timer(lambda: decode_changes(RELATION, KEYS, data, starts, lsns), args.rows)
    theirs = Timer(lambda: decode_per_row(data, starts[:sample], lsns[:sample]), sample)
    # Interleaved, so a burst of load from other processes hits both decoders alike.
    for _ in range(args.repeat):
        ours.run()
        theirs.run()
    vectorized, vectorized_wall = ours.rates
    per_row, per_row_wall = theirs.rates

    # Both decoders must agree before their speeds mean anything.
    check = min(args.rows, 10_000)
    ours = decode_changes(RELATION, KEYS, data, starts[:check], lsns[:check])
    theirs = decode_per_row(data, starts[:check], lsns[:check])
    for name in theirs.schema.names:
        assert ours.column(name).equals(theirs.column(name)), name

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"per CPU-second: vectorized {vectorized:,.0f} rows/s, per-row {per_row:,.0f} rows/s"
          f" | wall: vectorized {vectorized_wall:,.0f}, per-row {per_row_wall:,.0f}",
          file=sys.stderr)
    print(json.dumps({
        "rows": args.rows,
        "vectorized_rows_per_s": round(vectorized),
        "per_row_rows_per_s": round(per_row),
        "ratio": round(vectorized / per_row, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }))


if __name__ == "__main__":
    main()
