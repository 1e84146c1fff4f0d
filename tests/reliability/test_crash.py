"""Crash suite: ``dbmazz run`` killed with SIGKILL at random moments under a continuous
mixed write load, restarted each time; nothing is lost and nothing is confirmed early.

Evidence, not luck:

* dbmazz runs with ``DBMAZZ_AUDIT_LOG``: it journals (fsync) every sink acknowledgement
  and every confirmation *before* confirming. The journal, replayed against a
  ``test_decoding`` observer slot (ground truth of every committed transaction), shows no
  confirmation covering a transaction whose changes the sink had not acknowledged, and no
  confirmation inside a transaction (invariant 1);
* the slot's ``confirmed_flush_lsn`` and ``dbmazz_checkpoints`` are sampled while dbmazz
  runs and checked the same way;
* after every kill, with dbmazz dead, the target itself is read: every key changed by a
  transaction at or below what the slot/checkpoint claim has a row whose
  ``dbmazz_cdc_version`` is that change or a newer one;
* at the end the target equals the source exactly (invariant 3).

Seeded: a failure reproduces with the same seed. Both targets: DuckDB, and the StarRocks
emulator as a separate process (it survives dbmazz's kills). Both replica identities:
FULL, and DEFAULT kept (``REPLICA_IDENTITY=keep``), where the writer's key changes of rows
with an unchanged TOAST value must be carried from the old key (issue 20).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.setup import setup_source
from dbmazz.testing.compare import compare
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import assert_replicated, mark
from tests.reliability.helpers import (
    CRASH_KEYS,
    CRASH_SCHEMA,
    DbmazzProcess,
    JournalTail,
    Observer,
    Sampler,
    Verifier,
    Writer,
    checkpoint,
    duckdb_versions,
    poll,
    slot_position,
    standalone_starrocks,
    starrocks_fetcher,
    starrocks_versions,
)

SLOT = "dbmazz_crash"
PUBLICATION = "dbmazz_crash"
SR_DB = "crash"


@dataclass
class Target:
    env: dict[str, str]
    versions: Callable[[], dict[str, dict[tuple[int, ...], int]]]
    check_equal: Callable[[Database], None]


@pytest.fixture(params=["duckdb", "starrocks"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "duckdb":
        path = str(tmp_path / "crash.duckdb")

        def duck_equal(db: Database) -> None:
            sink = DuckDBSink(path)
            try:
                assert_replicated(db, sink, CRASH_KEYS)
            finally:
                sink.close()

        yield Target({"SINK": "duckdb", "DUCKDB_PATH": path},
                     lambda: duckdb_versions(path, CRASH_KEYS), duck_equal)
        return
    with standalone_starrocks() as sr:

        def sr_equal(db: Database) -> None:
            problems = []
            with db.connect() as conn:
                for name, keys in CRASH_KEYS.items():
                    ns, table = name.split(".")
                    fetch = starrocks_fetcher(lambda table=table: sr.rows(SR_DB, table))
                    diff = compare(conn, ns, table, keys, fetch)
                    if not diff.equal:
                        problems.append(str(diff))
            assert not problems, "\n".join(problems)

        yield Target({"SINK": "starrocks", "STARROCKS_URL": sr.url,
                      "STARROCKS_MYSQL_PORT": str(sr.mysql_port), "STARROCKS_DB": SR_DB},
                     lambda: starrocks_versions(sr, SR_DB, CRASH_KEYS), sr_equal)


def _kill_moment(rng: random.Random, proc: DbmazzProcess, tail: JournalTail,
                 writer: Writer) -> str:
    """Wait (bounded) for a randomly chosen point of a run, return its name."""

    def abort() -> str | None:
        if writer.error is not None:
            return f"the writer failed: {writer.error!r}"
        return proc.dead()

    tail.refresh()
    moment = rng.choice(["spawn", "setup done", "acks", "acks", "acks", "acks", "confirm"])
    starts, acks, confirms = tail.starts, tail.acks, tail.confirms
    if moment == "setup done":
        poll(lambda: tail.refresh().starts > starts, "the engine to start", abort=abort)
    elif moment == "acks":
        n = rng.randint(1, 15)
        moment = f"after {n} acks"
        poll(lambda: tail.refresh().acks >= acks + n, moment, abort=abort)
    elif moment == "confirm":
        poll(lambda: tail.refresh().confirms > confirms, "a confirmation", abort=abort)
    return moment


@pytest.fixture(params=["full", "keep"])
def identity(request: pytest.FixtureRequest) -> str:
    """REPLICA_IDENTITY: FULL (old rows complete) or the tables' DEFAULT kept, where a key
    change of a row with an unchanged TOAST value arrives without it (issue 20)."""
    return str(request.param)


def crash_run(db: Database, tmp_path: Path, target: Target, *, kills: int, pace_s: float,
              seed: int, identity: str = "full") -> dict[str, Any]:
    db.execute(CRASH_SCHEMA)
    observer = Observer(db, "obs_crash", CRASH_KEYS)
    # The slot exists before the first write, so the stream sees every transaction.
    setup_source(db.dsn, list(CRASH_KEYS), PUBLICATION, SLOT, replica_identity=identity)
    if identity == "keep":
        [(kept,)] = db.query("SELECT count(*) FROM pg_class WHERE relname IN ('acct', 'ledger') "
                             "AND relreplident = 'd'")
        assert kept == 2, "the crash tables must keep REPLICA IDENTITY DEFAULT"
    journal = tmp_path / "audit.jsonl"
    env = {
        **os.environ,
        "SOURCE_URL": db.dsn,
        "TABLES": ",".join(CRASH_KEYS),
        "SLOT_NAME": SLOT,
        "PUBLICATION_NAME": PUBLICATION,
        "FLUSH_INTERVAL_MS": "50",
        "FLUSH_ROWS": "200",  # the writer's bulk transactions (300 rows) are split
        "GRPC_PORT": "0",
        "HEARTBEAT_INTERVAL_S": "1",
        "SNAPSHOT": "never",  # the slot is made before any write: nothing to snapshot
        "DBMAZZ_AUDIT_LOG": str(journal),
        "REPLICA_IDENTITY": identity,
        **target.env,
    }
    rng = random.Random(seed)
    proc = DbmazzProcess(env, tmp_path)
    writer = Writer(db.dsn, seed, pace_s=pace_s)
    sampler = Sampler(db, SLOT, journal)
    verifier = Verifier(observer)
    tail = JournalTail(journal)
    moments: list[str] = []
    checked_keys = 0
    try:
        writer.start()
        sampler.start()
        for _ in range(kills):
            proc.start()
            moments.append(_kill_moment(rng, proc, tail, writer))
            proc.kill()
            # dbmazz is dead: whatever the slot or the checkpoint call durable must be in
            # the target.
            observer.consume()
            position = slot_position(db, SLOT)
            assert position is not None
            durable = max(checkpoint(db, SLOT), position[0])
            checked_keys += verifier.check_target(durable, target.versions())
        committed = writer.finish()
        proc.start()
        marker = mark(db)
        poll(lambda: checkpoint(db, SLOT) > marker, "the last run to catch up",
             timeout_s=300, abort=proc.dead)
        assert proc.terminate() == 0, proc.log()
        samples = sampler.finish()
        observer.consume()
        counts = verifier.check_journal(journal, samples)
        checked_keys += verifier.check_target(checkpoint(db, SLOT), target.versions())
        target.check_equal(db)
    finally:
        proc.close()
        writer.stop.set()
        sampler.stop.set()
        observer.drop()
    assert counts["confirms"] > kills and counts["samples"] > 0, counts
    assert "Traceback" not in proc.all_logs(), proc.all_logs()[-5000:]
    return {"moments": moments, "transactions": committed, "keys checked": checked_keys,
            **counts}


def test_sigkill_under_load_loses_nothing_and_never_confirms_early(
        pg_db: Database, tmp_path: Path, target: Target, identity: str) -> None:
    report = crash_run(pg_db, tmp_path, target, kills=3, seed=20240611, pace_s=0.01,
                       identity=identity)
    assert report["transactions"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_many_times(pg_db: Database, tmp_path: Path, target: Target,
                            seed: int, identity: str) -> None:
    report = crash_run(pg_db, tmp_path, target, kills=20, seed=seed, pace_s=0.005,
                       identity=identity)
    assert report["transactions"] > 0
