"""Verify benchmark: ``dbmazz verify`` of one table against DuckDB, with the cost on both ends.

A table of ``--rows`` rows with the snapshot benchmark's six columns (int8 key, int4, text
30–50 bytes, timestamptz, numeric(12,2), small jsonb) is created in a private PostgreSQL
cluster (or ``--dsn``) and copied into a DuckDB file by an initial snapshot. Then, ``--repeat``
times (best kept: the machine is shared), one table comparison (the verify's own path:
source snapshot by a temporary slot, ``ctid`` chunks, canonical hashing, ranges) is timed:

* source side: seconds spent reading the source (inside the snapshot), and the CPU the
  PostgreSQL cluster's processes used meanwhile (``/proc``: live backends plus the
  postmaster's reaped children — a private cluster only, so nothing else counts);
* target side: seconds spent reading DuckDB;
* the verify process's CPU (hashing included; DuckDB's threads count here).

``--drift N`` changes ``N`` target rows first, so the second pass (differing ranges down
to keys and columns) is measured too. ``--max-rows-per-s`` applies VERIFY_MAX_ROWS_PER_S.
The last line printed is one JSON object.

Usage: ``python bench/verify.py [--rows 1000000] [--repeat 3] [--drift 0] [--dsn …]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.pipeline.batch import TableSchema
from dbmazz.verify.compare import Options, TableCheck
from dbmazz.verify.run import load_schemas
from dbmazz.verify.source import SourceSnapshot
from dbmazz.verify.target import DuckDBTarget

TABLE = "public.events"
_TICK = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[tuple[str, int | None]]:
    """(dsn, postmaster pid or None when the cluster is not ours)."""
    if dsn:
        yield dsn, None
        return
    from dbmazz.testing.postgres import temporary_cluster

    with temporary_cluster({"shared_buffers": "256MB"}) as cluster:
        name = cluster.create_database("bench_verify")
        dsn = cluster.dsn(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        assert row is not None
        pid = int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])
        yield dsn, pid


def create_table(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.events")
        conn.execute("CREATE TABLE public.events (id bigint PRIMARY KEY, qty int, note text, "
                     "created_at timestamptz, amount numeric(12,2), payload jsonb)")
        conn.execute(
            """
            INSERT INTO public.events
            SELECT g, ((g * 7919) %% 2000003)::int - 1000000,
                   substr(md5(g::text) || md5((g + 1)::text), 1, 30 + (g %% 21)::int),
                   '2024-01-01 00:00:00+00'::timestamptz + g * interval '1.37 s',
                   ((g * 104729) %% 100000000) / 100.0,
                   jsonb_build_object('k', g %% 1000, 'v', 'x' || (g %% 17))
            FROM generate_series(1, %s::int8) g
            """,
            (rows,),
        )
        conn.execute("VACUUM ANALYZE public.events")


def load_target(dsn: str, path: Path) -> None:
    config = Config.load({
        "source_url": dsn, "tables": TABLE, "slot_name": "bench_verify",
        "publication_name": "bench_verify", "snapshot": "initial_only", "grpc_port": 0,
        "sink": "duckdb", "duckdb_path": str(path),
    }, env_file=None)
    engine = build_live_engine(config)
    engine.run()
    engine.sink.close()


def cluster_cpu_s(postmaster: int | None) -> float:
    """CPU seconds of the cluster's processes so far (live children + reaped ones)."""
    if postmaster is None:
        return float("nan")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile: its CPU is in the postmaster's cutime now
        pid, ppid = int(entry.name), int(fields[1])
        if ppid == postmaster:
            total += int(fields[11]) + int(fields[12])  # utime, stime
        elif pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # its own + reaped children
    return total / _TICK


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.rows = 0

    def wrap(self, scan: Callable[[TableSchema], Iterator[pa.Table]]
             ) -> Callable[[TableSchema], Iterator[pa.Table]]:
        def timed(table: TableSchema) -> Iterator[pa.Table]:
            it = scan(table)
            while True:
                started = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    self.seconds += time.perf_counter() - started
                    return
                self.seconds += time.perf_counter() - started
                self.rows += batch.num_rows
                yield batch

        return timed


def one_run(dsn: str, postmaster: int | None, path: Path, ranges: int,
            max_rows_per_s: int) -> dict[str, Any]:
    [schema], registry = load_schemas(dsn, [TABLE], {})
    source_timer, target_timer = Timer(), Timer()
    target = DuckDBTarget.open(str(path))
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    cluster_before = cluster_cpu_s(postmaster)
    started = time.perf_counter()
    with SourceSnapshot(dsn, registry, max_rows_per_s=max_rows_per_s,
                        statement_timeout_s=60) as source:
        check = TableCheck(schema, source_timer.wrap(source.scan),
                           target_timer.wrap(target.scan), snapshot_lsn=source.lsn,
                           json_text=True, options=Options(ranges=ranges), target_name="events")
        result = check.run()
    seconds = time.perf_counter() - started
    cluster_after = cluster_cpu_s(postmaster)
    after = resource.getrusage(resource.RUSAGE_SELF)
    target.close()
    rows = result.source_rows
    verify_cpu = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    source_cpu = cluster_after - cluster_before
    return {
        "rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
        "source_read_s": round(source_timer.seconds, 3),
        "source_rows_read": source_timer.rows,
        "target_read_s": round(target_timer.seconds, 3),
        "target_rows_read": target_timer.rows,
        "source_cpu_s": round(source_cpu, 2), "verify_cpu_s": round(verify_cpu, 2),
        "source_cpu_s_per_m_rows": round(source_cpu / rows * 1e6, 2),
        "verify_cpu_s_per_m_rows": round(verify_cpu / rows * 1e6, 2),
        "equal": result.equal, "ranges_differing": result.ranges_differing,
        "changed": result.changed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ranges", type=int, default=64)
    parser.add_argument("--drift", type=int, default=0, help="target rows to change first")
    parser.add_argument("--max-rows-per-s", type=int, default=0)
    parser.add_argument("--dsn", help="existing database (default: a private cluster)")
    args = parser.parse_args()
    with database(args.dsn) as (dsn, postmaster), tempfile.TemporaryDirectory() as tmp:
        create_table(dsn, args.rows)
        path = Path(tmp) / "target.duckdb"
        load_target(dsn, path)
        if args.drift:
            import duckdb

            with duckdb.connect(str(path)) as con:
                step = max(args.rows // args.drift, 1)
                con.execute(f"UPDATE public.events SET qty = qty + 1 WHERE id % {step} = 0")
        runs = []
        for i in range(args.repeat):
            load = os.getloadavg()[0]
            run = one_run(dsn, postmaster, path, args.ranges, args.max_rows_per_s)
            run["load_before"] = round(load, 2)
            run["load_after"] = round(os.getloadavg()[0], 2)
            print(f"run {i + 1}: {json.dumps(run)}", file=sys.stderr)
            runs.append(run)
        best = max(runs, key=lambda r: r["rows_per_s"])
        print(json.dumps({"best": best, "runs": len(runs)}))


if __name__ == "__main__":
    main()
