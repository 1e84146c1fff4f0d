"""Snapshot benchmark: initial snapshot throughput next to PostgreSQL's raw COPY read speed.

A table of ``--rows`` rows with bench/decode.py's six columns (int8 key, int4, text ~40
bytes, timestamptz, numeric(12,2), small jsonb) is created in a private PostgreSQL cluster
(or ``--dsn``). Then, alternately, each measured ``--repeat`` times (best run kept: the
machine is shared):

* raw read: ``psql -c "\\copy (SELECT …) to /dev/null"`` — one connection, no conversion;
* the initial snapshot (``SNAPSHOT=initial_only``, ``SNAPSHOT_WORKERS`` = ``--workers``)
  into DuckDB; into a null sink (read + convert only) with the ADBC and with the COPY/CSV
  reader; into a sink that only serializes Stream Load bodies (JSON); the whole StarRocks
  path (default CSV bodies, HTTP) into ``bench/nullsink.py`` (``null_stream_load``: a
  Stream Load endpoint that discards bodies); and into the StarRocks
  emulator (``--starrocks``; a Python stand-in for FE/BE, so that number measures the
  emulator far more than dbmazz).

Snapshot time is the snapshot stage itself (first chunk started → last chunk loaded); slot
creation and target setup are excluded. The last line printed is one JSON object:

    {"rows": N, "raw_copy_rows_per_s": R, "duckdb_rows_per_s": D, "duckdb_ratio": D/R, ...}

With each rate comes the machine's CPU per row in that stage (every process: PostgreSQL's
backends, dbmazz, the null endpoint; ``*_machine_cpu_us_per_row``) and the ratio the same
work would reach with every core busy (``*_cpu_bound_ratio``): on a small machine that
ceiling, not waiting, is what bounds the ratio to raw COPY.

Usage: ``python bench/snapshot.py [--rows 5000000] [--workers 2] [--repeat 2]
[--starrocks] [--only duckdb,null] [--dsn postgresql://…]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import Sampler, machine_busy_s, null_sink

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.pipeline.batch import LoadResult, TableBatch
from dbmazz.sink.base import Sink
from dbmazz.source.slots import drop_slot
from dbmazz.testing.sinks import NullSink

COLUMNS = "id, qty, note, created_at, amount, payload"
SLOT = "bench_snapshot"


class SerializingSink(NullSink):
    """Serializes every batch for Stream Load (JSON) and drops it: the StarRocks path up to
    the network, without the emulator (a Python stand-in, far slower than a real BE)."""

    name = "starrocks-serialize"

    def write(self, batch: TableBatch) -> LoadResult:
        from dbmazz.sink.starrocks.serialize import serialize

        size = 0
        for group in batch.upserts:
            body = serialize(group.rows, "json", raw_json=("payload",))
            size += len(body.data)
        return LoadResult(rows=batch.num_rows, bytes=size)


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from dbmazz.testing.postgres import temporary_cluster

    with temporary_cluster({"shared_buffers": "256MB"}) as cluster:
        name = cluster.create_database("bench_snapshot")
        yield cluster.dsn(name)


def existing_rows(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('public.events')").fetchone() == (None,):
            return None
        row = conn.execute("SELECT count(*) FROM public.events").fetchone()
        return int(row[0]) if row else None


def create_table(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.events")
        conn.execute(
            "CREATE TABLE public.events (id bigint PRIMARY KEY, qty int, note text, "
            "created_at timestamptz, amount numeric(12,2), payload jsonb)"
        )
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


def raw_copy_seconds(dsn: str) -> float:
    psql = shutil.which("psql")
    if psql is None:
        raise SystemExit("psql is needed for the raw COPY reference")
    started = time.perf_counter()
    subprocess.run([psql, dsn, "-X", "-q", "-c",
                    f"\\copy (SELECT {COLUMNS} FROM public.events) to /dev/null"],
                   check=True, capture_output=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def null_stream_load() -> Iterator[dict[str, int]]:
    """bench/nullsink.py (Stream Load that discards bodies) with bench.events created."""
    with null_sink() as (ports, process):
        NULL_STREAM_LOAD_PROCESS.append(process)
        yield ports


NULL_STREAM_LOAD: dict[str, int] = {}
NULL_STREAM_LOAD_PROCESS: list[psutil.Process] = []


class BusySampler(Sampler):
    """CPU seconds sampled every 20 ms — the machine's, this process's (dbmazz runs in it)
    and the null endpoint's — so a stage's share can be read afterwards (the snapshot
    stage's bounds are known only when the run is over)."""

    def __init__(self, endpoint: psutil.Process | None) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.samples: list[tuple[float, float, float, float]] = []

    def _run(self) -> None:
        me = psutil.Process()
        while True:
            ours = me.cpu_times()
            theirs = self.endpoint.cpu_times() if self.endpoint is not None else None
            self.samples.append((time.time(), machine_busy_s(), ours.user + ours.system,
                                 theirs.user + theirs.system if theirs else 0.0))
            if self._stop.wait(0.02):
                return

    def between(self, start: float, end: float) -> StageCpu:
        series = np.array(self.samples).T
        machine, dbmazz, endpoint = (
            float(np.interp(end, series[0], s) - np.interp(start, series[0], s))
            for s in series[1:])
        return StageCpu(machine, dbmazz, endpoint)


@dataclass
class StageCpu:
    machine: float
    dbmazz: float
    endpoint: float


def snapshot_seconds(dsn: str, workdir: Path, sink_kind: str, reader: str, workers: int,
                     rows: int) -> tuple[float, StageCpu]:
    """One initial snapshot into a fresh target; returns the snapshot stage's seconds and
    the CPU spent in it (machine, dbmazz, null endpoint)."""
    drop_slot(dsn, SLOT)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.dbmazz_snapshot_progress")
        conn.execute("DROP TABLE IF EXISTS public.dbmazz_checkpoints")
    options: dict[str, Any] = {
        "source_url": dsn, "tables": "public.events", "slot_name": SLOT,
        "publication_name": "bench_snapshot", "snapshot": "initial_only",
        "snapshot_workers": workers, "grpc_port": 0,
    }
    emulator = None
    sink: Sink | None = None
    if sink_kind == "duckdb":
        path = workdir / f"bench-{time.monotonic_ns()}.duckdb"
        options.update(sink="duckdb", duckdb_path=str(path))
    elif sink_kind == "null_stream_load":
        ports = NULL_STREAM_LOAD
        options.update(sink="starrocks", setup="skip", starrocks_db="bench",
                       starrocks_url=f"http://127.0.0.1:{ports['http_port']}",
                       starrocks_mysql_port=ports["mysql_port"])
    elif sink_kind == "starrocks":
        from dbmazz.testing.starrocks import StarRocksEmulator

        emulator = StarRocksEmulator().start()
        options.update(sink="starrocks", starrocks_url=emulator.url,
                       starrocks_mysql_port=emulator.mysql_port)
    else:
        options["sink"] = "duckdb"
        sink = SerializingSink() if sink_kind == "serialize" else NullSink()
    config = Config.load(options, env_file=None)
    try:
        engine = build_live_engine(config, sink=sink)
        assert engine.snapshots is not None
        engine.snapshots.context.reader_kind = reader  # type: ignore[assignment]
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        endpoint = NULL_STREAM_LOAD_PROCESS[0] if sink_kind == "null_stream_load" else None
        with BusySampler(endpoint) as sampler:
            engine.run()
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(f"  dbmazz process CPU {after.ru_utime - cpu.ru_utime:.2f}s user "
              f"+ {after.ru_stime - cpu.ru_stime:.2f}s sys (whole run)", file=sys.stderr)
        progress = engine.snapshot_progress
        assert progress is not None and progress.finished_at and progress.started_at
        assert progress.rows_copied == rows, (progress.rows_copied, rows)
        engine.sink.close()
        return (progress.finished_at - progress.started_at,
                sampler.between(progress.started_at, progress.finished_at))
    finally:
        if emulator is not None:
            emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--starrocks", action="store_true",
                        help="also load into the StarRocks emulator")
    parser.add_argument("--dsn", help="existing database (default: a private cluster)")
    parser.add_argument("--only", help="comma-separated contenders to run (default: all of "
                        "duckdb,null,null_copy_reader,starrocks_serialize,null_stream_load"
                        "[,starrocks])")
    parser.add_argument("--reuse", action="store_true",
                        help="with --dsn: keep public.events if it already has --rows rows")
    args = parser.parse_args()
    runs: list[tuple[str, str, str]] = [
        ("duckdb", "duckdb", "auto"), ("null", "null", "adbc"),
        ("null_copy_reader", "null", "copy"), ("starrocks_serialize", "serialize", "auto"),
        ("null_stream_load", "null_stream_load", "auto"),
    ]
    if args.starrocks:
        runs.append(("starrocks", "starrocks", "auto"))
    if args.only:
        wanted = set(args.only.split(","))
        runs = [r for r in runs if r[0] in wanted]
        if not runs:
            parser.error(f"--only: none of {args.only} is a contender")
    workdir = Path(tempfile.mkdtemp(prefix="dbmazz-bench-snapshot-"))
    best: dict[str, float] = {}
    # Machine CPU (all processes: PostgreSQL's backends, dbmazz, the null endpoint) of each
    # contender's best run: on a small machine the ratio's ceiling is CPU, not waiting.
    busy: dict[str, StageCpu] = {}
    loads: list[list[float]] = []
    try:
        with database(args.dsn) as dsn, contextlib.ExitStack() as stack:
            if any(kind == "null_stream_load" for _, kind, _ in runs):
                NULL_STREAM_LOAD.update(stack.enter_context(null_stream_load()))
            if not (args.reuse and existing_rows(dsn) == args.rows):
                print(f"creating {args.rows} rows ...", file=sys.stderr)
                create_table(dsn, args.rows)
            raw_copy_seconds(dsn)  # warm the cache
            for round_ in range(args.repeat):
                loads.append([round(x, 2) for x in os.getloadavg()])
                before = machine_busy_s()
                seconds = raw_copy_seconds(dsn)
                if seconds < best.get("raw_copy", float("inf")):
                    best["raw_copy"] = seconds
                    busy["raw_copy"] = StageCpu(machine_busy_s() - before, 0.0, 0.0)
                print(f"round {round_ + 1}: raw COPY {seconds:.2f}s", file=sys.stderr)
                for name, sink_kind, reader in runs:
                    seconds, cpu = snapshot_seconds(dsn, workdir, sink_kind, reader,
                                                    args.workers, args.rows)
                    if seconds < best.get(name, float("inf")):
                        best[name], busy[name] = seconds, cpu
                    print(f"round {round_ + 1}: {name} {seconds:.2f}s "
                          f"({args.rows / seconds:,.0f} rows/s)", file=sys.stderr)
            drop_slot(dsn, SLOT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    raw = args.rows / best["raw_copy"]
    cpus = os.cpu_count() or 1

    def per_row(seconds: float) -> float:
        return round(seconds * 1e6 / args.rows, 3)

    result: dict[str, Any] = {"rows": args.rows, "workers": args.workers, "cpus": cpus,
                              "raw_copy_rows_per_s": round(raw),
                              "raw_copy_machine_cpu_us_per_row":
                                  per_row(busy["raw_copy"].machine)}
    for name, *_ in runs:
        rate = args.rows / best[name]
        cpu = busy[name]
        result[f"{name}_rows_per_s"] = round(rate)
        result[f"{name}_ratio"] = round(rate / raw, 3)
        # CPU per row in the snapshot stage (the machine: PostgreSQL's backends, dbmazz and
        # the null endpoint), and the ratio that work reaches with every core busy: the
        # ceiling on this machine. A real BE runs elsewhere, hence the ceiling without it.
        result[f"{name}_machine_cpu_us_per_row"] = per_row(cpu.machine)
        result[f"{name}_dbmazz_cpu_us_per_row"] = per_row(cpu.dbmazz)
        result[f"{name}_cpu_bound_ratio"] = round(cpus * args.rows / cpu.machine / raw, 3)
        if cpu.endpoint:
            result[f"{name}_endpoint_cpu_us_per_row"] = per_row(cpu.endpoint)
            result[f"{name}_cpu_bound_ratio_without_endpoint"] = round(
                cpus * args.rows / (cpu.machine - cpu.endpoint) / raw, 3)
    result["loadavg_per_round"] = loads
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
