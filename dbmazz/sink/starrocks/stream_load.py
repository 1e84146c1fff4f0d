"""Stream Load and the Stream Load transaction interface, with retries.

Every request carries a deterministic label, so re-sending after an ambiguous failure is
safe: StarRocks answers "Label Already Exists" for work it already did. Outcomes:

* ``Success``, ``Publish Timeout`` (committed, visible soon) and ``Label Already Exists``
  with ``ExistingJobStatus: FINISHED`` are success; a load not known to be visible yet is
  remembered, and :meth:`StreamLoadClient.await_published` waits for it before the sink
  reads the table (a read before then sees the rows as they were before the load);
* ``Label Already Exists`` + ``RUNNING``: poll ``get_load_state`` until the label settles;
  VISIBLE/COMMITTED is success, ABORTED/UNKNOWN frees the label for a new attempt;
* retryable failures (network, 5xx, too many versions, running-txn cap, HTTP concurrency
  limit, TXN_IN_PROCESSING) back off exponentially with jitter under a :class:`RetryPolicy`;
* fatal failures raise :class:`SinkError` naming table, label and StarRocks' message, with
  the rejected rows fetched from ``ErrorURL`` (truncated).

A transaction ``load`` is not idempotent (a second send appends the rows again), so it is
re-sent only when StarRocks provably did not take the body; otherwise the transaction is
rolled back and :class:`TransactionBroken` asks for the whole source transaction again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import quote

from dbmazz.errors import SinkError
from dbmazz.retry import Attempts, Cancelled, RetryPolicy, Waiter
from dbmazz.sink.base import RetryListener
from dbmazz.sink.starrocks.http import HttpResponse, Transport, TransportError
from dbmazz.sink.starrocks.response import (
    PUBLISH_TIMEOUT,
    TOO_MANY_FILTERED,
    Outcome,
    Reply,
    classify,
    is_auth_failure,
    parse_reply,
)

log = logging.getLogger("dbmazz.sink.starrocks")

FINAL_OK = frozenset({"VISIBLE", "COMMITTED"})
FREE = frozenset({"ABORTED", "UNKNOWN", ""})
# Curl errors raised before a request could reach a server: nothing was sent.
_NOT_SENT = frozenset({5, 6, 7})
#: Loads not known visible kept per table before the visible ones are dropped.
_PRUNE_EVERY = 64


class RowsRejected(SinkError):
    """A load StarRocks refused because it filtered some of its rows (strict mode: a value
    out of range, too long, not valid JSON…): nothing of the load was applied."""

    def __init__(self, message: str, hint: str, *, table: str, label: str, filtered: int,
                 error_log: str) -> None:
        super().__init__(message, hint, table=table, label=label, retryable=False)
        self.filtered = filtered
        #: The rejected rows and reasons from ``ErrorURL`` (truncated), or "".
        self.error_log = error_log


class TransactionBroken(Exception):
    """A load transaction can no longer complete (StarRocks aborted it or its state is
    unknowable); the caller rolls back and asks for the source transaction again."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    label: str
    loaded_rows: int
    #: True when StarRocks already had this label: nothing was loaded this time.
    already_loaded: bool


def _q(name: str) -> str:
    return quote(name, safe="")


