"""The shared state of one emulated cluster and the load operations the BEs run on it.

HTTP handlers translate requests into calls on ``Cluster`` and its results back into
replies; nothing here knows about sockets.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbmazz.testing.starrocks.catalog import Catalog, Ids, Table
from dbmazz.testing.starrocks.clock import Clock, SystemClock
from dbmazz.testing.starrocks.errors import LabelAlreadyExists, LoadError, SRError
from dbmazz.testing.starrocks.faults import FaultKind, Faults
from dbmazz.testing.starrocks.loads import (
    JSON_MAX_BYTES,
    LoadOutcome,
    LoadPlan,
    check_format,
    check_timeout,
    plan_load,
    run_load,
)
from dbmazz.testing.starrocks.query import INFO_SCHEMA
from dbmazz.testing.starrocks.responses import (
    LoadCounters,
    LoadTimes,
    StreamLoadResult,
    rest_result,
    txn_reply,
)
from dbmazz.testing.starrocks.store import ApplyMode, RowOp
from dbmazz.testing.starrocks.txn import Txn, TxnManager, TxnState, running_txn_message

LABEL_RE = re.compile(r"^[-\w]{1,128}$", re.ASCII)
PUBLISH_TIMEOUT_MESSAGE = "transaction commit successfully, BUT data will be visible later"
TOO_MANY_FILTERED = "too many filtered rows"


def too_many_versions_message(tablet_id: int, count: int, limit: int) -> str:
    return (
        f"Failed to load data into tablet {tablet_id}, because of too many versions, "
        f"current/limit: {count}/{limit}. You can reduce the loading job concurrency, "
        "or increase loading data batch size."
    )


@dataclass
class EmulatorConfig:
    user: str = "root"
    password: str = ""
    be_count: int = 1
    # FE label_keep_max_second; tests shorten it to see labels expire.
    label_keep_max_second: float = 259200.0
    max_running_txn_num_per_db: int = 1000
    # The FE's fallback when `begin` sends no `timeout` (the docs say 600; the code says 20).
    txn_default_timeout: float = 20.0
    # Seconds a schema-change job runs; 0 emulates fast schema evolution.
    alter_delay: float = 0.0
    version: str = "3.3.0-emulator"
    streaming_load_max_mb: int = 10240


@dataclass
class Auth:
    user: str
    password: str


def parse_basic_auth(header: str | None) -> Auth | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return Auth(user, password)


@dataclass
class StreamLoadCtx:
    result: StreamLoadResult
    txn: Txn
    plan: LoadPlan
    table: Table
    be_index: int
    started: float = field(default_factory=time.monotonic)


class Rejected(Exception):
    """A request refused before its body; carries the reply body."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("Message"))
        self.reply = reply


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class Cluster:
    def __init__(self, config: EmulatorConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock: Clock = clock or SystemClock()
        self.ids = Ids()
        self.catalog = Catalog(self.clock, self.ids, self.config.alter_delay)
        self.txns = TxnManager(
            self.clock,
            self.ids,
            label_keep_max_second=self.config.label_keep_max_second,
            max_running_txn_num_per_db=self.config.max_running_txn_num_per_db,
            default_txn_timeout=self.config.txn_default_timeout,
        )
        self.faults = Faults()
        self.catalog.cancel_hook = self._cancel_hook
        self.error_logs: dict[str, str] = {}
        self.be_ports: list[int] = []
        self.closed_port = 0
        self._rr = 0
        self._lock = threading.Lock()
        # The FE remembers which BE coordinates each transaction label.
        self.coordinators: dict[tuple[str, str], int] = {}
        # Committed loads whose publish "timed out", in commit order: their rows are not
        # visible (to queries, or to later loads' merges) until they are published.
        self._unpublished: list[Txn] = []

    # -- auth and routing -----------------------------------------------------------------

    def password_ok(self, auth: Auth) -> bool:
        return auth.user == self.config.user and auth.password == self.config.password

    def next_be(self) -> int:
        with self._lock:
            index = self._rr % max(len(self.be_ports), 1)
            self._rr += 1
            return index

    def _cancel_hook(self, db: str, table: str) -> str | None:
        fault = self.faults.take(FaultKind.CANCEL_ALTER, db=db, table=table)
        return None if fault is None else str(fault.params.get("msg"))

    def _begin_checks(
        self, db: str, table: str, label: str, auth: Auth | None, client_ip: str
    ) -> Table:
        """What the FE's loadTxnBegin checks, in order."""
        if auth is None:
            raise LoadError("no valid Basic authorization")
        if not self.password_ok(auth):
            raise LoadError(f"Access denied for {auth.user}@{client_ip}")
        if not LABEL_RE.match(label):
            raise LoadError(f"Label format error. regex: ^[-\\w]{{1,128}}$, label: {label}")
        if db not in self.catalog.databases:
            raise LoadError(f"unknown database, database={db}")
        found = self.catalog.find_table(db, table)
        if found is None:
            raise LoadError(f'unknown table "{db}.{table}"')
        if self.faults.take(FaultKind.RUNNING_TXN_LIMIT, db=db, table=table, label=label):
            limit = self.txns.max_running_txn_num_per_db
            db_id = self.catalog.databases[db].id
            raise LoadError(running_txn_message(db_id, limit, limit))
        return found

    # -- Stream Load ----------------------------------------------------------------------

    def begin_stream_load(
        self,
        db: str,
        table_name: str,
        headers: Mapping[str, str],
        auth: Auth | None,
        client_ip: str,
        be_index: int,
    ) -> StreamLoadCtx:
        """The BE's header phase; raises ``Rejected`` with the reply on any failure."""
        started = time.monotonic()
        label = headers.get("label") or str(uuid.uuid4())
        result = StreamLoadResult(label=label)
        try:
            if auth is None:
                raise LoadError("no valid Basic authorization")
            length = headers.get("content-length")
            max_bytes = self.config.streaming_load_max_mb * 1024 * 1024
            if length and length.isdigit() and int(length) > max_bytes:
                raise LoadError(f"body exceed max size: {max_bytes}, data: {length}")
            fmt = check_format(headers)
            if (
                fmt == "json"
                and length
                and length.isdigit()
                and int(length) > JSON_MAX_BYTES
                and (headers.get("ignore_json_size") or "").lower() != "true"
            ):
                raise LoadError(
                    f"The size of this batch exceed the max size [{JSON_MAX_BYTES}]  of json "
                    f"type data  data [ {length} ]. Set ignore_json_size to skip the check, "
                    "although it may lead huge memory consuming."
                )
            check_timeout(headers)
            begin = time.monotonic()
            table = self._begin_checks(db, table_name, label, auth, client_ip)
            txn = self.txns.begin(
                db, self.catalog.databases[db].id, table_name, label, "stream_load"
            )
            result.txn_id = txn.txn_id
            result.times.begin_txn_ms = _ms(begin)
        except LabelAlreadyExists as e:
            result.status = "Label Already Exists"
            result.existing_job_status = e.existing_status
            result.message = str(e)
            raise Rejected(result.body()) from e
        except LoadError as e:
            result.message = str(e)
            raise Rejected(result.body()) from e
        plan_start = time.monotonic()
        try:
            plan = plan_load(headers, table)
        except LoadError as e:
            self.txns.set_state(txn, TxnState.ABORTED, str(e))
            result.message = str(e)
            raise Rejected(result.body()) from e
        result.times.plan_ms = _ms(plan_start)
        return StreamLoadCtx(result, txn, plan, table, be_index, started)

    def abort_stream_load(self, ctx: StreamLoadCtx, reason: str) -> None:
        self.txns.set_state(ctx.txn, TxnState.ABORTED, reason)

    def finish_stream_load(self, ctx: StreamLoadCtx, body: bytes, read_ms: int) -> dict[str, Any]:
        result, txn = ctx.result, ctx.txn
        result.counters.load_bytes = len(body)
        result.times.read_data_ms = read_ms
        write_start = time.monotonic()
        try:
            outcome = run_load(ctx.plan, body)
            self._count(result.counters, outcome)
            result.error_url = self._error_url(outcome, txn, ctx.be_index)
            self._check_write(outcome, ctx.plan, txn)
            result.times.write_data_ms = _ms(write_start)
            commit_start = time.monotonic()
            published = self._commit(txn, ctx.table, [(ctx.plan, outcome)])
            result.times.commit_publish_ms = _ms(commit_start)
        except LoadError as e:
            self.txns.set_state(txn, TxnState.ABORTED, str(e))
            result.status, result.message = "Fail", str(e)
            result.times.load_ms = _ms(ctx.started)
            return result.body()
        result.status = "Success" if published else "Publish Timeout"
        result.message = "OK" if published else PUBLISH_TIMEOUT_MESSAGE
        result.times.load_ms = _ms(ctx.started)
        return result.body()

    def _count(self, counters: LoadCounters, outcome: LoadOutcome) -> None:
        counters.total = outcome.total
        counters.loaded = outcome.loaded
        counters.filtered = outcome.filtered
        counters.unselected = outcome.unselected

    def _error_url(self, outcome: LoadOutcome, txn: Txn, be_index: int) -> str | None:
        if not outcome.errors:
            return None
        name = f"error_log_{txn.txn_id}_{uuid.uuid4().hex[:16]}"
        self.error_logs[name] = "\n".join(outcome.errors) + "\n"
        port = self.be_ports[be_index] if self.be_ports else 0
        return f"http://127.0.0.1:{port}/api/_load_error_log?file={name}"

    def _check_write(self, outcome: LoadOutcome, plan: LoadPlan, txn: Txn) -> None:
        fault = self.faults.take(
            FaultKind.TOO_MANY_VERSIONS, db=txn.db, table=txn.table, label=txn.label
        )
        if fault is not None:
            p = fault.params
            raise LoadError(
                too_many_versions_message(
                    plan.table.id * 10 + 1, p.get("version_count", 1001), p.get("limit", 1000)
                )
            )
        if outcome.too_many_filtered(plan.max_filter_ratio):
            raise LoadError(TOO_MANY_FILTERED)

    def _commit(self, txn: Txn, table: Table, parts: list[tuple[LoadPlan, LoadOutcome]]) -> bool:
        """Commit every part atomically; returns False when publish "times out".

        A timed-out publish leaves the load COMMITTED and its rows invisible (protocol
        reference §2.3: "committed but not yet visible") until ``publish_pending()``, or
        until a later load of the table publishes: a tablet's versions become visible in
        order, so the earlier ones are published first.
        """
        with self.catalog.lock:
            if self.catalog.find_table(txn.db, txn.table) is not table:
                raise LoadError(f'unknown table "{txn.db}.{txn.table}"')
            published = not self.faults.take(
                FaultKind.PUBLISH_TIMEOUT, db=txn.db, table=txn.table, label=txn.label
            )
            txn.table_ref, txn.parts = table, parts
            if not published:
                self._unpublished.append(txn)
                self.txns.set_state(txn, TxnState.COMMITTED)
                return False
            self._publish(table)
            self._apply(txn)
            return True

    def _apply(self, txn: Txn) -> None:
        """Make a committed load's rows visible (under the catalog lock)."""
        table = txn.table_ref
        assert table is not None
        if self.catalog.find_table(txn.db, txn.table) is table:
            now = self.clock.time()
            known = {c.lname for c in table.columns}
            for plan, outcome in txn.parts:
                ops = outcome.ops
                if known != {c.lname for c in plan.columns}:
                    ops = [
                        RowOp(o.op, {k: v for k, v in o.values.items() if k in known})
                        for o in ops
                    ]
                table.data.apply(
                    ops,
                    ApplyMode(plan.partial, plan.merge_condition),
                    lambda values: table.complete_row(values, now),
                )
            table.update_time = now
        self.txns.set_state(txn, TxnState.VISIBLE)

    def _publish(self, table: Table | None = None) -> int:
        """Publish the pending loads of ``table`` (of every table when None), in commit
        order; returns how many (under the catalog lock)."""
        due: list[Txn] = []
        kept: list[Txn] = []
        for txn in self._unpublished:
            (due if table is None or txn.table_ref is table else kept).append(txn)
        self._unpublished = kept
        for txn in due:
            self._apply(txn)
        return len(due)

    def publish_pending(self, table: Table | None = None) -> int:
        """Make COMMITTED loads (publish timed out) VISIBLE; returns how many."""
        with self.catalog.lock:
            return self._publish(table)

    # -- transaction interface (§4) -------------------------------------------------------

    def txn_begin(self, headers: Mapping[str, str], auth: Auth | None, client_ip: str) -> dict:
        label = headers.get("label") or ""
        db, table = headers.get("db") or "", headers.get("table") or ""
        started = time.monotonic()
        try:
            timeout = check_timeout(headers)
            idle = headers.get("idle_transaction_timeout")
            try:
                idle_timeout = float(idle) if idle else None
            except ValueError as e:
                raise LoadError("Invalid timeout format") from e
            self._begin_checks(db, table, label, auth, client_ip)
            txn = self.txns.begin(
                db, self.catalog.databases[db].id, table, label, "txn", timeout, idle_timeout
            )
        except LabelAlreadyExists as e:
            return txn_reply(
                "begin", "LABEL_ALREADY_EXISTS", str(e), existing_job_status=e.existing_status
            )
        except LoadError as e:
            status = "INVALID_ARGUMENT" if "timeout" in str(e) else "INTERNAL_ERROR"
            return txn_reply("begin", status, str(e), label=label)
        times = LoadTimes(begin_txn_ms=_ms(started))
        return txn_reply("begin", "OK", label=label, txn_id=txn.txn_id, times=times)

    def _txn_for(self, op: str, headers: Mapping[str, str]) -> Txn:
        """Find the live transaction a request names; raises ``Rejected``."""
        label = headers.get("label") or ""
        if not label:
            message = f"Invalid label {label}" if op == "load" else "empty label"
            raise Rejected(txn_reply(op, "INVALID_ARGUMENT", message))
        db = headers.get("db") or ""
        txn = self.txns.find_label(label) if not db else self.txns.get(db, label)
        if txn is None and db:
            txn = self.txns.find_label(label)
        # The BE drops its load context at prepare, so `load` and a second `prepare` no
        # longer find a PREPARED transaction; commit and rollback still do.
        live: tuple[TxnState, ...] = (TxnState.PREPARE, TxnState.PREPARED)
        if op in ("load", "prepare"):
            live = (TxnState.PREPARE,)
        if op == "commit":
            live = (TxnState.PREPARE, TxnState.PREPARED, TxnState.COMMITTED, TxnState.VISIBLE)
        if txn is None or txn.kind != "txn" or txn.state not in live:
            word = "Transaction" if op == "load" else "transaction"
            raise Rejected(
                txn_reply(op, "TXN_NOT_EXISTS", f"{word} with label {label} not exists")
            )
        if txn.db != db:
            message = (
                f"Request database {db} not equal transaction database {txn.db}"
                if op == "load"
                else f"request db {db} transaction db {txn.db} not match"
            )
            raise Rejected(txn_reply(op, "INVALID_ARGUMENT", message))
        if op == "load" and txn.table != (headers.get("table") or ""):
            raise Rejected(
                txn_reply(
                    op,
                    "INVALID_ARGUMENT",
                    f"Request table {headers.get('table') or ''} not equal transaction "
                    f"table {txn.table}",
                )
            )
        if self.faults.take(
            FaultKind.TXN_IN_PROCESSING, db=txn.db, table=txn.table, label=label, op=op
        ) or not txn.busy.acquire(blocking=False):
            raise Rejected(
                txn_reply(
                    op, "TXN_IN_PROCESSING", "Transaction in processing, please retry later",
                    label=label,
                )
            )
        return txn

    def txn_load_begin(self, headers: Mapping[str, str]) -> tuple[Txn, LoadPlan]:
        """Header phase of a transaction `load`; the caller must release ``txn.busy``."""
        txn = self._txn_for("load", headers)
        try:
            table = self.catalog.find_table(txn.db, txn.table)
            if table is None:
                raise LoadError(f'unknown table "{txn.db}.{txn.table}"')
            plan = plan_load(headers, table)
        except LoadError as e:
            self.txns.set_state(txn, TxnState.ABORTED, str(e))
            txn.busy.release()
            raise Rejected(txn_reply("load", "INTERNAL_ERROR", str(e), label=txn.label)) from e
        self.txns.touch(txn)
        if txn.load_headers is None:
            txn.load_headers = dict(headers)
        return txn, plan

    def txn_load_body(self, txn: Txn, body: bytes, read_ms: int) -> dict:
        try:
            txn.bodies.append(body)
            txn.load_bytes += len(body)
            self.txns.touch(txn)
            counters = LoadCounters(load_bytes=len(body))
            return txn_reply(
                "load", "OK", label=txn.label, txn_id=txn.txn_id, counters=counters,
                times=LoadTimes(read_data_ms=read_ms),
            )
        finally:
            txn.busy.release()

    def txn_abort_load(self, txn: Txn, reason: str) -> None:
        self.txns.set_state(txn, TxnState.ABORTED, reason)
        txn.busy.release()

    def _run_txn(self, txn: Txn) -> None:
        """Parse the transaction's bodies once, keeping the result on the transaction."""
        table = self.catalog.find_table(txn.db, txn.table)
        if table is None:
            raise LoadError(f'unknown table "{txn.db}.{txn.table}"')
        if txn.load_headers is None:
            raise LoadError(
                f"transaction id={txn.txn_id}, label={txn.label}, db={txn.db} "
                "hasn't send any data yet"
            )
        plan = plan_load(txn.load_headers, table)
        if plan.format == "csv":
            parts = [(plan, run_load(plan, b"".join(txn.bodies)))]
        else:
            # Each JSON `load` carries a complete document.
            parts = [(plan, run_load(plan, body)) for body in txn.bodies]
        total = LoadOutcome()
        for _, outcome in parts:
            total.merge(outcome)
        txn.error_url = self._error_url(total, txn, txn.coordinator or 0)
        self._check_write(total, plan, txn)
        txn.table_ref, txn.parts, txn.outcome = table, parts, total

    def txn_commit(self, headers: Mapping[str, str], prepare: bool) -> dict:
        op = "prepare" if prepare else "commit"
        started = time.monotonic()
        try:
            txn = self._txn_for(op, headers)
        except Rejected as e:
            return e.reply
        try:
            if txn.state in (TxnState.COMMITTED, TxnState.VISIBLE):
                return txn_reply(
                    op, "OK", "Transaction already commited", label=txn.label,
                    txn_id=txn.txn_id, counters=self._txn_counters(txn),
                )
            if prepare and headers.get("prepared_timeout"):
                value = headers["prepared_timeout"]
                if not value.isdigit() or int(value) <= 0:
                    return txn_reply(op, "INVALID_ARGUMENT", f"Invalid prepared_timeout: {value}")
                txn.prepared_timeout = float(value)
            status, message = "OK", ""
            try:
                if txn.outcome is None:
                    self._run_txn(txn)
                if prepare:
                    self.txns.set_state(txn, TxnState.PREPARED)
                else:
                    assert txn.table_ref is not None
                    if not self._commit(txn, txn.table_ref, txn.parts):
                        status, message = "PUBLISH_TIMEOUT", PUBLISH_TIMEOUT_MESSAGE
            except LoadError as e:
                self.txns.set_state(txn, TxnState.ABORTED, str(e))
                code = "SERVICE_UNAVAILABLE" if "too many versions" in str(e) else "INTERNAL_ERROR"
                return txn_reply(op, code, str(e), label=txn.label, error_url=txn.error_url)
            return txn_reply(
                op, status, message, label=txn.label, txn_id=txn.txn_id,
                counters=self._txn_counters(txn), times=LoadTimes(load_ms=_ms(started)),
                error_url=txn.error_url,
            )
        finally:
            txn.busy.release()

    def _txn_counters(self, txn: Txn) -> LoadCounters:
        counters = LoadCounters(load_bytes=txn.load_bytes)
        if txn.outcome is not None:
            self._count(counters, txn.outcome)
        return counters

    def txn_rollback(self, headers: Mapping[str, str]) -> dict:
        try:
            txn = self._txn_for("rollback", headers)
        except Rejected as e:
            return e.reply
        try:
            self.txns.set_state(txn, TxnState.ABORTED, "transaction is aborted by user.")
            return txn_reply("rollback", "OK", label=txn.label)
        finally:
            txn.busy.release()

    # -- FE queries -----------------------------------------------------------------------

    def load_state(self, db: str, label: str) -> dict[str, Any]:
        if not db:
            return rest_result("No database selected.")
        if not label:
            return rest_result("No label selected.")
        if db not in self.catalog.databases and db != INFO_SCHEMA:
            # information_schema exists in every StarRocks (SHOW DATABASES lists it): a
            # label looked up there is simply UNKNOWN, as on a real FE.
            return rest_result(f"unknown database, database={db}")
        state, reason = self.txns.label_state(db, label)
        fault = self.faults.take(FaultKind.STALE_LOAD_STATE, db=db, label=label)
        if fault is not None:
            state, reason = TxnState(str(fault.params.get("state", "PREPARE"))), ""
        return rest_result(None, state=state.value, reason=reason or None)

    def rows(self, db: str, table: str) -> list[dict[str, Any]]:
        try:
            with self.catalog.lock:
                return self.catalog.table(db, table).rows()
        except SRError as e:
            raise KeyError(e.message) from e
