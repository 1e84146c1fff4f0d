"""Shared pieces of the reliability suites.

* :class:`Observer` — ground truth: a ``test_decoding`` slot of the test's own, created
  before any write, lists every committed transaction (commit end LSN, keys it touched).
* :class:`Verifier` — checks invariant 1 from evidence, not luck: dbmazz's audit journal
  (``DBMAZZ_AUDIT_LOG``), sampled slot/checkpoint positions, and the target's
  ``dbmazz_cdc_version`` of every row, against the observer's transactions.
* :class:`Writer` — a bounded, seeded mixed write load (inserts, updates with and without
  TOAST changes, deletes, key changes, multi-row and larger-than-a-batch transactions).
* :class:`DbmazzProcess`, :class:`StandaloneStarRocks` — ``python -m dbmazz run`` and the
  StarRocks emulator as separate processes (so SIGKILL hits only dbmazz).

Every wait is a bounded poll on observable state.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dbmazz.engine.core import Engine
from dbmazz.lsn import parse_lsn
from dbmazz.testing.fixtures import Database

# -- polling ------------------------------------------------------------------------------


@contextlib.contextmanager
def running(engine: Engine) -> Iterator[Engine]:
    """The engine started for the block, stopped (and waited for) after it."""
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(60)


def poll(predicate: Callable[[], object], what: str, timeout_s: float = 120.0,
         every_s: float = 0.05, abort: Callable[[], str | None] | None = None) -> Any:
    """Call ``predicate`` until it returns something truthy (returned) or time runs out.
    ``abort`` returns a reason to give up at once (e.g. the process under test died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if abort is not None and (reason := abort()):
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)  # polling cadence, not synchronisation


# -- source positions ---------------------------------------------------------------------


def slot_position(db: Database, slot: str) -> tuple[int, int | None] | None:
    """(confirmed_flush_lsn, active_pid) of ``slot``, or None when it does not exist."""
    rows = db.query("SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots "
                    "WHERE slot_name = %s", (slot,))
    if not rows:
        return None
    lsn, pid = rows[0]
    return (parse_lsn(str(lsn)) if lsn else 0), (int(str(pid)) if pid is not None else None)


def checkpoint(db: Database, slot: str) -> int:
    """The slot's checkpoint in dbmazz_checkpoints (0 when there is none)."""
    if not has_checkpoints(db):
        return 0
    rows = db.query("SELECT lsn::text FROM public.dbmazz_checkpoints WHERE slot_name = %s",
                    (slot,))
    return parse_lsn(str(rows[0][0])) if rows else 0


def has_checkpoints(db: Database) -> bool:
    [(exists,)] = db.query("SELECT to_regclass('public.dbmazz_checkpoints') IS NOT NULL")
    return bool(exists)


def walsender_pid(db: Database, slot: str) -> int | None:
    position = slot_position(db, slot)
    return position[1] if position else None


# -- ground truth -------------------------------------------------------------------------


@dataclass
class Txn:
    end: int  # commit end LSN
    #: table ('schema.table') → keys it inserted, updated (old and new key) or deleted
    keys: dict[str, set[tuple[int, ...]]] = field(default_factory=dict)


_CHANGE = re.compile(r"^table (\S+): (INSERT|UPDATE|DELETE): (.*)$", re.S)


