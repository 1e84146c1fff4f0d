"""Scheduled faults: "the next N requests (matching a db/table/label) fail like this".

Every fault is consumed when it fires, so a test knows exactly which request is hit.
``times=None`` keeps a fault active until ``clear()``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    PUBLISH_TIMEOUT = "publish_timeout"
    TOO_MANY_VERSIONS = "too_many_versions"
    RUNNING_TXN_LIMIT = "running_txn_limit"
    BE_UNREACHABLE = "be_unreachable"
    CONNECTION_RESET = "connection_reset"
    FE_ERROR = "fe_error"
    NO_BACKEND = "no_backend"
    DELAY = "delay"
    TXN_IN_PROCESSING = "txn_in_processing"
    CANCEL_ALTER = "cancel_alter"
    STALE_LOAD_STATE = "stale_load_state"


# Parameters that narrow which requests a fault matches (besides db/table/label).
_MATCH_PARAMS = ("where", "op")


@dataclass
class Fault:
    id: int
    kind: FaultKind
    times: int | None
    db: str | None = None
    table: str | None = None
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    def matches(
        self, db: str | None, table: str | None, label: str | None, attrs: dict[str, Any]
    ) -> bool:
        for want, got in ((self.db, db), (self.table, table), (self.label, label)):
            if want is not None and want != got:
                return False
        for key in _MATCH_PARAMS:
            want = self.params.get(key)
            if want is not None and want != "any" and want != attrs.get(key):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind.value, "times": self.times, "db": self.db,
            "table": self.table, "label": self.label, "params": self.params, "fired": self.fired,
        }


class Faults:
    """The emulator's fault schedule; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._faults: list[Fault] = []

    def add(
        self,
        kind: FaultKind | str,
        *,
        times: int | None = 1,
        db: str | None = None,
        table: str | None = None,
        label: str | None = None,
        **params: Any,
    ) -> Fault:
        fault = Fault(next(self._ids), FaultKind(kind), times, db, table, label, dict(params))
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(
        self,
        kind: FaultKind,
        *,
        db: str | None = None,
        table: str | None = None,
        label: str | None = None,
        **attrs: Any,
    ) -> Fault | None:
        """Consume and return the first matching fault, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or not fault.matches(db, table, label, attrs):
                    continue
                fault.fired += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def remove(self, fault_id: int) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f.id != fault_id]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- one method per documented failure ------------------------------------------------

    def publish_timeout(self, times: int | None = 1, **match: Any) -> Fault:
        """Loads commit but reply ``Publish Timeout``; the label stays COMMITTED until
        ``StarRocksEmulator.publish_pending()``."""
        return self.add(FaultKind.PUBLISH_TIMEOUT, times=times, **match)

    def too_many_versions(
        self, times: int | None = 1, *, version_count: int = 1001, limit: int = 1000,
        **match: Any,
    ) -> Fault:
        """Loads fail with the BE's "too many versions" message and are rolled back."""
        return self.add(
            FaultKind.TOO_MANY_VERSIONS, times=times, version_count=version_count, limit=limit,
            **match,
        )

    def running_txn_limit(self, times: int | None = 1, **match: Any) -> Fault:
        """``begin`` is refused with "current running txns on db ..."."""
        return self.add(FaultKind.RUNNING_TXN_LIMIT, times=times, **match)

    def be_unreachable(self, times: int | None = 1, **match: Any) -> Fault:
        """The FE's 307 points at a closed port."""
        return self.add(FaultKind.BE_UNREACHABLE, times=times, **match)

    def connection_reset(
        self, times: int | None = 1, *, after_bytes: int = 0, **match: Any
    ) -> Fault:
        """The BE sends 100 Continue, reads ``after_bytes`` of the body, then resets."""
        return self.add(FaultKind.CONNECTION_RESET, times=times, after_bytes=after_bytes, **match)

    def fe_error(
        self, times: int | None = 1, *, status: int = 500,
        message: str = "Internal Server Error", **match: Any,
    ) -> Fault:
        """The FE answers HTTP ``status`` with a RestBaseResult body instead of redirecting."""
        return self.add(FaultKind.FE_ERROR, times=times, status=status, message=message, **match)

    def no_backend(self, times: int | None = 1, **match: Any) -> Fault:
        """The FE answers "No backend alive." (HTTP 200, Status FAILED)."""
        return self.add(FaultKind.NO_BACKEND, times=times, **match)

    def delay(
        self, seconds: float, times: int | None = 1, *, where: str = "be", **match: Any
    ) -> Fault:
        """Hold the reply of the FE (``where="fe"``), the BE (``"be"``) or either."""
        return self.add(FaultKind.DELAY, times=times, seconds=seconds, where=where, **match)

    def txn_in_processing(
        self, times: int | None = 1, *, op: str | None = None, **match: Any
    ) -> Fault:
        """Transaction ``load``/``prepare``/``commit``/``rollback`` reply TXN_IN_PROCESSING."""
        return self.add(FaultKind.TXN_IN_PROCESSING, times=times, op=op, **match)

    def cancel_alter(
        self, times: int | None = 1, *, msg: str = "schema change job cancelled by emulator",
        **match: Any,
    ) -> Fault:
        """The next schema-change job ends CANCELLED with ``msg``; the schema is unchanged."""
        return self.add(FaultKind.CANCEL_ALTER, times=times, msg=msg, **match)

    def stale_load_state(
        self, times: int | None = 1, *, state: str = "PREPARE", **match: Any
    ) -> Fault:
        """``get_load_state`` reports ``state`` instead of the real one."""
        return self.add(FaultKind.STALE_LOAD_STATE, times=times, state=state, **match)
