"""Load transactions and labels: the FE's transaction manager, as a CDC sink sees it.

States: PREPARE -> PREPARED -> COMMITTED -> VISIBLE, or ABORTED from PREPARE/PREPARED.
A label collides with any transaction on it that is not ABORTED. Timeouts and label
retention are checked lazily against the injected clock on every access, so tests make
them happen by advancing a ``ManualClock``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from dbmazz.testing.starrocks.catalog import Ids, Table
from dbmazz.testing.starrocks.clock import Clock
from dbmazz.testing.starrocks.errors import LabelAlreadyExists, LoadError
from dbmazz.testing.starrocks.loads import LoadOutcome, LoadPlan


class TxnState(StrEnum):
    UNKNOWN = "UNKNOWN"
    PREPARE = "PREPARE"
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"
    VISIBLE = "VISIBLE"
    ABORTED = "ABORTED"


RUNNING = (TxnState.PREPARE, TxnState.PREPARED)
FINISHED = (TxnState.COMMITTED, TxnState.VISIBLE)


@dataclass
class Txn:
    txn_id: int
    db: str
    db_id: int
    table: str
    label: str
    kind: Literal["stream_load", "txn"]
    begin_time: float
    timeout: float | None = None
    idle_timeout: float | None = None
    prepared_timeout: float = 86400.0
    state: TxnState = TxnState.PREPARE
    last_active: float = 0.0
    prepared_at: float | None = None
    finish_time: float | None = None
    reason: str = ""
    coordinator: int | None = None
    # Transaction-interface loads: the bodies and the headers of the first `load`.
    bodies: list[bytes] = field(default_factory=list)
    load_headers: dict[str, str] | None = None
    load_bytes: int = 0
    # Set once the bodies are parsed (at prepare, or at commit without prepare).
    outcome: LoadOutcome | None = None
    parts: list[tuple[LoadPlan, LoadOutcome]] = field(default_factory=list)
    table_ref: Table | None = None
    error_url: str | None = None
    # Held while a request works on the transaction; a second one gets TXN_IN_PROCESSING.
    busy: threading.Lock = field(default_factory=threading.Lock)

    @property
    def existing_job_status(self) -> str:
        return "FINISHED" if self.state in FINISHED else "RUNNING"


class TxnManager:
    def __init__(
        self,
        clock: Clock,
        ids: Ids,
        label_keep_max_second: float = 259200.0,
        max_running_txn_num_per_db: int = 1000,
        default_txn_timeout: float = 20.0,
    ) -> None:
        self.clock = clock
        self.ids = ids
        self.label_keep_max_second = label_keep_max_second
        self.max_running_txn_num_per_db = max_running_txn_num_per_db
        self.default_txn_timeout = default_txn_timeout
        self.lock = threading.RLock()
        self._txns: dict[tuple[str, str], Txn] = {}

    def begin(
        self,
        db: str,
        db_id: int,
        table: str,
        label: str,
        kind: Literal["stream_load", "txn"],
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> Txn:
        with self.lock:
            self.expire()
            existing = self._txns.get((db, label))
            if existing is not None and existing.state != TxnState.ABORTED:
                raise LabelAlreadyExists(label, existing.existing_job_status)
            running = self.running(db)
            if running >= self.max_running_txn_num_per_db:
                limit = self.max_running_txn_num_per_db
                raise LoadError(running_txn_message(db_id, running, limit))
            now = self.clock.time()
            if kind == "txn" and timeout is None:
                timeout = self.default_txn_timeout
            txn = Txn(
                txn_id=self.ids.next("txn"),
                db=db,
                db_id=db_id,
                table=table,
                label=label,
                kind=kind,
                begin_time=now,
                last_active=now,
                timeout=timeout,
                idle_timeout=idle_timeout,
            )
            self._txns[(db, label)] = txn
            return txn

    def running(self, db: str) -> int:
        with self.lock:
            return sum(1 for (d, _), t in self._txns.items() if d == db and t.state in RUNNING)

    def get(self, db: str, label: str) -> Txn | None:
        with self.lock:
            self.expire()
            return self._txns.get((db, label))

    def find_label(self, label: str) -> Txn | None:
        with self.lock:
            self.expire()
            for (_, lbl), txn in self._txns.items():
                if lbl == label:
                    return txn
            return None

    def touch(self, txn: Txn) -> None:
        with self.lock:
            txn.last_active = self.clock.time()

    def set_state(self, txn: Txn, state: TxnState, reason: str = "") -> None:
        with self.lock:
            now = self.clock.time()
            txn.state = state
            txn.last_active = now
            if state == TxnState.PREPARED:
                txn.prepared_at = now
            if state in (TxnState.VISIBLE, TxnState.ABORTED, TxnState.COMMITTED):
                txn.finish_time = now
            if reason:
                txn.reason = reason
            if state == TxnState.ABORTED:
                txn.bodies.clear()

    def label_state(self, db: str, label: str) -> tuple[TxnState, str]:
        txn = self.get(db, label)
        if txn is None:
            return TxnState.UNKNOWN, ""
        return txn.state, txn.reason

    def expire(self) -> None:
        with self.lock:
            now = self.clock.time()
            for key, txn in list(self._txns.items()):
                if txn.state == TxnState.PREPARE and txn.kind == "txn":
                    if txn.timeout is not None and now - txn.begin_time > txn.timeout:
                        self.set_state(
                            txn, TxnState.ABORTED,
                            f"transaction is aborted by timeout {int(txn.timeout)} seconds.",
                        )
                    elif txn.idle_timeout is not None and now - txn.last_active > txn.idle_timeout:
                        self.set_state(
                            txn, TxnState.ABORTED,
                            f"transaction is aborted by idle timeout {int(txn.idle_timeout)} "
                            "seconds.",
                        )
                elif (
                    txn.state == TxnState.PREPARED
                    and txn.prepared_at is not None
                    and now - txn.prepared_at > txn.prepared_timeout
                ):
                    self.set_state(
                        txn, TxnState.ABORTED,
                        f"transaction is aborted by prepared timeout "
                        f"{int(txn.prepared_timeout)} seconds.",
                    )
                if (
                    txn.state in (TxnState.VISIBLE, TxnState.ABORTED)
                    and txn.finish_time is not None
                    and now - txn.finish_time >= self.label_keep_max_second
                ):
                    del self._txns[key]

    def all(self) -> list[Txn]:
        with self.lock:
            self.expire()
            return list(self._txns.values())


def running_txn_message(db_id: int, running: int, limit: int) -> str:
    return f"current running txns on db {db_id} is {running}, larger than limit {limit}"
