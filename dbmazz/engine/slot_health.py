"""The health of the engine's replication slot, sampled in the background: how much WAL the
server keeps for it (``pg_current_wal_lsn() - restart_lsn``), ``wal_status`` and
``safe_wal_size`` (PG13+: how close ``max_slot_wal_keep_size`` is to invalidating it), and
whether a session streams from it. Status, Prometheus and ``dbmazz top`` read the latest
sample; a warning is logged when the slot crosses ``SLOT_WAL_WARN_BYTES``.
It also finds configured tables the publication no longer publishes, or now publishes
more of (publication.widenings), and hands them to the service, which loads them again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from dbmazz.errors import DbmazzError
from dbmazz.log import human_bytes
from dbmazz.source.database import SourceDatabase
from dbmazz.source.publication import (
    PublishedShape,
    published_shapes,
    through_partitions,
    unpublished,
    widenings,
)
from dbmazz.source.slots import read_slots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotHealth:
    slot: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    retained_bytes: int | None = None
    wal_status: str | None = None
    safe_wal_size: int | None = None
    #: Configured tables the publication no longer publishes ('schema.table').
    unpublished: tuple[str, ...] = ()
    #: Why the slot needs attention ("" when it does not).
    warning: str = ""
    #: Why it could not be sampled ("" when the sample is fresh).
    error: str = ""
    sampled_at: float = 0.0


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def unpublished_warning(publication: str, tables: Sequence[str],
                        via_partitions: Sequence[str] = ()) -> str:
    """``via_partitions``: those of ``tables`` published through their partitions' names
    (publish_via_partition_root off), which setup refuses, so a restart does not help."""
    others = [t for t in tables if t not in via_partitions]
    parts = []
    if others:
        parts.append(f"publication {publication!r} no longer publishes {', '.join(others)}: "
                     "their changes are not decoded; restart dbmazz (setup adds them back and "
                     "loads their rows again)")
    if via_partitions:
        parts.append(
            f"publication {publication!r} has publish_via_partition_root = false: the changes "
            f"of {', '.join(via_partitions)} arrive under their partitions' names and are "
            f"passed over; run `ALTER PUBLICATION {_quoted(publication)} SET "
            "(publish_via_partition_root = true);` while dbmazz runs (it then loads them "
            "again)")
    return "; ".join(parts)


def assess(slot: str, retained: int | None, wal_status: str | None, safe: int | None,
           warn_bytes: int) -> str:
    """The warning for a sample ("" when there is nothing to warn about)."""
    if wal_status == "lost":
        return (f"slot {slot} was invalidated (wal_status lost): the WAL it needed is gone; "
                "drop it, run setup again and take a new snapshot")
    if wal_status == "unreserved":
        return (f"slot {slot} is about to be invalidated (wal_status unreserved): "
                "max_slot_wal_keep_size is exceeded; see docs/operations.md#slots")
    if warn_bytes and safe is not None and safe < warn_bytes:
        return (f"slot {slot} is {human_bytes(safe)} from invalidation by "
                "max_slot_wal_keep_size (safe_wal_size < SLOT_WAL_WARN_BYTES)")
    if warn_bytes and retained is not None and retained >= warn_bytes:
        return (f"slot {slot} retains {human_bytes(retained)} of WAL "
                f"(SLOT_WAL_WARN_BYTES {human_bytes(warn_bytes)})")
    return ""


class SlotMonitor:
    """Samples ``slot`` every ``interval_s`` on its own thread until :meth:`stop`.

    It starts just before the engine opens its stream, so the first sample sees the slot
    inactive. Until a sample sees it active (for at most ``settle_s``) it samples every
    second: a starting engine would otherwise show "inactive" for a whole interval.
    """

    settle_s = 60.0

    def __init__(self, dsn: str, slot: str, warn_bytes: int, interval_s: float = 10.0, *,
                 publication: str = "", tables: Sequence[tuple[str, str]] = (),
                 on_unpublished: Callable[[list[str]], bool] | None = None,
                 on_widened: Callable[[dict[str, str]], bool] | None = None) -> None:
        self.dsn = dsn
        self.slot = slot
        #: The configured tables, checked to be still published ('' publication: not).
        self.publication = publication
        self.tables = list(tables)
        #: Called with the tables a sample finds newly unpublished; False: not handled
        #: yet, call again at the next sample.
        self.on_unpublished = on_unpublished
        self._unpublished: tuple[str, ...] = ()
        #: Called with the tables ('schema.table' → how) the publication widened since the
        #: last sample (publication.widenings); False: not handled yet, call again.
        self.on_widened = on_widened
        self._shapes: dict[str, PublishedShape] | None = None
        self.warn_bytes = warn_bytes
        self.interval_s = interval_s
        self._latest: SlotHealth | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: object = None

    @property
    def latest(self) -> SlotHealth | None:
        return self._latest

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbmazz-slot-health",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        settling_until = time.monotonic() + self.settle_s
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = SourceDatabase(self.dsn).connect("slot-health")
                self._latest = self.sample(conn)
                self._check_widened(conn)
            except (psycopg.Error, DbmazzError) as exc:
                previous = self._latest
                self._latest = SlotHealth(
                    self.slot, previous.exists if previous else False,
                    error=f"cannot sample slot {self.slot}: {exc}".strip(),
                    sampled_at=time.time())
                if conn is not None:
                    conn.close()
                conn = None
            self._log_warning()
            self._report_unpublished()
            latest = self._latest
            if latest is not None and latest.active:
                settling_until = 0.0
            settling = time.monotonic() < settling_until
            self._stop.wait(min(1.0, self.interval_s) if settling else self.interval_s)
        if conn is not None:
            conn.close()

    def sample(self, conn: psycopg.Connection) -> SlotHealth:
        rows = read_slots(conn, only=self.slot)
        if not rows:
            return SlotHealth(self.slot, False, warning=f"slot {self.slot} does not exist",
                              sampled_at=time.time())
        row = rows[0]
        gone = unpublished(conn, self.publication, self.tables) if self.publication else []
        missing = tuple(f"{s}.{t}" for s, t in gone)
        via_partitions = [f"{s}.{t}" for s, t in through_partitions(conn, self.publication,
                                                                      gone)] if gone else []
        warnings = (assess(self.slot, row.retained_bytes, row.wal_status, row.safe_wal_size,
                           self.warn_bytes),
                    unpublished_warning(self.publication, missing, via_partitions))
        return SlotHealth(
            self.slot, True, row.active, row.active_pid, row.retained_bytes, row.wal_status,
            row.safe_wal_size, missing, "; ".join(w for w in warnings if w),
            sampled_at=time.time())

    def _report_unpublished(self) -> None:
        latest = self._latest
        if latest is None or latest.error or not latest.exists:
            return  # not sampled: nothing known
        new = [t for t in latest.unpublished if t not in self._unpublished]
        handled = not new or self.on_unpublished is None or self.on_unpublished(new)
        self._unpublished = tuple(t for t in latest.unpublished if handled or t not in new)

    def _check_widened(self, conn: psycopg.Connection) -> None:
        try:
            self._report_widened(conn)
        except psycopg.Error as exc:  # the slot's sample stands; the next one compares again
            log.debug("cannot compare what publication %r publishes: %s", self.publication, exc)
        except Exception:  # a bug here must not end the slot's sampling
            log.exception("comparing what publication %r publishes failed", self.publication)

    def _report_widened(self, conn: psycopg.Connection) -> None:
        """Compare what the publication sends of the tables with the last sample's. The
        first sample is the baseline: a change before it (or while dbmazz was stopped) is
        not seen."""
        if not self.publication or self.on_widened is None:
            return
        shapes = published_shapes(conn, self.publication, self.tables)
        before = self._shapes
        widened = widenings(conn, before, shapes) if before is not None else {}
        if widened and before is not None and not self.on_widened(widened):
            # Not handled yet: the next sample compares those tables with their old shape
            # (or its absence: not published then).
            shapes = {t: shape for t, shape in shapes.items() if t not in widened}
            shapes.update({t: before[t] for t in widened if t in before})
        self._shapes = shapes

    def _log_warning(self) -> None:
        """Log a warning when one appears or changes its cause (not on every sample)."""
        latest = self._latest
        warning = latest.warning if latest is not None else ""
        cause = ((latest.wal_status or "", warning.split(" ")[2:4], latest.unpublished)
                 if latest is not None and warning else None)
        if cause is not None and cause != self._warned:
            log.warning("%s", warning)
        self._warned = cause
