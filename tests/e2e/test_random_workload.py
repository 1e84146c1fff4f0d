"""A seeded, randomized differential workload against both sinks.

Each seed is one test case: it fixes the tables' replica identities, the engine's flush
boundaries (small batches that cut transactions apart, or large ones that merge many), the
sink (DuckDB, or the StarRocks emulator loading JSON or CSV), whether the engine is stopped
and started again from its checkpoint in the middle, and a stream of random transactions:
inserts, updates of non-key columns that leave large TOASTed text/jsonb/bytea values
unchanged, primary-key changes (chains, swaps through a temporary key, a key moved onto
one deleted earlier in the same transaction, key change then delete, delete then
re-insert), deletes, multi-row statements, savepoints rolled back and, rarely, TRUNCATE.
The target must end up equal to the source, table by table.

The workload is deterministic for a seed (``Workload`` keeps a model of the keys only to
choose valid statements; the source itself is the truth). A failure prints the seed; run
that one case with ``-k 'seed_<n>'``.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import assert_replicated as assert_duckdb_replicated
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.e2e.test_starrocks_e2e import DB as SR_DB
from tests.e2e.test_starrocks_e2e import assert_replicated as assert_sr_replicated
from tests.e2e.test_starrocks_e2e import starrocks_config

TABLES = {
    "public.rw_docs": ["id"],
    "public.rw_comp": ["a", "b"],
    "public.rw_small": ["k"],
}

SCHEMA = """
CREATE TABLE public.rw_docs (id int PRIMARY KEY, v int NOT NULL, doc text, meta jsonb,
                             blob bytea, note text);
CREATE TABLE public.rw_comp (a int, b text, qty int, body text, PRIMARY KEY (a, b));
CREATE TABLE public.rw_small (k text PRIMARY KEY, n int, label text);
"""


def big_text(rng: random.Random, lo: int = 2_500, hi: int = 6_000) -> str:
    """Random letters: pglz cannot shrink them, so the value is TOASTed out of line."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(lo, hi)))


@dataclass
class Plan:
    """What one seed runs: the engine's settings and the workload's size."""

    seed: int
    sink: str                    # duckdb | json | csv (StarRocks load formats)
    identities: dict[str, str]   # table → DEFAULT | FULL
    flush_rows: int
    flush_interval_ms: int
    transactions: int
    restart_at: int | None       # stop the engine after this many transactions
    delete_mode: str = "soft"
    streamed: bool = False       # logical_decoding_work_mem 64kB: most transactions stream
    down_for: int = 0            # transactions committed while the engine is stopped
    flush_bytes: int = 32 << 20  # small: transactions carrying large values split by size

    @classmethod
    def of(cls, seed: int, transactions: int) -> Plan:
        rng = random.Random(seed * 7919)
        small = rng.random() < 0.6
        sink = rng.choice(["duckdb", "json", "csv"])
        identities = {t: rng.choice(["DEFAULT", "DEFAULT", "FULL"]) for t in TABLES}
        rows = [2, 3, 5, 8, 13]
        if sink != "duckdb" and "DEFAULT" in identities.values():
            # StarRocks cannot read a split transaction's own uncommitted rows back, which
            # a key change under DEFAULT may need (refused by design, tests/e2e/
            # test_key_change_toast.py): its small batches cut between transactions only.
            rows = [400]
        return cls(
            seed=seed,
            sink=sink,
            identities=identities,
            flush_rows=rng.choice(rows) if small else 50_000,
            flush_interval_ms=rng.choice([5, 20, 50]) if small else 2_000,
            transactions=transactions,
            restart_at=rng.randrange(transactions) if rng.random() < 0.5 else None,
            delete_mode=rng.choice(["soft", "hard"]),
            streamed=rng.random() < 0.4,
            down_for=rng.choice([0, 1, 5]),
            flush_bytes=rng.choice([16_384, 32 << 20]) if 2 in rows else 32 << 20,
        )


