"""Sink outages: StarRocks (the emulator) down, failing, slow or resetting connections.

For each fault, while a write load runs against a private PostgreSQL whose
``wal_sender_timeout`` is 3 s:

* dbmazz retries with backoff (the fault fires repeatedly / retries are logged);
* reading stops at ``MAX_INFLIGHT_BYTES`` (the engine's in-flight high-water mark) and the
  process's RSS stays bounded while far more WAL than that is written;
* the walsender never times out: the same walsender pid serves the whole test, and it kept
  receiving status updates for longer than 2 × wal_sender_timeout during the fault;
* after recovery the target equals the source exactly, and no LSN range was loaded twice
  (the emulator's VISIBLE load labels never overlap) and no load transaction is left open.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster, free_port
from dbmazz.testing.starrocks import StarRocksEmulator
from dbmazz.testing.starrocks.txn import TxnState
from tests.e2e.harness import mark, wait_until_loaded
from tests.e2e.test_starrocks_e2e import DB, assert_replicated, starrocks_config
from tests.reliability.helpers import poll, rss_bytes, running, walsender_pid

SLOT = "dbmazz_sr"  # starrocks_config's slot
TIMEOUT_S = 3
MAX_INFLIGHT = 1 << 20
TABLE = "public.events"


@pytest.fixture
def source(private_pg_cluster: PostgresCluster) -> Database:
    cluster = private_pg_cluster
    cluster.set_setting("wal_sender_timeout", f"{TIMEOUT_S}s")
    db = Database(cluster, cluster.create_database())
    db.execute("CREATE TABLE public.events (id bigint PRIMARY KEY, v int NOT NULL, "
               "payload text NOT NULL)")
    return db


@pytest.fixture
def emulator() -> Iterator[StarRocksEmulator]:
    """Fixed ports, so a stopped emulator comes back where dbmazz looks for it (its data,
    kept in the same object, survives the stop)."""
    sr = StarRocksEmulator(http_port=free_port(), mysql_port=free_port(),
                           be_ports=[free_port(), free_port()])
    sr.start()
    try:
        yield sr
    finally:
        sr.stop()


@dataclass
class Outage:
    begin: Callable[[StarRocksEmulator], None]
    end: Callable[[StarRocksEmulator], None]
    #: How the test sees that dbmazz retried.
    retried: Callable[[StarRocksEmulator, pytest.LogCaptureFixture], bool]


def _fault(kind: str, **params: Any) -> Outage:
    def begin(sr: StarRocksEmulator) -> None:
        sr.faults.add(kind, times=None, table="events", **params)

    return Outage(begin, lambda sr: sr.faults.clear(),
                  lambda sr, _log: any(f.fired >= 3 for f in sr.faults.pending()))


def _attempts_logged(_sr: StarRocksEmulator, caplog: pytest.LogCaptureFixture) -> bool:
    return sum("failed (attempt" in r.getMessage() for r in caplog.records) >= 3


def _restart(sr: StarRocksEmulator) -> None:
    sr.start()  # same ports, same data


def _slow(sr: StarRocksEmulator) -> None:
    # Each load is held longer than wal_sender_timeout before StarRocks answers.
    sr.faults.add("delay", times=None, seconds=2 * TIMEOUT_S, where="be", table="events")


OUTAGES = {
    "down": Outage(StarRocksEmulator.stop, _restart, _attempts_logged),
    "http 500": _fault("fe_error", status=500, message="Internal Server Error"),
    "too many versions": _fault("too_many_versions"),
    "connection reset": _fault("connection_reset", after_bytes=0),
    "slow": Outage(_slow, lambda sr: sr.faults.clear(),
                   lambda sr, _log: any(f.fired >= 2 for f in sr.faults.pending())),
}


class RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = rss_bytes()

    def run(self) -> None:
        while not self.stop.wait(0.02):  # sampling cadence
            self.peak = max(self.peak, rss_bytes())


def _write(db: Database, first: int, rows: int, per_txn: int = 100) -> None:
    """Inserts (1 KB rows) and updates of earlier rows, in transactions of ``per_txn``."""
    with db.connect() as conn:
        for start in range(first, first + rows, per_txn):
            conn.execute("INSERT INTO events SELECT g, 0, repeat(md5(g::text), 32) "
                         "FROM generate_series(%s::bigint, %s::bigint) g",
                         (start, start + per_txn - 1))
            conn.execute("UPDATE events SET v = v + 1 WHERE id BETWEEN %s AND %s",
                         (start - per_txn // 2, start))


def _server_seconds_since(db: Database, pid: int, since: Any) -> float:
    rows = db.query("SELECT extract(epoch FROM reply_time - %s) FROM pg_stat_replication "
                    "WHERE pid = %s", (since, pid))
    return float(str(rows[0][0])) if rows and rows[0][0] is not None else -1.0


_LABEL = re.compile(r"^dbmazz-.+?-(\d+)-(\d+)(?:-([-\w]+?))?-(\w+)$")


def assert_loaded_once(sr: StarRocksEmulator, table: str) -> int:
    """No LSN range was loaded twice: the batches of VISIBLE loads never overlap (loads of
    one batch share its range), and no load transaction is left open."""
    txns = [t for t in sr.cluster.txns.all() if t.db == DB and t.table == table]
    open_ = [t.label for t in txns if t.state in (TxnState.PREPARE, TxnState.PREPARED)]
    assert not open_, f"load transactions left open: {open_}"
    batches: dict[tuple[int, int, str], list[str]] = {}
    for txn in txns:
        if txn.state != TxnState.VISIBLE:
            continue
        match = _LABEL.match(txn.label)
        assert match, txn.label
        first, last, batch, _suffix = match.groups()
        batches.setdefault((int(first), int(last), batch or ""), []).append(txn.label)
    previous: tuple[int, int, str] | None = None
    for key in sorted(batches):
        if previous is not None:
            assert key[0] > previous[1] or key[:2] == previous[:2], (
                f"LSN ranges loaded twice: {batches[previous]} and {batches[key]}")
        previous = key
    return len(batches)


def ride_out(outage: str, source: Database, emulator: StarRocksEmulator,
             caplog: pytest.LogCaptureFixture, rows: int) -> tuple[int, int]:
    """Run ``outage`` while ``rows`` 1 KB rows are written; return (in-flight high-water
    mark, RSS growth during the outage)."""
    caplog.set_level(logging.WARNING, logger="dbmazz")
    fault = OUTAGES[outage]
    config = starrocks_config(source, emulator.url, emulator.mysql_port, [TABLE],
                              max_inflight_bytes=MAX_INFLIGHT, flush_bytes=256 << 10,
                              heartbeat_interval_s=0, snapshot="never")
    with running(build_live_engine(config)) as engine:
        _write(source, 1, 1000)
        wait_until_loaded(engine, mark(source))
        pid = walsender_pid(source, SLOT)
        assert pid is not None
        [(since,)] = source.query("SELECT now()")
        rss = RssSampler()
        rss.start()
        rss_before = rss.peak
        fault.begin(emulator)
        try:
            _write(source, 100_000, rows)
            poll(lambda: fault.retried(emulator, caplog), "dbmazz to retry", timeout_s=120)
            poll(lambda: engine.progress.inflight_bytes >= MAX_INFLIGHT,
                 "reading to stop at MAX_INFLIGHT_BYTES", timeout_s=120)
            # Status updates keep reaching the walsender for longer than its timeout.
            poll(lambda: _server_seconds_since(source, pid, since) > 1.5 * TIMEOUT_S,
                 "status updates spanning 1.5 × wal_sender_timeout", timeout_s=120,
                 abort=lambda: None if walsender_pid(source, SLOT) == pid
                 else "the walsender was replaced")
        finally:
            fault.end(emulator)
            rss.stop.set()
            rss.join()
        wait_until_loaded(engine, mark(source), timeout_s=600)
        assert walsender_pid(source, SLOT) == pid, "the walsender timed out and was replaced"
        peak = engine.progress.inflight_peak
    assert_replicated(source, lambda t: emulator.rows(DB, t), {TABLE: ["id"]})
    assert assert_loaded_once(emulator, "events") > 0
    return peak, rss.peak - rss_before


#: Reading stops once in-flight bytes reach the limit; the read that crossed it (at most
#: 4 MiB of frames, the reader's chunk size) is the only overshoot.
READ_SLACK = 4 << 20


@pytest.mark.parametrize("outage", [
    "down", "connection reset", "slow",
    pytest.param("http 500", marks=pytest.mark.slow),
    pytest.param("too many versions", marks=pytest.mark.slow),
])
def test_sink_outage_is_ridden_out(outage: str, source: Database, emulator: StarRocksEmulator,
                                   caplog: pytest.LogCaptureFixture) -> None:
    # ~4 MB of WAL, 4 × MAX_INFLIGHT_BYTES, written while the sink is out.
    peak, growth = ride_out(outage, source, emulator, caplog, rows=4_000)
    assert peak <= MAX_INFLIGHT + READ_SLACK, peak
    assert growth < 32 << 20, f"RSS grew {growth >> 20} MiB while the sink was out"


@pytest.mark.slow
def test_memory_stays_bounded_through_a_long_outage(
        source: Database, emulator: StarRocksEmulator,
        caplog: pytest.LogCaptureFixture) -> None:
    # ~120 MB of WAL while StarRocks is down: memory follows MAX_INFLIGHT_BYTES, not it.
    peak, growth = ride_out("down", source, emulator, caplog, rows=120_000)
    assert peak <= MAX_INFLIGHT + READ_SLACK, peak
    assert growth < 32 << 20, f"RSS grew {growth >> 20} MiB while 120 MB were written"


@pytest.mark.parametrize("delivery", ["at commit", "streamed"])
def test_too_many_versions_inside_a_split_transaction_resends_it(
        delivery: str, source: Database, emulator: StarRocksEmulator,
        caplog: pytest.LogCaptureFixture) -> None:
    """A transaction larger than a batch goes through StarRocks' transaction interface; when
    StarRocks aborts it (too many versions), dbmazz resends it from the checkpoint, backing
    off while the fault lasts, and loads it exactly once it clears.

    Both ways the transaction can arrive: at its commit (protocol 1; in as many reads as
    the reader happens to need, one when it lags) and streamed while it runs (spooled and
    delivered at Stream Commit in one piece)."""
    caplog.set_level(logging.INFO, logger="dbmazz")
    streamed = delivery == "streamed"
    if streamed:
        # The transaction (~4 MB) exceeds this, so the walsender streams it while it runs.
        source.server.set_setting("logical_decoding_work_mem", "64kB")
    config = starrocks_config(source, emulator.url, emulator.mysql_port, [TABLE],
                              flush_rows=500, heartbeat_interval_s=0, snapshot="never",
                              pgoutput_protocol="auto" if streamed else "1")
    with running(build_live_engine(config)) as engine:
        _write(source, 1, 100)
        wait_until_loaded(engine, mark(source))
        channel = engine.source_channel
        assert channel is not None
        # 'parallel' on PostgreSQL 16+ (protocol 4), 'on' on 14 and 15.
        assert (channel.streaming != "off") == streamed, channel
        emulator.faults.add("too_many_versions", times=None, table="events")
        _write(source, 10_000, 2_000, per_txn=2_000)  # one transaction of 2,001 rows: five parts
        poll(lambda: sum("restarting the stream at the checkpoint" in r.getMessage()
                         for r in caplog.records) >= 2, "two resends", timeout_s=120)
        emulator.faults.clear()
        wait_until_loaded(engine, mark(source), timeout_s=300)
        assert engine.progress.state.value == "RUNNING"
        if streamed:
            poll(lambda: source.query("SELECT stream_txns FROM pg_stat_replication_slots "
                                      "WHERE slot_name = %s", (SLOT,))[0][0],
                 "the transaction streamed", timeout_s=30)
    assert_replicated(source, lambda t: emulator.rows(DB, t), {TABLE: ["id"]})
    assert assert_loaded_once(emulator, "events") > 0
