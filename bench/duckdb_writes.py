"""DuckDB CDC write benchmark: CPU per row of :meth:`DuckDBSink.write` for writes of new keys,
writes of keys the target holds, and writes of half each (``sink/duckdb.py``).

Each workload writes ``--writes`` batches of ``--rows`` rows (id, qty, a 40-character note,
a timestamp, the audit columns) into a fresh DuckDB file: ``insert`` new keys every time;
``update`` the same keys again with a higher version every time (after loading them once,
not counted); ``mixed`` half held, half new. CPU is the whole process's (DuckDB's own
threads included) over the writes. Every workload runs in a child process per tree and
round; with ``--baseline DIR`` (a checkout of other code) that tree's children interleave
with this one's, and the best of ``--repeat`` rounds is kept. The last line printed is one
JSON object:

    {"rows": N, "insert_us_per_row": X, "insert_us_per_row_base": Y, ...}

Usage: ``python bench/duckdb_writes.py [--rows 16384] [--writes 100] [--repeat 3]
[--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("insert", "update", "mixed")


def measure(workload: str, rows: int, writes: int) -> float:
    """CPU seconds of this process for ``writes`` writes of ``workload``."""
    import numpy as np
    import pyarrow as pa

    from dbmazz.pipeline.batch import ColumnSpec, TableSchema
    from dbmazz.sink.duckdb import DuckDBSink
    from dbmazz.snapshot.load import snapshot_batch
    from dbmazz.source.types import INT4, INT8, TEXT, TIMESTAMPTZ

    table = TableSchema("public", "events", (
        ColumnSpec("id", pa.int64(), INT8, -1),
        ColumnSpec("qty", pa.int32(), INT4, -1),
        ColumnSpec("note", pa.string(), TEXT, -1),
        ColumnSpec("created_at", pa.timestamp("us", tz="UTC"), TIMESTAMPTZ, -1),
    ), ("id",), "events")

    def batch(first: int, version: int, held: int) -> object:
        # ``held`` keys below ``first`` (written before), the rest new.
        ids = np.arange(first - held, first - held + rows, dtype=np.int64)
        data = pa.table({
            "id": ids,
            "qty": (ids % 1000).astype(np.int32),
            "note": pa.array(np.char.mod("%040d", ids * version).astype(object)),
            "created_at": pa.array(1_700_000_000_000_000 + ids * 1_234_567,
                                   pa.timestamp("us", tz="UTC")),
        })
        return snapshot_batch(table, data, version, f"w{version}")

    with tempfile.TemporaryDirectory() as tmp:
        sink = DuckDBSink(str(Path(tmp) / "bench.duckdb"))
        sink.setup([table])
        held = {"insert": 0, "update": rows, "mixed": rows // 2}[workload]
        if workload == "update":
            sink.write(batch(rows, 1, rows))  # type: ignore[arg-type]
        batches = [batch(rows + (0 if workload == "update" else i * (rows - held)), i + 2, held)
                   for i in range(writes)]
        started = time.process_time()
        for b in batches:
            sink.write(b)  # type: ignore[arg-type]
        spent = time.process_time() - started
        count = sink.query("SELECT count(*) FROM public.events")[0][0]
        expected = {"insert": rows * writes, "update": rows,
                    "mixed": rows + (writes - 1) * (rows - held)}[workload]
        assert count == expected, (workload, count, expected)
        sink.close()
    return spent


def child(root: Path, workload: str, rows: int, writes: int) -> float:
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
            f"sys.path.insert(1, {str(ROOT / 'bench')!r}); import duckdb_writes; "
            f"print(duckdb_writes.measure({workload!r}, {rows}, {writes}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=root)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16_384, help="rows per write")
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of other code to compare")
    args = parser.parse_args()
    trees = [("", ROOT)] + ([("_base", args.baseline.resolve())] if args.baseline else [])
    best: dict[str, float] = {}
    for round_ in range(args.repeat):
        for workload in WORKLOADS:
            for suffix, root in trees:  # interleaved: both trees under the same conditions
                seconds = child(root, workload, args.rows, args.writes)
                key = f"{workload}_us_per_row{suffix}"
                best[key] = min(best.get(key, seconds), seconds)
                print(f"round {round_ + 1}: {workload}{suffix} "
                      f"{seconds * 1e6 / (args.rows * args.writes):.3f} us/row", file=sys.stderr)
    result: dict[str, object] = {"rows": args.rows, "writes": args.writes, "repeat": args.repeat}
    for key, seconds in best.items():
        result[key] = round(seconds * 1e6 / (args.rows * args.writes), 3)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