class Observer:
    """Every committed transaction of the watched tables, from a test_decoding slot."""

    def __init__(self, db: Database, slot: str, keys: dict[str, list[str]]) -> None:
        self.db = db
        self.slot = slot
        self.key_columns = keys
        self._key_re = {
            table: [re.compile(rf"(?:^| ){re.escape(c)}\[[^\]]*\]:(-?\d+)") for c in cols]
            for table, cols in keys.items()
        }
        self.txns: list[Txn] = []
        self.ends: list[int] = []
        db.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))

    def consume(self) -> None:
        """Read (and release) everything committed so far."""
        rows = self.db.query(
            "SELECT lsn::text, data FROM pg_logical_slot_get_changes(%s, NULL, NULL, "
            "'skip-empty-xacts', '1', 'include-xids', '0')", (self.slot,))
        current: Txn | None = None
        for lsn, data in rows:
            text = str(data)
            if text == "BEGIN":
                current = Txn(0)
            elif text == "COMMIT":
                assert current is not None
                current.end = parse_lsn(str(lsn))
                if current.keys:
                    assert not self.ends or current.end > self.ends[-1]
                    self.txns.append(current)
                    self.ends.append(current.end)
                current = None
            elif (match := _CHANGE.match(text)) and current is not None:
                table, _op, rest = match.groups()
                if table not in self._key_re:
                    continue
                parts = rest.split(" new-tuple: ") if rest.startswith("old-key: ") else [rest]
                for part in parts:
                    key = self._key(table, part)
                    if key is not None:
                        current.keys.setdefault(table, set()).add(key)

    def _key(self, table: str, text: str) -> tuple[int, ...] | None:
        values = []
        for pattern in self._key_re[table]:
            found = pattern.search(text)
            if found is None:
                return None
            values.append(int(found.group(1)))
        return tuple(values)

    def index(self, commit_lsn: int) -> int:
        """The transaction whose commit record starts at ``commit_lsn`` (the first ending
        after it: no other commit ends inside a commit record)."""
        return bisect.bisect_right(self.ends, commit_lsn)

    def drop(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.db.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))


# -- the audit journal --------------------------------------------------------------------


