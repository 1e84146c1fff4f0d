"""Issue 20 item 1: primary-key changes of rows whose TOASTed value is unchanged, under
REPLICA IDENTITY DEFAULT (``REPLICA_IDENTITY=keep``), end to end into both sinks.

PostgreSQL sends such an update as the new row with the TOAST column flagged unchanged and
the old row as its key only: the value exists only in the target, under the old key (or
earlier in the same batch). The target must end up equal to the source — never NULL.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine, RunState
from dbmazz.errors import SetupError, SinkError
from dbmazz.pipeline.batch import LoadResult, TableBatch
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.testing.sinks import NullSink
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import assert_replicated as assert_duckdb_replicated
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.e2e.test_starrocks_e2e import DB as SR_DB
from tests.e2e.test_starrocks_e2e import assert_replicated as assert_sr_replicated
from tests.e2e.test_starrocks_e2e import starrocks_config
from tests.reliability.helpers import poll

TABLES = {
    "public.kc_int": ["id"],
    "public.kc_comp": ["a", "b"],
    "public.kc_text": ["k"],
}

SCHEMA = """
CREATE TABLE public.kc_int (id int PRIMARY KEY, v int NOT NULL, doc text, extra text);
CREATE TABLE public.kc_comp (a int, b text, qty int, doc text, PRIMARY KEY (a, b));
CREATE TABLE public.kc_text (k text PRIMARY KEY, doc text, n int);
"""


def random_text(rng: random.Random, size: int = 10_000) -> str:
    """10 KB of random letters and digits: pglz cannot shrink it, so it is stored out of
    line (TOASTed) and an update that does not touch it sends it as 'unchanged'."""
    return "".join(rng.choices(string.ascii_letters + string.digits, k=size))


def load_rows(db: Database, rng: random.Random) -> None:
    with db.connect() as conn, conn.transaction():
        for i in range(1, 21):
            conn.execute("INSERT INTO kc_int VALUES (%s, 0, %s, %s)",
                         (i, random_text(rng), random_text(rng)))
            conn.execute("INSERT INTO kc_comp VALUES (%s, %s, 0, %s)",
                         (i % 3, f"b{i}", random_text(rng)))
            conn.execute("INSERT INTO kc_text VALUES (%s, %s, 0)", (f"k{i}", random_text(rng)))


def key_changes_across_batches(db: Database) -> None:
    """One key change per transaction: each moved row's value is in the target only."""
    db.execute("UPDATE kc_int SET id = id + 1000 WHERE id = 1")
    db.execute("UPDATE kc_comp SET b = b || '-moved' WHERE a = 1 AND b = 'b1'")
    db.execute("UPDATE kc_comp SET a = a + 10 WHERE a = 2 AND b = 'b2'")
    db.execute("UPDATE kc_text SET k = 'moved-' || k WHERE k = 'k1'")
    # A small column changes together with the key: the TOAST values still do not.
    db.execute("UPDATE kc_int SET id = 1010, v = 7 WHERE id = 10")


def key_changes_in_one_batch(db: Database, rng: random.Random) -> None:
    """One transaction (so one batch): the cases the merge must chain within a batch."""
    with db.connect() as conn, conn.transaction():
        # A key changed twice: 2 → 1002 → 2002.
        conn.execute("UPDATE kc_int SET id = 1002 WHERE id = 2")
        conn.execute("UPDATE kc_int SET id = 2002 WHERE id = 1002")
        # Key change, then delete of the new key.
        conn.execute("UPDATE kc_int SET id = 1003 WHERE id = 3")
        conn.execute("DELETE FROM kc_int WHERE id = 1003")
        # TOAST-unchanged update of the old key, then the key change.
        conn.execute("UPDATE kc_int SET v = v + 1 WHERE id = 4")
        conn.execute("UPDATE kc_int SET id = 1004 WHERE id = 4")
        # The value changes earlier in the batch, under the old key: the move must take it.
        conn.execute("UPDATE kc_int SET doc = %s WHERE id = 5", (random_text(rng),))
        conn.execute("UPDATE kc_int SET id = 1005 WHERE id = 5")
        # Moved away and back.
        conn.execute("UPDATE kc_int SET id = 1006 WHERE id = 6")
        conn.execute("UPDATE kc_int SET id = 6, v = 66 WHERE id = 1006")
        # The old key is reused by a new row after the move.
        conn.execute("UPDATE kc_int SET id = 1007 WHERE id = 7")
        conn.execute("INSERT INTO kc_int VALUES (7, 70, %s, NULL)", (random_text(rng),))
        # Moved onto a key that was deleted earlier in the batch.
        conn.execute("DELETE FROM kc_int WHERE id = 9")
        conn.execute("UPDATE kc_int SET id = 9 WHERE id = 8")
        # Composite and text keys, twice.
        conn.execute("UPDATE kc_comp SET b = 'x' || b WHERE a = 0 AND b = 'b3'")
        conn.execute("UPDATE kc_comp SET a = 20 WHERE a = 0 AND b = 'xb3'")
        conn.execute("UPDATE kc_text SET k = k || '-a' WHERE k = 'k2'")
        conn.execute("UPDATE kc_text SET k = k || '-b', n = 2 WHERE k = 'k2-a'")
        conn.execute("UPDATE kc_text SET k = 'k4-moved' WHERE k = 'k4'")
        conn.execute("DELETE FROM kc_text WHERE k = 'k4-moved'")


