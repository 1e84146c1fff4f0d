"""Making the target comparable with the snapshot: wait until the pipeline has made every
change before the snapshot LSN durable.

A transactional logical message is emitted after the snapshot's LSN; once the pipeline has
made it durable, every transaction committed before the snapshot is loaded (an idle table
produces no commit to wait for, the message does). With the engine in this process its
durable LSN is awaited; with an engine elsewhere (the slot is active) its checkpoint row in
``dbmazz_checkpoints`` is polled; without a running engine the target is compared as it is
(it may lag: what it lacks is then reported, and the next ``dbmazz run`` catches up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from dbmazz.errors import DbmazzError
from dbmazz.lsn import format_lsn
from dbmazz.snapshot.read import emit_marker
from dbmazz.source.database import SourceDatabase
from dbmazz.source.slots import slot_info
from dbmazz.state.checkpoint import PostgresCheckpointStore

MARKER_PREFIX = "dbmazz_verify"
_POLL_S = 0.2


class DurableEngine(Protocol):
    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool: ...


class VerifyTimeout(DbmazzError):
    pass


def _marker(dsn: str, lsn: int) -> int:
    with SourceDatabase(dsn).connect("verify") as conn:
        return emit_marker(conn, MARKER_PREFIX, format_lsn(lsn))


def wait_for_pipeline(dsn: str, slot: str, lsn: int, *, engine: DurableEngine | None,
                      timeout_s: float, should_stop: Callable[[], bool] = lambda: False,
                      primary_dsn: str | None = None) -> tuple[str, list[str]]:
    """Returns (target state, notes): ``'durable'`` once the pipeline passed ``lsn``, or
    ``'as-is'`` when no engine streams the slot. ``primary_dsn``: where dbmazz writes
    (PRIMARY_URL when ``dsn`` is a hot standby, which can write no marker and holds the
    checkpoints only as replayed); the slot is looked up on ``dsn``."""
    deadline = time.monotonic() + timeout_s
    writes = primary_dsn or dsn
    if engine is not None:
        marker = _marker(writes, lsn)
        while not engine.wait_durable(marker, _POLL_S):
            _check_deadline(deadline, should_stop, marker)
        return "durable", []
    info = slot_info(dsn, slot)
    if not (info.exists and info.active):
        return "as-is", [
            f"no engine streams slot {slot!r}: the target was compared as it is; changes "
            "the pipeline has not loaded yet show as differences"
        ]
    marker = _marker(writes, lsn)
    store = PostgresCheckpointStore(SourceDatabase(writes), slot)
    try:
        while (store.load() or 0) < marker:
            _check_deadline(deadline, should_stop, marker)
            time.sleep(_POLL_S)  # polling another process's checkpoint row
    finally:
        store.close()
    return "durable", []


def _check_deadline(deadline: float, should_stop: Callable[[], bool], marker: int) -> None:
    if should_stop():
        raise DbmazzError("verify cancelled while waiting for the pipeline")
    if time.monotonic() > deadline:
        raise VerifyTimeout(
            f"the pipeline did not make LSN {format_lsn(marker)} durable in time, so the "
            "target cannot be compared with the snapshot yet",
            "check that the engine streams (dbmazz status) or raise VERIFY_WAIT_S",
        )
