"""A source transaction split across batches, loaded through the transaction interface.

Parts are loaded into open StarRocks transactions and prepared and committed only when the
part marked ``last`` arrives, so readers see all of the source transaction or nothing.

One StarRocks transaction takes one set of load headers, so when the shape of the rows
changes (another set of partial columns, deletes) the next *segment* begins: another
transaction of the same source transaction, labelled ``…-<lsn>-<lsn>-s<n>``. Segments hold
consecutive runs of the source order and are committed in order after all are prepared.

Idempotence: a write of the same part again (a retry, or another step of that part) loads
its rows again, which a Primary Key table absorbs (the rows of one part never conflict and
are the newest). Once the finish has begun (a segment is prepared) a repeated write only
completes the finish. On a replay after a crash a segment label found open (PREPARE/
PREPARED) is stale, rolled back and loaded again. One found committed is loaded again too,
under a label of its own: which rows a segment holds depends on where the transaction was
cut into parts (FLUSH_ROWS, FLUSH_BYTES may differ after a restart), so skipping it could
skip rows the earlier run never loaded. Loading committed rows again is harmless: the same
rows at the same version, every segment in source order.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from dbmazz.sink.starrocks.serialize import Body
from dbmazz.sink.starrocks.stream_load import StreamLoadClient, TransactionBroken

log = logging.getLogger("dbmazz.sink.starrocks")

Shape = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PlannedLoad:
    """One Stream Load of a batch: body plus every header except the label."""

    suffix: str
    body: Body
    headers: dict[str, str]

    @property
    def shape(self) -> Shape:
        return tuple(sorted(self.headers.items()))


@dataclass(slots=True)
class Segment:
    label: str
    shape: Shape
    #: open → prepared → committed, or rolled back ("closed").
    state: Literal["open", "prepared", "committed", "closed"]


class SplitTransaction:
    def __init__(
        self,
        client: StreamLoadClient,
        db: str,
        table: str,
        commit_lsn: int,
        label: Callable[[str], str],
        timeout_s: int,
        first_index: int = 0,
    ) -> None:
        self.client = client
        #: The part of the source transaction this table's rows began with.
        self.first_index = first_index
        self.db = db
        self.table = table
        self.commit_lsn = commit_lsn
        self._label = label
        self.timeout_s = timeout_s
        self.next_index = 0
        self.segments: list[Segment] = []
        #: Keys of the rows loaded by this transaction (invisible to reads until it
        #: commits): a read of one of them must be refused (see StarRocksSink.read_rows).
        self.touched: list[pa.Table] = []
        self._seq = 0
        self._truncates = 0

    @property
    def finishing(self) -> bool:
        return any(s.state == "prepared" for s in self.segments)

    @property
    def pending(self) -> bool:
        """Whether some loaded rows are not committed yet."""
        return any(s.state in ("open", "prepared") for s in self.segments)

    @property
    def labels(self) -> str:
        return ",".join(s.label for s in self.segments)

    def accepts(self, index: int) -> bool:
        """The same part again (a table with several steps in one flush) or any later one:
        a table skips the parts in which it has no rows."""
        return index >= self.next_index - 1

    def truncate_marker(self) -> str:
        """The label recording the next truncate of this transaction (deterministic)."""
        marker = self._label(f"t{self._truncates}")
        self._truncates += 1
        return marker

    def load_part(self, index: int, loads: Sequence[PlannedLoad]) -> int:
        """Load one part's rows; returns the bytes sent."""
        sent = 0
        for load in self._ordered(loads):
            self._load(load)
            sent += len(load.body.data)
        self.next_index = max(self.next_index, index + 1)
        return sent

    def _ordered(self, loads: Sequence[PlannedLoad]) -> list[PlannedLoad]:
        """Loads of one part share no key, so any order is right; one continuing the open
        segment goes first to save a transaction."""
        if not self.segments:
            return list(loads)
        shape = self.segments[-1].shape
        return sorted(loads, key=lambda load: load.shape != shape)

    def _load(self, load: PlannedLoad) -> None:
        segment = self.segments[-1] if self.segments else None
        if segment is None or segment.shape != load.shape or segment.state != "open":
            segment = self._begin(load.shape)
        self.client.txn_load(self.db, self.table, segment.label, load.body.data, load.headers)

    def _begin(self, shape: Shape) -> Segment:
        label = self._label(f"s{self._seq}")
        begun = self.client.txn_begin(self.db, self.table, label, self.timeout_s)
        if begun == "pending":
            # Left by a run that died before committing: its content is stale.
            self.client.txn_rollback(self.db, self.table, label)
            begun = self.client.txn_begin(self.db, self.table, label, self.timeout_s)
            if begun == "pending":
                raise TransactionBroken(f"label {label} is still held by a transaction", label)
        if begun == "finished":
            # Committed by an earlier run, perhaps with other rows (see the module doc).
            label = self._label(f"s{self._seq}r{secrets.token_hex(3)}")
            if self.client.txn_begin(self.db, self.table, label, self.timeout_s) != "new":
                raise TransactionBroken(f"label {label} could not begin a transaction", label)
            log.info("segment %d of transaction %s on %s was committed by an earlier run: "
                     "its rows load again as %s", self._seq, self.commit_lsn, self.table, label)
        self._seq += 1
        segment = Segment(label, shape, "open")
        self.segments.append(segment)
        return segment

    def finish(self) -> None:
        """Prepare every open segment, then commit them in order."""
        for segment in self.segments:
            if segment.state == "open":
                self.client.txn_prepare(self.db, self.table, segment.label)
                segment.state = "prepared"
        for segment in self.segments:
            if segment.state == "prepared":
                self.client.txn_commit(self.db, self.table, segment.label)
                segment.state = "committed"

    def abandon(self) -> None:
        """Roll back whatever is not committed (best effort)."""
        for segment in self.segments:
            if segment.state in ("open", "prepared"):
                self.client.txn_rollback(self.db, self.table, segment.label)
                segment.state = "closed"