class Workload:
    """Random transactions over the three tables, from one seed."""

    def __init__(self, seed: int, *, long_keys: bool = False) -> None:
        self.rng = random.Random(seed)
        #: Some text keys long enough to be stored out of line (StarRocks refuses keys over
        #: 128 bytes): an update that leaves them alone sends them unchanged.
        self.long_keys = long_keys
        self.docs: set[int] = set()
        self.comp: set[tuple[int, str]] = set()
        self.small: set[str] = set()
        self.next_id = 1
        self.savepoints = 0

    # -- model ------------------------------------------------------------------------
    def _state(self) -> tuple[set[int], set[tuple[int, str]], set[str], int]:
        return set(self.docs), set(self.comp), set(self.small), self.next_id

    def _restore(self, state: tuple[set[int], set[tuple[int, str]], set[str], int]) -> None:
        self.docs, self.comp, self.small, self.next_id = (
            set(state[0]), set(state[1]), set(state[2]), state[3])

    def _fresh(self) -> int:
        self.next_id += self.rng.randint(1, 3)
        return self.next_id

    def _doc_row(self) -> tuple[Any, ...]:
        rng = self.rng
        return (rng.randint(0, 99), big_text(rng) if rng.random() < 0.9 else None,
                psycopg.types.json.Jsonb({"data": big_text(rng), "n": rng.randint(0, 9)})
                if rng.random() < 0.8 else None,
                rng.randbytes(rng.randint(2_500, 5_000)) if rng.random() < 0.8 else None,
                f"n{rng.randint(0, 999)}")

    # -- statements ---------------------------------------------------------------------
    def insert_docs(self, conn: psycopg.Connection, count: int = 1) -> None:
        rows = [(self._fresh(), *self._doc_row()) for _ in range(count)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rw_docs VALUES (%s, %s, %s, %s, %s, %s)", rows)
        self.docs.update(r[0] for r in rows)

    def insert_comp(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        key = (rng.randint(0, 5), f"b{self._fresh()}")
        if self.long_keys and rng.random() < 0.3:
            key = (key[0], key[1] + big_text(rng, 2_200, 2_600))
        body = big_text(rng) if rng.random() < 0.7 else "short"
        conn.execute("INSERT INTO rw_comp VALUES (%s, %s, %s, %s)",
                     (*key, rng.randint(0, 9), body))
        self.comp.add(key)

    def insert_small(self, conn: psycopg.Connection) -> None:
        key = f"k{self._fresh()}"
        if self.long_keys and self.rng.random() < 0.3:
            key += big_text(self.rng, 2_200, 2_600)
        conn.execute("INSERT INTO rw_small VALUES (%s, %s, %s)",
                     (key, self.rng.randint(0, 9), "x" * self.rng.randint(0, 20)))
        self.small.add(key)

    def step(self, conn: psycopg.Connection) -> None:
        """One random statement (or a short run of them) in the open transaction."""
        rng = self.rng
        docs = sorted(self.docs)
        choice = rng.random()
        if not docs or choice < 0.12:
            self.insert_docs(conn, rng.choice([1, 1, 3]))
        elif choice < 0.30:
            # Non-key update: the TOAST columns stay unchanged.
            ids = rng.sample(docs, min(len(docs), rng.choice([1, 1, 4])))
            conn.execute("UPDATE rw_docs SET v = v + 1, note = %s WHERE id = ANY(%s)",
                         (f"u{rng.randint(0, 999)}", ids))
        elif choice < 0.36:
            # One TOAST column changes, the others stay.
            target = rng.choice(docs)
            column = rng.choice(["doc", "blob"])
            value: Any = big_text(rng) if column == "doc" else rng.randbytes(3_000)
            conn.execute(f"UPDATE rw_docs SET {column} = %s WHERE id = %s", (value, target))
        elif choice < 0.46:
            # Key change, chained 1 → 3 times.
            current = rng.choice(docs)
            for _ in range(rng.randint(1, 3)):
                new = self._fresh()
                extra = ", v = v + 10" if rng.random() < 0.3 else ""
                conn.execute(f"UPDATE rw_docs SET id = %s{extra} WHERE id = %s", (new, current))
                self.docs.discard(current)
                self.docs.add(new)
                current = new
        elif choice < 0.50 and len(docs) >= 2:
            # Swap two keys through a temporary key.
            x, y = rng.sample(docs, 2)
            tmp = -self._fresh()
            conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (tmp, x))
            conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (x, y))
            conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (y, tmp))
        elif choice < 0.55 and len(docs) >= 2:
            # A key moved onto a key deleted earlier (in this transaction).
            x, y = rng.sample(docs, 2)
            conn.execute("DELETE FROM rw_docs WHERE id = %s", (y,))
            if rng.random() < 0.5:
                conn.execute("UPDATE rw_docs SET v = v + 1 WHERE id = %s", (x,))
            conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (y, x))
            self.docs.discard(x)
        elif choice < 0.59:
            # Key change, then delete of the new key.
            x = rng.choice(docs)
            new = self._fresh()
            conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (new, x))
            conn.execute("DELETE FROM rw_docs WHERE id = %s", (new,))
            self.docs.discard(x)
        elif choice < 0.64:
            # Delete, then insert the same key again (new values, or the old key moved back).
            x = rng.choice(docs)
            conn.execute("DELETE FROM rw_docs WHERE id = %s", (x,))
            if rng.random() < 0.5:
                conn.execute("INSERT INTO rw_docs VALUES (%s, %s, %s, %s, %s, %s)",
                             (x, *self._doc_row()))
            else:
                self.docs.discard(x)
                others = sorted(self.docs)
                if others:
                    y = rng.choice(others)
                    conn.execute("UPDATE rw_docs SET id = %s WHERE id = %s", (x, y))
                    self.docs.discard(y)
                    self.docs.add(x)
        elif choice < 0.68:
            # A multi-row key change (new keys collide with none, old or new).
            ids = rng.sample(docs, min(len(docs), rng.randint(2, 4)))
            offset = max(max(self.docs), self.next_id) - min(ids) + 1
            self.next_id = offset + max(ids)
            conn.execute("UPDATE rw_docs SET id = id + %s WHERE id = ANY(%s)", (offset, ids))
            self.docs.difference_update(ids)
            self.docs.update(i + offset for i in ids)
        elif choice < 0.74:
            ids = rng.sample(docs, min(len(docs), rng.choice([1, 1, 3])))
            conn.execute("DELETE FROM rw_docs WHERE id = ANY(%s)", (ids,))
            self.docs.difference_update(ids)
        elif choice < 0.88:
            self.comp_step(conn)
        elif choice < 0.95:
            self.small_step(conn)
        elif choice < 0.97:
            # Every row at once: a transaction larger than a small batch, split in parts.
            conn.execute("UPDATE rw_docs SET v = v + 1")
            conn.execute("UPDATE rw_comp SET qty = qty + 1")
        elif choice < 0.985:
            # A savepoint rolled back: none of its changes exist.
            state = self._state()
            self.savepoints += 1  # nested ones each by their own name
            name = f"sp{self.savepoints}"
            conn.execute(f"SAVEPOINT {name}")
            for _ in range(rng.randint(1, 3)):
                self.step(conn)
            conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._restore(state)
        else:
            table = rng.choice(list(TABLES))
            conn.execute(f"TRUNCATE {table}")
            {"public.rw_docs": self.docs, "public.rw_comp": self.comp,
             "public.rw_small": self.small}[table].clear()

    def comp_step(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        keys = sorted(self.comp)
        choice = rng.random()
        if not keys or choice < 0.25:
            self.insert_comp(conn)
        elif choice < 0.50:
            a, b = rng.choice(keys)
            conn.execute("UPDATE rw_comp SET qty = qty + 1 WHERE a = %s AND b = %s", (a, b))
        elif choice < 0.80:
            # Change one part of the composite key, sometimes twice.
            a, b = rng.choice(keys)
            for _ in range(rng.randint(1, 2)):
                new = (a + 10 + rng.randint(0, 5), b) if rng.random() < 0.5 else (
                    a, f"{b}-m{self._fresh()}")
                if new in self.comp:
                    break
                conn.execute("UPDATE rw_comp SET a = %s, b = %s WHERE a = %s AND b = %s",
                             (*new, a, b))
                self.comp.discard((a, b))
                self.comp.add(new)
                a, b = new
        else:
            a, b = rng.choice(keys)
            conn.execute("DELETE FROM rw_comp WHERE a = %s AND b = %s", (a, b))
            self.comp.discard((a, b))

    def small_step(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        keys = sorted(self.small)
        choice = rng.random()
        if not keys or choice < 0.35:
            self.insert_small(conn)
        elif choice < 0.6:
            conn.execute("UPDATE rw_small SET n = n + 1 WHERE k = %s", (rng.choice(keys),))
        elif choice < 0.8:
            k = rng.choice(keys)
            new = f"k{self._fresh()}"
            conn.execute("UPDATE rw_small SET k = %s WHERE k = %s", (new, k))
            self.small.discard(k)
            self.small.add(new)
        else:
            k = rng.choice(keys)
            conn.execute("DELETE FROM rw_small WHERE k = %s", (k,))
            self.small.discard(k)

    def transaction(self, db: Database) -> None:
        with db.connect() as conn, conn.transaction():
            for _ in range(self.rng.randint(1, 8)):
                self.step(conn)

    def initial(self, db: Database) -> None:
        with db.connect() as conn, conn.transaction():
            self.insert_docs(conn, 12)
            for _ in range(6):
                self.insert_comp(conn)
                self.insert_small(conn)


def run_plan(plan: Plan, db: Database, tmp_path: Path, starrocks: StarRocksEmulator | None,
             engines: list[Engine]) -> None:
    db.execute(SCHEMA)
    if plan.streamed:
        db.execute(f'ALTER DATABASE "{db.name}" SET logical_decoding_work_mem = \'64kB\'')
    for table, identity in plan.identities.items():
        db.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity}")
    workload = Workload(plan.seed, long_keys=plan.sink == "duckdb")
    workload.initial(db)
    settings = {"replica_identity": "keep", "flush_rows": plan.flush_rows,
                "flush_interval_ms": plan.flush_interval_ms, "delete_mode": plan.delete_mode,
                "flush_bytes": plan.flush_bytes}
    config: Config
    check: Callable[[], None]
    if plan.sink == "duckdb":
        config = duckdb_config(db, tmp_path, list(TABLES), **settings)
        sink = DuckDBSink(config.duckdb_path)

        def start() -> Engine:
            engine = build_live_engine(config, sink=sink)
            engines.append(engine)
            engine.start()
            return engine

        def check() -> None:
            assert_duckdb_replicated(db, sink, TABLES)
    else:
        assert starrocks is not None
        config = starrocks_config(db, starrocks.url, starrocks.mysql_port, list(TABLES),
                                  load_format=plan.sink, **settings)

        def start() -> Engine:
            engine = build_live_engine(config)
            engines.append(engine)
            engine.start()
            return engine

        def check() -> None:
            assert_sr_replicated(db, lambda table: starrocks.rows(SR_DB, table), TABLES)

    engine: Engine | None = start()
    assert engine is not None
    wait_until_loaded(engine, mark(db))
    for n in range(plan.transactions):
        if n == plan.restart_at and engine is not None:
            # Stopped without draining: what was not confirmed is sent again, together with
            # the transactions committed while it is down.
            engine.stop()
            assert engine.wait(60)
            engine = None
        if engine is None and n == (plan.restart_at or 0) + plan.down_for:
            engine = start()
        workload.transaction(db)
    if engine is None:
        engine = start()
    wait_until_loaded(engine, mark(db))
    try:
        check()
    except AssertionError as e:
        raise AssertionError(f"{plan}: {e}") from e


SEEDS = list(range(1, 7))
# A wider sweep: RANDOM_WORKLOAD_SEEDS=100-300 pytest -m slow -k sweep tests/e2e/...
_first, _last = os.environ.get("RANDOM_WORKLOAD_SEEDS", "7-39").split("-")
SLOW_SEEDS = list(range(int(_first), int(_last) + 1))


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed_{s}" for s in SEEDS])
def test_random_workload(seed: int, pg_db: Database, tmp_path: Path,
                         request: pytest.FixtureRequest, engines: list[Engine]) -> None:
    plan = Plan.of(seed, transactions=40)
    starrocks = request.getfixturevalue("starrocks") if plan.sink != "duckdb" else None
    run_plan(plan, pg_db, tmp_path, starrocks, engines)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=[f"seed_{s}" for s in SLOW_SEEDS])
def test_random_workload_sweep(seed: int, pg_db: Database, tmp_path: Path,
                               request: pytest.FixtureRequest, engines: list[Engine]) -> None:
    plan = Plan.of(seed, transactions=80)
    starrocks = request.getfixturevalue("starrocks") if plan.sink != "duckdb" else None
    run_plan(plan, pg_db, tmp_path, starrocks, engines)