def key_change_then_update_in_later_batch(db: Database) -> None:
    db.execute("UPDATE kc_int SET id = 3000 WHERE id = 11")
    db.execute("UPDATE kc_int SET v = 5 WHERE id = 3000")
    db.execute("UPDATE kc_int SET id = 3001 WHERE id = 3000")


def run_workload(db: Database, engine: Engine, check: Callable[[], None]) -> None:
    rng = random.Random(20)
    load_rows(db, rng)
    wait_until_loaded(engine, mark(db))
    key_changes_across_batches(db)
    wait_until_loaded(engine, mark(db))
    check()
    key_changes_in_one_batch(db, rng)
    wait_until_loaded(engine, mark(db))
    check()
    key_change_then_update_in_later_batch(db)
    wait_until_loaded(engine, mark(db))
    check()


def _assert_moved_values(rows: dict[Any, Any], db: Database) -> None:
    """The moved rows carry their source values (not NULL): checked by name so a failure
    says which case broke, before the whole-table comparison."""
    source = dict(db.query("SELECT id, doc FROM kc_int"))
    for key in (1001, 2002, 1004, 1005, 6, 1007, 9, 3001):
        if key in source:
            assert rows.get(key) == source[key], f"kc_int row {key}: doc differs from the source"


@pytest.mark.parametrize("delete_mode", ["soft", "hard"])
def test_key_change_keeps_unchanged_toast_duckdb(pg_db: Database, tmp_path: Path,
                                                 engines: list[Engine], delete_mode: str) -> None:
    pg_db.execute(SCHEMA)
    config = duckdb_config(pg_db, tmp_path, list(TABLES), replica_identity="keep",
                           delete_mode=delete_mode)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()

    def check() -> None:
        rows = dict(sink.query('SELECT id, doc FROM "public"."kc_int" '
                               "WHERE NOT coalesce(dbmazz_is_deleted, false)"))
        _assert_moved_values(rows, pg_db)
        assert_duckdb_replicated(pg_db, sink, TABLES)

    run_workload(pg_db, engine, check)


@pytest.mark.parametrize("delete_mode", ["soft", "hard"])
def test_key_change_keeps_unchanged_toast_starrocks(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine],
        delete_mode: str) -> None:
    pg_db.execute(SCHEMA)
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(TABLES),
                              replica_identity="keep", delete_mode=delete_mode)
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()

    def check() -> None:
        rows = {r["id"]: r["doc"] for r in starrocks.rows(SR_DB, "kc_int")
                if not r.get("dbmazz_is_deleted")}
        _assert_moved_values(rows, pg_db)
        assert_sr_replicated(pg_db, lambda table: starrocks.rows(SR_DB, table), TABLES)

    run_workload(pg_db, engine, check)


def split_transaction(db: Database, rng: random.Random, *, touch_first: bool) -> None:
    """One transaction larger than FLUSH_ROWS (so split into parts): filler rows, then a
    key change in a later part; with ``touch_first`` the moved row was also changed (its
    TOAST value unchanged) in the first part."""
    with db.connect() as conn, conn.transaction():
        if touch_first:
            conn.execute("UPDATE kc_int SET v = v + 1 WHERE id IN (12, 15, 16)")
        # Spans several reads of the stream, so it is cut into parts of FLUSH_ROWS.
        conn.execute("INSERT INTO kc_text SELECT 'filler' || g, NULL, g "
                     "FROM generate_series(1, 20000) g")
        conn.execute("UPDATE kc_int SET id = 4012 WHERE id = 12")
        conn.execute("UPDATE kc_int SET id = 4013 WHERE id = 13")
        if touch_first:
            # Onto a key whose old row an earlier part changed and this part deletes: the
            # target holds that old row, at the same version as the moved row's old key.
            conn.execute("DELETE FROM kc_int WHERE id = 16")
            conn.execute("UPDATE kc_int SET id = 16 WHERE id = 15")