def journal_records(path: Path, upto: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(end offset, record) of every complete line (a killed writer's torn line is skipped)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if upto is not None:
        data = data[:upto]
    out = []
    offset = 0
    for line in data.split(b"\n"):
        offset += len(line) + 1
        if not line.strip():
            continue
        try:
            out.append((offset, json.loads(line)))
        except ValueError:
            continue  # torn by SIGKILL
    return out


class JournalTail:
    """Counts ack/confirm lines as the journal grows (cheap incremental reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.acks = 0
        self.confirms = 0
        self.starts = 0

    def refresh(self) -> JournalTail:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            self._offset += len(data)
            self.acks += data.count(b'"k":"ack"')
            self.confirms += data.count(b'"k":"confirm"')
            self.starts += data.count(b'"k":"start"')
        return self


@dataclass
class Sample:
    """Positions read while dbmazz ran, then the journal size (read after them)."""

    journal_size: int
    slot_lsn: int
    checkpoint_lsn: int


class Sampler(threading.Thread):
    """Samples the slot's confirmed_flush_lsn and the checkpoint while dbmazz runs."""

    def __init__(self, db: Database, slot: str, journal: Path) -> None:
        super().__init__(name="reliability-sampler", daemon=True)
        self.db, self.slot, self.journal = db, slot, journal
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            table = False
            with self.db.connect() as conn:
                while not self.stop.wait(0.02):  # sampling cadence
                    row = conn.execute("SELECT confirmed_flush_lsn::text FROM "
                                       "pg_replication_slots WHERE slot_name = %s",
                                       (self.slot,)).fetchone()
                    if not table:
                        found = conn.execute("SELECT to_regclass('public.dbmazz_checkpoints') "
                                             "IS NOT NULL").fetchone()
                        table = bool(found and found[0])
                    ckpt = conn.execute("SELECT lsn::text FROM public.dbmazz_checkpoints "
                                        "WHERE slot_name = %s", (self.slot,)).fetchone() \
                        if table else None
                    size = self.journal.stat().st_size if self.journal.exists() else 0
                    if row is not None and row[0]:
                        self.samples.append(Sample(size, parse_lsn(row[0]),
                                                   parse_lsn(ckpt[0]) if ckpt else 0))
        except psycopg.OperationalError:
            pass  # the server went away (a source-fault test): sampling simply ends
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc

    def finish(self) -> list[Sample]:
        self.stop.set()
        self.join(30)
        if self.error is not None:
            raise self.error
        return self.samples


class Verifier:
    """Invariant 1 against the observer's ground truth."""

    def __init__(self, observer: Observer) -> None:
        self.obs = observer

    def check_journal(self, journal: Path, samples: Sequence[Sample] = ()) -> dict[str, int]:
        """Every confirmation (journal line, sampled slot position, sampled checkpoint)
        covers only transactions whose changes the sink had acknowledged before it, and
        never lands inside an acknowledged transaction. Returns counts of what was checked."""
        obs = self.obs
        records = journal_records(journal)
        # Commit LSNs of each transaction, from every ack in the file (for the "inside a
        # transaction" check, which needs no ordering).
        commits: dict[int, int] = {}
        for _, rec in records:
            if rec.get("k") == "ack":
                for c in rec["lsns"]:
                    idx = obs.index(c)
                    assert idx < len(obs.txns), f"ack of unknown transaction at {c}: {rec}"
                    commits[idx] = min(commits.get(idx, c), c)
        acked: dict[int, set[str]] = {}
        verified = 0  # transactions [0, verified) are known fully acknowledged
        problems: list[str] = []
        counts = {"acks": 0, "confirms": 0, "samples": 0}

        def covered(lsn: int, what: str) -> None:
            nonlocal verified
            upto = bisect.bisect_right(obs.ends, lsn)
            while verified < upto:
                txn = obs.txns[verified]
                missing = set(txn.keys) - acked.get(verified, set())
                if missing:
                    problems.append(
                        f"{what} {lsn:X} covers transaction ending {txn.end:X} but the sink had "
                        f"not acknowledged its changes of {sorted(missing)}")
                    return
                verified += 1
            nxt = bisect.bisect_right(obs.ends, lsn)
            if nxt < len(obs.txns) and nxt in commits and commits[nxt] < lsn:
                problems.append(
                    f"{what} {lsn:X} lies inside transaction {commits[nxt]:X}..{obs.ends[nxt]:X}")

        pending = sorted(samples, key=lambda s: s.journal_size)
        at = 0
        for offset, rec in records:
            while at < len(pending) and pending[at].journal_size < offset:
                sample = pending[at]
                covered(sample.slot_lsn, "slot confirmed_flush_lsn")
                covered(sample.checkpoint_lsn, "checkpoint")
                counts["samples"] += 1
                at += 1
            kind = rec.get("k")
            if kind == "ack":
                counts["acks"] += 1
                split = rec.get("split")
                if split and not split[2]:
                    continue  # not durable before the last part of its transaction
                for c in rec["lsns"]:
                    acked.setdefault(obs.index(c), set()).add(rec["table"])
            elif kind == "confirm":
                counts["confirms"] += 1
                covered(int(rec["lsn"]), "confirmation")
            if problems:
                break
        for sample in pending[at:]:
            covered(sample.slot_lsn, "slot confirmed_flush_lsn")
            covered(sample.checkpoint_lsn, "checkpoint")
            counts["samples"] += 1
        assert not problems, "\n".join(problems[:5])
        return counts

    def check_target(self, durable: int,
                     versions: dict[str, dict[tuple[int, ...], int]]) -> int:
        """Every key changed by a transaction ending at or before ``durable`` (what the
        slot/checkpoint claim is loaded) has a target row (soft-deleted rows included) whose
        dbmazz_cdc_version is that change's commit or a later one. Returns keys checked."""
        obs = self.obs
        last: dict[str, dict[tuple[int, ...], int]] = {}
        for idx in range(bisect.bisect_right(obs.ends, durable)):
            for table, touched in obs.txns[idx].keys.items():
                latest = last.setdefault(table, {})
                for key in touched:
                    latest[key] = idx
        problems = []
        checked = 0
        for table, latest in last.items():
            rows = versions.get(table, {})
            for key, idx in latest.items():
                checked += 1
                version = rows.get(key)
                if version is None:
                    problems.append(f"{table} {key}: changed by the transaction ending "
                                    f"{obs.ends[idx]:X} ≤ durable {durable:X}, not in target")
                elif obs.index(version) < idx:
                    problems.append(f"{table} {key}: target version {version:X} is older than "
                                    f"the change ending {obs.ends[idx]:X} ≤ durable {durable:X}")
        assert not problems, f"{len(problems)} problems, e.g.\n" + "\n".join(problems[:5])
        return checked


# -- the write load -----------------------------------------------------------------------

CRASH_SCHEMA = """
CREATE TABLE public.acct (id int PRIMARY KEY, v int NOT NULL, note text, doc text);
CREATE TABLE public.ledger (a int, b int, qty int NOT NULL, tag text, PRIMARY KEY (a, b));
"""
CRASH_KEYS = {"public.acct": ["id"], "public.ledger": ["a", "b"]}


def big_text(rng: random.Random, size: int = 4000) -> str:
    """Poorly compressible text stored out of line (TOAST)."""
    return f"{rng.getrandbits(size * 4):x}"


class Writer(threading.Thread):
    """Seeded mixed transactions until stopped or ``max_txns`` (bounded)."""

    def __init__(self, dsn: str, seed: int, max_txns: int = 100_000,
                 pace_s: float = 0.003, big_txn_rows: int = 300) -> None:
        super().__init__(name="reliability-writer", daemon=True)
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.max_txns = max_txns
        self.pace_s = pace_s
        self.big_txn_rows = big_txn_rows
        self.stop = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for _ in range(self.max_txns):
                    if self.stop.is_set():
                        return
                    with conn.transaction():
                        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 5))):
                            self._op(conn)
                    self.committed += 1
                    self.stop.wait(self.pace_s)  # load shaping, not synchronisation
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish()
            self.error = exc

    def _op(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        i, j = rng.randrange(1, 400), rng.randrange(1, 400)
        roll = rng.random()
        if roll < 0.25:
            doc = big_text(rng) if rng.random() < 0.2 else None
            conn.execute("INSERT INTO acct VALUES (%s, 0, %s, %s) ON CONFLICT (id) DO UPDATE "
                         "SET v = acct.v + 1, note = EXCLUDED.note", (i, f"n{j}", doc))
        elif roll < 0.40:  # TOAST value unchanged: only small columns change
            conn.execute("UPDATE acct SET v = v + 1, note = %s WHERE id = %s", (f"u{j}", i))
        elif roll < 0.47:  # TOAST value changed
            conn.execute("UPDATE acct SET doc = %s WHERE id = %s", (big_text(rng), i))
        elif roll < 0.55:
            conn.execute("DELETE FROM acct WHERE id = %s", (i,))
        elif roll < 0.60:  # key change
            conn.execute("UPDATE acct SET id = %s WHERE id = %s AND NOT EXISTS "
                         "(SELECT 1 FROM acct WHERE id = %s)", (j + 1000, i, j + 1000))
        elif roll < 0.78:
            conn.execute("INSERT INTO ledger VALUES (%s, %s, 1, %s) ON CONFLICT (a, b) DO "
                         "UPDATE SET qty = ledger.qty + 1", (i % 40, j % 50, f"t{i}"))
        elif roll < 0.86:
            conn.execute("DELETE FROM ledger WHERE a = %s", (i % 40,))
        elif roll < 0.92:  # composite key change
            conn.execute("UPDATE ledger SET b = b + 1000 WHERE a = %s AND b < 1000 AND "
                         "NOT EXISTS (SELECT 1 FROM ledger l WHERE l.a = %s AND l.b >= 1000)",
                         (i % 40, i % 40))
        elif roll < 0.97:
            conn.execute("UPDATE acct SET v = (v * 2 + 1) %% 1000003 WHERE id BETWEEN %s AND %s",
                         (i, i + 20))
        else:  # larger than FLUSH_ROWS: split across flushes
            base = 100_000 + rng.randrange(0, 50) * 1000
            conn.execute("INSERT INTO ledger SELECT %s, g, g, 'bulk' FROM generate_series(1, %s) "
                         "g ON CONFLICT (a, b) DO UPDATE SET qty = ledger.qty + 1",
                         (base, self.big_txn_rows))

    def finish(self) -> int:
        self.stop.set()
        self.join(60)
        assert not self.is_alive(), "writer did not stop"
        if self.error is not None:
            raise self.error
        return self.committed


# -- processes ----------------------------------------------------------------------------


class DbmazzProcess:
    """``python -m dbmazz run`` with stderr kept per run."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        with open(self.log_path(self.runs), "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=log)
        return self.proc

    def log_path(self, run: int) -> Path:
        return self.log_dir / f"dbmazz-run{run}.log"

    def log(self, run: int | None = None) -> str:
        path = self.log_path(run or self.runs)
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(self.log(i) for i in range(1, self.runs + 1))

    def dead(self) -> str | None:
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            return f"dbmazz exited {proc.returncode}:\n{self.log()[-3000:]}"
        return None

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout_s: float = 120.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


class StandaloneStarRocks:
    """The emulator as its own process (it must outlive dbmazz's SIGKILLs)."""

    def __init__(self, password: str = "") -> None:
        args = [sys.executable, "-m", "dbmazz.testing.starrocks", "--http-port", "0",
                "--mysql-port", "0", "--be-count", "2"]
        if password:
            args += ["--password", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        match = re.search(r"FE http (http://127\.0\.0\.1:(\d+)), .*mysql 127\.0\.0\.1:(\d+)",
                          banner)
        if match is None:
            self.close()
            raise AssertionError(f"emulator did not start: {banner!r}")
        self.url = match.group(1)
        self.mysql_port = int(match.group(3))

    def rows(self, db: str, table: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"db": db, "table": table})
        try:
            with urllib.request.urlopen(f"{self.url}/_emulator/rows?{query}", timeout=30) as r:
                return list(json.loads(r.read())["rows"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@contextlib.contextmanager
def standalone_starrocks(password: str = "") -> Iterator[StandaloneStarRocks]:
    emulator = StandaloneStarRocks(password)
    try:
        yield emulator
    finally:
        emulator.close()


# -- target readers -----------------------------------------------------------------------


def duckdb_versions(path: str, keys: dict[str, list[str]]
                    ) -> dict[str, dict[tuple[int, ...], int]]:
    """key → dbmazz_cdc_version of every row (soft-deleted included) of each table."""
    import duckdb

    out: dict[str, dict[tuple[int, ...], int]] = {}
    if not Path(path).exists():
        return out
    con = duckdb.connect(path)
    try:
        for table, cols in keys.items():
            ns, name = table.split(".")
            exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE "
                                 "table_schema = ? AND table_name = ?", [ns, name]).fetchone()
            if not exists or not exists[0]:
                continue
            select = ", ".join(f'"{c}"' for c in [*cols, "dbmazz_cdc_version"])
            rows = con.execute(f'SELECT {select} FROM "{ns}"."{name}"').fetchall()
            out[table] = {tuple(int(v) for v in r[:-1]): int(r[-1]) for r in rows}
    finally:
        con.close()
    return out


def starrocks_versions(emulator: StandaloneStarRocks, db: str, keys: dict[str, list[str]]
                       ) -> dict[str, dict[tuple[int, ...], int]]:
    out: dict[str, dict[tuple[int, ...], int]] = {}
    for table, cols in keys.items():
        name = table.split(".")[1]
        rows = [{k.lower(): v for k, v in r.items()} for r in emulator.rows(db, name)]
        out[table] = {tuple(int(r[c.lower()]) for c in cols): int(r["dbmazz_cdc_version"])
                      for r in rows}
    return out


def starrocks_fetcher(rows: Callable[[], list[dict[str, Any]]]
                      ) -> Callable[[list[str]], list[tuple[Any, ...]]]:
    """Live rows (not soft-deleted) of an emulator table, as compare() wants them."""

    def fetch(columns: list[str]) -> list[tuple[Any, ...]]:
        out = []
        for row in rows():
            by_name = {k.lower(): v for k, v in row.items()}  # column names ignore case
            if not by_name.get("dbmazz_is_deleted"):
                out.append(tuple(by_name.get(c.lower()) for c in columns))
        return out

    return fetch


def rss_bytes(pid: int | None = None) -> int:
    text = Path(f"/proc/{pid or 'self'}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else 0
