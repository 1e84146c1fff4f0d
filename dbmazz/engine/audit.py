"""Opt-in audit journal of acknowledgements and confirmations (``DBMAZZ_AUDIT_LOG=path``).

A test and diagnosis tool: with the variable set, the engine appends one JSON line per
sink acknowledgement and one per confirmation, each written and fsynced *before* the
engine goes on (an ack line after ``Sink.write`` returned, a confirm line before the
checkpoint is written and the LSN is handed to PostgreSQL). Reading the file after a crash
therefore shows, in order, what the sink had acknowledged when each LSN was confirmed,
which is what the reliability suite checks invariant 1 against.

Lines (``pid`` tells the runs of a restarted process apart, ``t`` is the unix time):

* ``{"k": "start", "pid": …}`` when a process opens the journal;
* ``{"k": "ack", "pid": …, "table": "schema.table", "lsns": [commit LSN, …],
  "split": null | [commit LSN, part index, last part?]}`` — the sink durably holds the
  listed transactions' changes of that table (a split part other than the last is not
  durable on its own: readers count a split transaction once its last part is acked);
* ``{"k": "confirm", "pid": …, "lsn": end LSN}`` — about to checkpoint and confirm (a stop
  while the checkpoint cannot be written leaves that LSN unconfirmed).

Off by default; costs one fsync per line when on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbmazz.pipeline.batch import SplitPart

ENV = "DBMAZZ_AUDIT_LOG"


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # A leading newline ends a line a killed predecessor may have left half written.
        self._write({"k": "start"}, lead="\n")

    def ack(self, table: str, lsns: Iterable[int],
            split: SplitPart | None = None) -> None:
        self._write({"k": "ack", "table": table, "lsns": sorted({int(x) for x in lsns}),
                     "split": [split.commit_lsn, split.index, split.last] if split else None})

    def confirm(self, lsn: int) -> None:
        self._write({"k": "confirm", "lsn": int(lsn)})

    def _write(self, record: dict[str, object], lead: str = "") -> None:
        line = lead + json.dumps({**record, "pid": self._pid, "t": round(time.time(), 4)},
                                 separators=(",", ":")) + "\n"
        with self._lock:
            os.write(self._fd, line.encode())
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def audit_from_env() -> AuditLog | None:
    path = os.environ.get(ENV)
    return AuditLog(path) if path else None