def test_split_transaction_key_change_duckdb(pg_db: Database, tmp_path: Path,
                                             engines: list[Engine]) -> None:
    """DuckDB commits each part: a later part reads what earlier parts wrote."""
    pg_db.execute(SCHEMA)
    config = duckdb_config(pg_db, tmp_path, list(TABLES), replica_identity="keep",
                           flush_rows=2000)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    rng = random.Random(21)
    load_rows(pg_db, rng)
    wait_until_loaded(engine, mark(pg_db))
    split_transaction(pg_db, rng, touch_first=True)
    wait_until_loaded(engine, mark(pg_db))
    assert_duckdb_replicated(pg_db, sink, TABLES)


def test_split_transaction_key_change_starrocks(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]) -> None:
    """A key change in a later part of a split transaction, of a row no earlier part
    loaded: the committed target row is the right source."""
    pg_db.execute(SCHEMA)
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(TABLES),
                              replica_identity="keep", flush_rows=2000)
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    rng = random.Random(22)
    load_rows(pg_db, rng)
    wait_until_loaded(engine, mark(pg_db))
    split_transaction(pg_db, rng, touch_first=False)
    wait_until_loaded(engine, mark(pg_db))
    assert_sr_replicated(pg_db, lambda table: starrocks.rows(SR_DB, table), TABLES)


def test_split_transaction_reading_its_own_open_rows_is_refused_starrocks(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]) -> None:
    """The moved row's old version was loaded by an earlier, still uncommitted part:
    StarRocks cannot read it. The engine stops with an error that names the table and the
    fix, and loads nothing of the transaction (never a NULL)."""
    pg_db.execute(SCHEMA)
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(TABLES),
                              replica_identity="keep", flush_rows=2000)
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    rng = random.Random(23)
    load_rows(pg_db, rng)
    wait_until_loaded(engine, mark(pg_db))
    split_transaction(pg_db, rng, touch_first=True)
    poll(lambda: engine.progress.state == RunState.FAILED, "the engine to refuse the batch")
    error = engine.progress.last_error or ""
    assert "public.kc_int" in error and "split source transaction" in error, error
    rows = {r["id"]: r for r in starrocks.rows(SR_DB, "kc_int")}
    assert 4012 not in rows and 4013 not in rows and rows[12]["v"] == 0


def test_sink_that_cannot_read_back_is_refused_at_setup(pg_db: Database) -> None:
    pg_db.execute(SCHEMA)
    pg_db.execute("CREATE TABLE public.kc_full (id int PRIMARY KEY, doc text)")
    pg_db.execute("ALTER TABLE public.kc_full REPLICA IDENTITY FULL")
    config = duckdb_config(pg_db, Path("/nonexistent"), [*TABLES, "public.kc_full"],
                           replica_identity="keep")
    with pytest.raises(SetupError) as caught:
        build_live_engine(config, sink=NullSink())
    message = f"{caught.value.message} {caught.value.hint}"
    assert "public.kc_int" in message and "public.kc_text" in message
    assert "public.kc_full" not in message and "REPLICA IDENTITY FULL" in message


@pytest.mark.parametrize("sink_kind", ["duckdb", "starrocks"])
def test_key_change_in_a_partition_narrower_than_its_full_root(
        pg_db: Database, tmp_path: Path, starrocks: StarRocksEmulator, engines: list[Engine],
        sink_kind: str) -> None:
    # The default REPLICA_IDENTITY=full sets the root and its partitions FULL at setup; a
    # partition created while streaming is DEFAULT. Through the FULL root its key change
    # arrives with an old row marked complete that holds NULL in every non-key column: the
    # unchanged TOAST value must still come from the target, never that NULL.
    pg_db.execute("CREATE TABLE public.ev (id int, region text, doc text, "
                  "PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
    pg_db.execute("CREATE TABLE public.ev_eu PARTITION OF public.ev FOR VALUES IN ('eu')")
    tables = {"public.ev": ["id", "region"]}
    if sink_kind == "duckdb":
        config = duckdb_config(pg_db, tmp_path, list(tables))
        sink = DuckDBSink(config.duckdb_path)
        engine = build_live_engine(config, sink=sink)
    else:
        config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(tables))
        engine = build_live_engine(config)

    def check() -> None:
        if sink_kind == "duckdb":
            assert_duckdb_replicated(pg_db, sink, tables)
        else:
            assert_sr_replicated(pg_db, lambda table: starrocks.rows(SR_DB, table), tables)

    engines.append(engine)
    engine.start()
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute("CREATE TABLE public.ev_us PARTITION OF public.ev FOR VALUES IN ('us')")
    assert pg_db.query("SELECT relreplident::text FROM pg_class WHERE relname = 'ev_us'") == [
        ("d",)]
    rng = random.Random(7)
    pg_db.execute("INSERT INTO public.ev VALUES (1, 'us', %s), (2, 'eu', %s)",
                  (random_text(rng), random_text(rng)))
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute("UPDATE public.ev SET id = 10 WHERE id = 1")
    pg_db.execute("UPDATE public.ev SET id = 20 WHERE id = 2")
    wait_until_loaded(engine, mark(pg_db))
    check()