class StreamLoadClient:
    def __init__(
        self,
        fe_url: str,
        transport: Transport,
        *,
        policy: RetryPolicy | None = None,
        waiter: Waiter | None = None,
        error_log_limit: int = 4000,
        user: str = "",
    ) -> None:
        self.fe_url = fe_url.rstrip("/")
        self.transport = transport
        self.policy = policy or RetryPolicy()
        self.waiter = waiter or Waiter()
        self.error_log_limit = error_log_limit
        self.user = user
        #: Told of every failed attempt as it happens (the engine's load health).
        self.retry_listener: RetryListener | None = None
        #: (db, table) → labels of loads committed but not known to be visible.
        self._unpublished: dict[tuple[str, str], list[str]] = {}
        self._unpublished_lock = threading.Lock()

    # -- plain Stream Load ---------------------------------------------------------------

    def load(
        self, db: str, table: str, label: str, body: bytes, headers: Mapping[str, str]
    ) -> LoadOutcome:
        url = f"{self.fe_url}/api/{_q(db)}/{_q(table)}/_stream_load"
        request = {**headers, "label": label}
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            try:
                response = self.transport.send_following(
                    "PUT", url, request, body, expect_continue=True
                )
            except TransportError as exc:
                reason = f"network error: {exc}"
            else:
                reply = parse_reply(response)
                outcome, reason = classify(reply)
                if outcome is Outcome.OK:
                    if reply.status == PUBLISH_TIMEOUT:
                        self._committed(db, table, label)
                    return LoadOutcome(label, reply.number("NumberLoadedRows"), False)
                if outcome is Outcome.FATAL:
                    self._fatal(db, table, label, reply)
                if outcome is Outcome.LABEL_EXISTS:
                    settled = self._settle_label(db, table, label, reply)
                    if settled is not None:
                        if settled != "VISIBLE":
                            self._committed(db, table, label)
                        return LoadOutcome(label, 0, True)
                    reason = f"label {label} was aborted; loading it again"
            self._pause(attempts, table, label, reason)

    def _settle_label(self, db: str, table: str, label: str, reply: Reply) -> str | None:
        """The state of the existing label's finished load (FINISHED when only the reply
        says so: COMMITTED or VISIBLE); None when the label is free."""
        if reply.existing_job_status == "FINISHED":
            return "FINISHED"
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            state = self.load_state(db, label, table=table)
            if state in FINAL_OK:
                return state
            if state in FREE:
                return None
            self._pause(attempts, table, label, f"label {label} is {state}; waiting for it")

    # -- visibility ----------------------------------------------------------------------

    def _committed(self, db: str, table: str, label: str) -> None:
        """Remember a load StarRocks committed without saying it is visible."""
        with self._unpublished_lock:
            labels = self._unpublished.setdefault((db, table), [])
            labels.append(label)
            due = len(labels) % _PRUNE_EVERY == 0
        if due:
            self._prune(db, table)

    def _prune(self, db: str, table: str) -> None:
        """Forget the loads of ``table`` that are visible by now (without waiting), so a
        table that is never read does not gather labels for ever. Best effort: the load
        that called it succeeded, and on any doubt every label is kept."""
        with self._unpublished_lock:
            labels = self._unpublished.pop((db, table), [])
        try:
            pending = [label for label in labels
                       if self.load_state(db, label, table=table) == "COMMITTED"]
        except (SinkError, Cancelled) as exc:
            log.info("could not check which loads of %s are visible: %s", table, exc)
            pending = labels
        with self._unpublished_lock:
            self._unpublished.setdefault((db, table), [])[:0] = pending

    def await_published(self, db: str, table: str) -> None:
        """Return once every load of ``table`` this client saw committed is visible.

        A load answered "Publish Timeout" (or found done under its label) may be committed
        and not yet visible: its rows are durable, but a query does not see them until
        the publish completes (protocol reference §2.3). Reads of the table's current rows
        wait here first, so they never answer with the values from before such a load.
        """
        with self._unpublished_lock:
            labels = self._unpublished.pop((db, table), [])
        for index, label in enumerate(labels):
            try:
                self._await_visible(db, table, label)
            except BaseException:
                with self._unpublished_lock:
                    self._unpublished.setdefault((db, table), [])[:0] = labels[index:]
                raise

    def _await_visible(self, db: str, table: str, label: str) -> None:
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            # VISIBLE, or a label StarRocks no longer keeps: published long ago.
            if self.load_state(db, label, table=table) != "COMMITTED":
                return
            self._pause(attempts, table, label,
                        f"load {label} is committed but not visible yet; waiting for it")

    def load_state(self, db: str, label: str, *, table: str | None = None) -> str:
        """The label's transaction state: UNKNOWN, PREPARE, PREPARED, COMMITTED, VISIBLE,
        ABORTED (retried on network errors)."""
        url = f"{self.fe_url}/api/{_q(db)}/get_load_state?label={_q(label)}"
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            try:
                reply = parse_reply(self.transport.send_following("GET", url))
            except TransportError as exc:
                reason = f"network error: {exc}"
            else:
                if reply.http_status == 200 and reply.state:
                    return reply.state
                outcome, reason = classify(reply)
                if outcome is Outcome.FATAL:
                    self._fatal(db, table or "?", label, reply, action="get_load_state")
                if outcome is Outcome.OK:
                    return "UNKNOWN"
            self._pause(attempts, table, label, reason)

    # -- transaction interface -----------------------------------------------------------

    def _txn(
        self,
        op: str,
        db: str,
        table: str,
        label: str,
        extra: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """One transaction request; raises TransportError as is."""
        headers = {"label": label, "db": db, "table": table, **(extra or {})}
        method = "PUT" if op == "load" else "POST"
        response: HttpResponse = self.transport.send_following(
            method,
            f"{self.fe_url}/api/transaction/{op}",
            headers,
            body,
            expect_continue=op == "load",
        )
        return parse_reply(response)

    def txn_begin(self, db: str, table: str, label: str, timeout_s: int) -> str:
        """Begin a transaction. Returns "new", "finished" (already committed earlier) or
        "pending" (a PREPARE/PREPARED transaction of an earlier run holds the label)."""
        extra = {"timeout": str(timeout_s), "idle_transaction_timeout": str(timeout_s)}
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            try:
                reply = self._txn("begin", db, table, label, extra)
            except TransportError as exc:
                reason = f"network error: {exc}"
            else:
                outcome, reason = classify(reply)
                if outcome is Outcome.OK:
                    return "new"
                if outcome is Outcome.FATAL:
                    self._fatal(db, table, label, reply, action="transaction begin")
                if outcome is Outcome.LABEL_EXISTS:
                    if reply.existing_job_status == "FINISHED":
                        return "finished"
                    state = self.load_state(db, label, table=table)
                    if state in FINAL_OK:
                        return "finished"
                    if state not in FREE:
                        return "pending"
                    reason = f"label {label} was aborted; beginning again"
            self._pause(attempts, table, label, reason)

    def txn_load(
        self, db: str, table: str, label: str, body: bytes, headers: Mapping[str, str]
    ) -> int:
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            try:
                reply = self._txn("load", db, table, label, headers, body)
            except TransportError as exc:
                if exc.body_sent or exc.code not in _NOT_SENT:
                    raise TransactionBroken(
                        f"transaction load {label} into {table} failed mid-request: {exc}", label
                    ) from None
                reason = f"network error before sending: {exc}"
            else:
                outcome, reason = classify(reply)
                if outcome is Outcome.OK:
                    return reply.number("NumberLoadedRows")
                if outcome is Outcome.FATAL:
                    self._fatal(db, table, label, reply, action="transaction load")
                status, message = reply.status, reply.message.lower()
                # Rejected before the body was read: the transaction is intact.
                if not (
                    reply.http_status >= 500
                    or status == "txn in processing"
                    or "cuncurrent limit" in message
                    or "concurrent limit" in message
                ):
                    raise TransactionBroken(
                        f"transaction load {label} into {table} failed: {reply.summary()}", label
                    )
            self._pause(attempts, table, label, reason)

    def txn_prepare(self, db: str, table: str, label: str) -> None:
        self._finish("prepare", db, table, label, done={"PREPARED", *FINAL_OK})

    def txn_commit(self, db: str, table: str, label: str) -> None:
        if self._finish("commit", db, table, label, done=FINAL_OK) != "VISIBLE":
            self._committed(db, table, label)

    def _finish(
        self, op: str, db: str, table: str, label: str, *, done: frozenset[str] | set[str]
    ) -> str:
        """prepare/commit: idempotent, so any doubt is settled by asking the label's state.
        Returns the state reached as far as it is known: VISIBLE only when the label's
        state said so."""
        attempts = Attempts(self.policy, self.waiter)
        while True:
            attempts.start()
            try:
                reply = self._txn(op, db, table, label)
            except TransportError as exc:
                reason = f"network error: {exc}"
            else:
                outcome, reason = classify(reply)
                if outcome is Outcome.OK:
                    # Not proof of visibility: "PUBLISH_TIMEOUT", or an OK "already
                    # commited" (the same status as a fresh commit) of one still publishing.
                    return "COMMITTED"
                if outcome is Outcome.FATAL:
                    if (state := self.load_state(db, label, table=table)) in done:
                        return state
                    self._fatal(db, table, label, reply, action=f"transaction {op}")
            state = self.load_state(db, label, table=table)
            if state in done:
                return state
            if state in FREE:
                raise TransactionBroken(
                    f"transaction {label} of {table} is {state or 'gone'} at {op}: {reason}", label
                )
            self._pause(attempts, table, label, f"{op}: {reason} (state {state})")

    def txn_rollback(self, db: str, table: str, label: str) -> None:
        """Best effort: a transaction left behind is aborted by its timeout anyway."""
        try:
            reply = self._txn("rollback", db, table, label)
            outcome, reason = classify(reply)
            if outcome is not Outcome.OK:
                log.info("rollback of %s on %s: %s", label, table, reason)
        except (TransportError, SinkError, Cancelled) as exc:
            log.warning("rollback of %s on %s failed: %s", label, table, exc)

    # -- errors --------------------------------------------------------------------------

    def _pause(self, attempts: Attempts, table: str | None, label: str, reason: str) -> None:
        if not attempts.can_retry():
            raise SinkError(
                f"Stream Load into {table} (label {label}) still failing after "
                f"{attempts.summary()}: {reason}",
                "StarRocks is unreachable or overloaded; it will be retried when the "
                "engine restarts the load",
                table=table,
                label=label,
                retryable=True,
            )
        if self.retry_listener is not None and table is not None:
            self.retry_listener(table, reason)
        log.warning(
            "load %s into %s failed (attempt %d): %s; retrying",
            label,
            table,
            attempts.count,
            reason,
        )
        try:
            attempts.backoff()
        except Cancelled:
            raise SinkError(
                f"Stream Load into {table} (label {label}) cancelled while retrying: {reason}",
                table=table,
                label=label,
                retryable=True,
            ) from None

    def _fatal(
        self, db: str, table: str, label: str, reply: Reply, *, action: str = "Stream Load"
    ) -> NoReturn:
        details = ""
        if reply.error_url:
            details = self.fetch_error_log(reply.error_url)
        message = f"{action} into {db}.{table} failed (label {label}): {reply.summary()}"
        if reply.number("NumberFilteredRows"):
            message += (
                f" [{reply.number('NumberFilteredRows')} of "
                f"{reply.number('NumberTotalRows')} rows rejected]"
            )
        if details:
            message += f"\nrejected rows (from ErrorURL):\n{details}"
        filtered = reply.number("NumberFilteredRows")
        # A load transaction reports its filtered rows only at prepare/commit, without the
        # counters, as StarRocks' fixed text (protocol reference §2.3).
        if filtered or TOO_MANY_FILTERED in reply.message.lower():
            raise RowsRejected(message, _hint(reply, self.user), table=table, label=label,
                               filtered=filtered, error_log=details)
        raise SinkError(message, _hint(reply, self.user), table=table, label=label, retryable=False)

    def fetch_error_log(self, url: str) -> str:
        try:
            # The error log needs no credentials; do not hand them to a URL from a reply.
            response = self.transport.send_following("GET", url, auth=False)
        except TransportError as exc:
            return f"(could not fetch {url}: {exc})"
        text = response.body.decode("utf-8", "replace")
        # Rejected CSV rows come back with their control-character separators: shown readably.
        text = text.replace("\x01", " | ").replace("\x02", "\n").strip()
        if len(text) > self.error_log_limit:
            text = (
                text[: self.error_log_limit]
                + f"\n… ({len(text) - self.error_log_limit} more characters)"
            )
        return text


def _hint(reply: Reply, user: str) -> str:
    message = reply.message.lower()
    if is_auth_failure(reply):
        return (
            f"check STARROCKS_USER ({user!r}) and STARROCKS_PASSWORD, and that the user has "
            "the INSERT privilege on the table"
        )
    if "too many filtered rows" in message:
        return (
            "the rejected rows above do not fit the target table (types, NOT NULL, lengths); "
            "fix the target definition or let dbmazz create it (CREATE_TABLES=true); "
            "REJECTED_ROWS=table sets such rows aside in dbmazz_rejected instead of stopping"
        )
    if "column" in message:
        return "the target table lacks a source column: run setup (SETUP=auto) or add it"
    return "see the StarRocks message above"