def test_an_update_leaving_a_key_stored_out_of_line_unchanged(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    # A key long enough to be TOASTed (2.5 kB of random letters, still under the btree's
    # limit): an update that does not change it sends it flagged unchanged, the old key
    # inlined beside it. The engine failed on it (DuplicateError) and loaded nothing more.
    # DuckDB only: StarRocks refuses primary keys over 128 bytes.
    pg_db.execute("CREATE TABLE public.lk (k text PRIMARY KEY, n int, doc text)")
    pg_db.execute("CREATE TABLE public.lk2 (a int, b text, n int, PRIMARY KEY (a, b))")
    tables = {"public.lk": ["k"], "public.lk2": ["a", "b"]}
    config = duckdb_config(pg_db, tmp_path, list(tables), replica_identity="keep")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    rng = random.Random(8)
    long_keys = [random_text(rng, 2_500) for _ in range(3)]
    pg_db.execute("INSERT INTO lk VALUES (%s, 0, %s), (%s, 0, %s), (%s, 0, NULL), "
                  "('short', 0, NULL)",
                  (long_keys[0], random_text(rng), long_keys[1], random_text(rng),
                   long_keys[2]))
    pg_db.execute("INSERT INTO lk2 VALUES (1, %s, 0), (2, %s, 0)", tuple(long_keys[:2]))
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute("UPDATE lk SET n = n + 1")
    pg_db.execute("DELETE FROM lk WHERE k = %s", (long_keys[2],))
    pg_db.execute("UPDATE lk2 SET n = 5 WHERE a = 1")
    pg_db.execute("UPDATE lk2 SET a = 20 WHERE a = 2")  # the key changes, its long part not
    wait_until_loaded(engine, mark(pg_db))
    assert_duckdb_replicated(pg_db, sink, tables)


class FailOnePart(DuckDBSink):
    """A DuckDB sink whose write of one part of a split transaction fails once, for good
    (the engine stops there: a crash between parts)."""

    fail: tuple[str, int] | None = None  # (table, part index)

    def write(self, batch: TableBatch) -> LoadResult:
        if self.fail is not None and batch.split is not None and (
                batch.table.name, batch.split.index) == self.fail:
            self.fail = None
            raise SinkError("injected crash between parts", retryable=False)
        return super().write(batch)


def test_a_restart_in_a_split_transaction_whose_later_part_reused_the_old_key(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    # Parts of two changes each: the row moves 1 → 2 (part 0), a new row takes key 1 (part
    # 1), the row moves 2 → 3 (part 2). The engine stops before part 2 is loaded; on the
    # restart the replayed part 0 finds both keys alive at the transaction's version. It
    # took the value of the new row at key 1 — an earlier part cannot have written it, as
    # no part comes before the first — and the moved row ended with the wrong text.
    pg_db.execute(SCHEMA)
    tables = {"public.kc_int": ["id"], "public.kc_text": ["k"]}
    config = duckdb_config(pg_db, tmp_path, list(tables), replica_identity="keep",
                           flush_rows=2)
    rng = random.Random(24)
    pg_db.execute("INSERT INTO kc_int VALUES (1, 0, %s, NULL)", (random_text(rng),))
    pg_db.execute("INSERT INTO kc_text SELECT 'k' || g, NULL, 0 FROM generate_series(1, 4) g")
    sink = FailOnePart(config.duckdb_path)
    sink.fail = ("kc_int", 2)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("UPDATE kc_int SET id = 2 WHERE id = 1")
        conn.execute("UPDATE kc_text SET n = 1 WHERE k = 'k1'")
        conn.execute("INSERT INTO kc_int VALUES (1, 9, %s, NULL)", (random_text(rng),))
        conn.execute("UPDATE kc_text SET n = 1 WHERE k = 'k2'")
        conn.execute("UPDATE kc_int SET id = 3 WHERE id = 2")
        conn.execute("UPDATE kc_text SET n = 1 WHERE k = 'k3'")
        conn.execute("UPDATE kc_text SET n = 1 WHERE k = 'k4'")
    poll(lambda: engine.progress.state == RunState.FAILED, "the crash between parts")
    # FAILED is set before the stream is closed; a restart before the walsender lets go of
    # the slot finds it active (setup refuses it).
    with pytest.raises(SinkError, match="injected crash"):
        engine.wait(60)
    poll(lambda: pg_db.query("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                             (config.slot_name,)) == [(False,)], "the slot to be released")
    restarted = build_live_engine(config, sink=sink)
    engines.append(restarted)
    restarted.start()
    wait_until_loaded(restarted, mark(pg_db))
    assert_duckdb_replicated(pg_db, sink, tables)
