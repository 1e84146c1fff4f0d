"""Micro-batching: raw WAL chunks → flushes of per-table work, cut at transaction ends.

The batcher looks at every message's type byte, the relation oid of Insert/Update/Delete
messages and the LSNs of Begin/Commit with numpy over a whole chunk; only the rare control
messages (Relation, Type, Truncate, logical Message, Origin) are handled one by one.

A :class:`Flush` closes when its rows or bytes reach ``FLUSH_ROWS``/``FLUSH_BYTES`` at a
commit, or when :meth:`Batcher.poll` finds ``FLUSH_INTERVAL_MS`` elapsed — or the source
idle at the end of a backlog (flushes cut by size, the source never dry since): the end of
a backlog is loaded when it has been read, not an interval later, and a trickle still loads
once per interval. A transaction larger than the limits is cut into *split* flushes that
do not advance the durable LSN; its commit always ends a flush of its own, so the whole
transaction is loaded before its commit LSN can be confirmed (DESIGN.md §4, invariant 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dbmazz.errors import ProtocolError
from dbmazz.pipeline.batch import SchemaDelta, SplitPart
from dbmazz.pipeline.schema_cache import SchemaCache
from dbmazz.source import pgoutput
from dbmazz.source.chunk import WalChunk
from dbmazz.source.frames import be_u32_at, be_u64_at
from dbmazz.source.pgoutput import Relation

_B, _C, _I, _U, _D = (ord(c) for c in "BCIUD")
_CONTROL = frozenset(ord(c) for c in "RYTMO")
_IS_CONTROL = np.zeros(256, dtype=np.bool_)
_IS_CONTROL[list(_CONTROL)] = True
_IS_KNOWN = np.zeros(256, dtype=np.bool_)
_IS_KNOWN[[_B, _C, _I, _U, _D]] = True


@dataclass(slots=True)
class Slab:
    """Insert/Update/Delete messages of one chunk, in stream order."""

    data: npt.NDArray[np.uint8]
    starts: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    oids: npt.NDArray[np.uint32]
    commit_lsns: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nbytes(self) -> int:
        return int(self.sizes.sum())


@dataclass(slots=True)
class RowsStep:
    """Changes of one table under one relation shape: decode, merge, write."""

    relation: Relation
    slabs: list[Slab] = field(default_factory=list)  # each holds only this table's messages

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.slabs)


@dataclass(frozen=True, slots=True)
class TruncateStep:
    relation: Relation
    #: Commit LSN of the truncating transaction (labels and versions need one).
    lsn: int


@dataclass(frozen=True, slots=True)
class SchemaStep:
    delta: SchemaDelta
    relation: Relation


Step = RowsStep | TruncateStep | SchemaStep


@dataclass(slots=True)
class Flush:
    """Work for the sink: per table (by relation oid) an ordered list of steps."""

    seq: int
    steps: dict[int, list[Step]]
    #: Commit end LSN of the last whole transaction included: durable once every step of
    #: this flush and of all earlier flushes is applied. 0 for a split part.
    end_lsn: int
    rows: int
    nbytes: int
    #: For split parts of a large transaction: which part of which transaction.
    split: SplitPart | None = None


@dataclass(slots=True)
class _Control:
    oid: int
    step: TruncateStep | SchemaStep


@dataclass(slots=True)
class _Shape:
    """A Relation message: rows after it decode with this shape."""

    relation: Relation


Piece = Slab | _Control | _Shape


class Batcher:
    def __init__(
        self,
        schemas: SchemaCache,
        *,
        flush_rows: int,
        flush_bytes: int,
        flush_interval_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.schemas = schemas
        self.flush_rows = flush_rows
        self.flush_bytes = flush_bytes
        self.flush_interval_ms = flush_interval_ms
        self._clock = clock
        self._pieces: list[Piece] = []
        self._rows = 0
        self._bytes = 0
        # Position just after the last Commit among the pending pieces.
        self._committed_pieces = 0
        self._committed_rows = 0
        self._committed_bytes = 0
        self._committed_end_lsn = 0
        self._txn_lsn = 0  # commit LSN of the transaction in progress (from its Begin)
        self._in_txn = False
        self._split_part = 0  # parts already emitted of the open transaction
        self._split_lsn = 0  # commit LSN (from Begin) of the transaction being split
        self._split_oids: set[int] = set()  # tables touched by the parts emitted so far
        self._seq = 0
        self._cut_end_lsn = 0  # end LSN of the last committed flush emitted
        # Relation shape in effect at the first pending piece, per oid: rows decode with
        # the shape they were written under, even if a later Relation message changed it.
        self._shape_at_start: dict[int, Relation] = {}
        self._first_pending_at: float | None = None
        # A backlog is being read: a flush was cut by size, and the source has not run dry
        # since (later cuts by the interval keep it so). The committed rest goes as soon as
        # the source is idle, poll(idle=True). _dry: a read came back empty since the last
        # cut.
        self._full_batches = False
        self._dry = False
        #: Logical decoding messages seen (prefix → count), e.g. heartbeats.
        self.messages_seen: dict[str, int] = {}
        self.last_end_lsn = 0

    # ------------------------------------------------------------------ public
    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def add(self, chunk: WalChunk) -> list[Flush]:
        """Route one chunk; return the flushes it completed."""
        out: list[Flush] = []
        n = len(chunk)
        if n == 0:
            return out
        starts = chunk.starts
        kinds = chunk.data[starts]
        control = np.flatnonzero(_IS_CONTROL[kinds])
        begin = 0
        for idx in control.tolist():
            self._segments(chunk, starts, kinds, begin, idx, out)
            self._control(chunk.message(idx), int(chunk.lsns[idx]))
            begin = idx + 1
        self._segments(chunk, starts, kinds, begin, n, out)
        if self._first_pending_at is None and (self._rows or self._has_committed()):
            self._first_pending_at = self._clock()
        if out:
            self._full_batches = True
        return out

    def poll(self, *, idle: bool = False) -> list[Flush]:
        """Flush committed work older than ``FLUSH_INTERVAL_MS``; with ``idle`` (the source
        had nothing more to read) at once while a backlog is being read.

        A backlog is what follows a flush cut by size, for as long as the source does not
        run dry: its last, partial batch would otherwise wait up to an interval after the
        source has nothing more. A trickle never fills a flush, so its loads stay one per
        interval; a backlog gets at most one early load, the one that ends it.

        A commit with no rows (a heartbeat message, a transaction on other tables) is
        flushed too, so the durable LSN keeps moving while the tables are idle.
        """
        committed = self._has_committed()
        if idle and committed and self._full_batches:
            self._full_batches = False
            return [self._cut_committed()]
        self._dry = self._dry or idle
        if not committed:
            return []
        if self._first_pending_at is None:
            self._first_pending_at = self._clock()
        if (self._clock() - self._first_pending_at) * 1000 < self.flush_interval_ms:
            return []
        # A backlog slower than a flush per interval is still one until the source runs dry.
        self._full_batches = self._full_batches and not self._dry
        return [self._cut_committed()]

    def due_in(self) -> float | None:
        """Seconds until :meth:`poll` flushes (0 if it would now), None while nothing
        committed is pending: the longest the caller may wait for more input without
        making the committed work late."""
        if not self._has_committed():
            return None
        if self._first_pending_at is None:
            return self.flush_interval_ms / 1000
        age = self._clock() - self._first_pending_at
        return max(0.0, self.flush_interval_ms / 1000 - age)

    def drain(self) -> list[Flush]:
        """Flush every committed change now (stop/drain); an open transaction stays."""
        return [self._cut_committed()] if self._has_committed() else []

    def _has_committed(self) -> bool:
        return self._committed_pieces > 0 or self._committed_end_lsn > self._cut_end_lsn

    # ------------------------------------------------------------------ internals
    def _segments(
        self,
        chunk: WalChunk,
        starts: npt.NDArray[np.int64],
        kinds: npt.NDArray[np.uint8],
        lo: int,
        hi: int,
        out: list[Flush],
    ) -> None:
        """Route messages ``[lo, hi)`` (no control message among them).

        A transaction larger than the limits is split whether or not it arrives whole in
        one chunk: how much one read holds depends on how far the reader is behind the
        walsender (a few KB, or megabytes when it lags), and a committed streamed
        transaction comes as one piece. So the range is cut right after the Begin of every
        such transaction; the rest then starts inside it, the case :meth:`_segment` splits.
        """
        for cut in self._big_transaction_cuts(chunk, starts, kinds, lo, hi):
            self._segment(chunk, starts, kinds, lo, cut, out)
            lo = cut
        self._segment(chunk, starts, kinds, lo, hi, out)

    def _big_transaction_cuts(
        self,
        chunk: WalChunk,
        starts: npt.NDArray[np.int64],
        kinds: npt.NDArray[np.uint8],
        lo: int,
        hi: int,
    ) -> list[int]:
        """Positions just after the Begin of each transaction wholly inside ``[lo, hi)``
        whose changes exceed ``flush_rows`` or ``flush_bytes`` (vectorized)."""
        k = kinds[lo:hi]
        begin_at = np.flatnonzero(k == _B)
        if not len(begin_at):
            return []
        commit_at = np.flatnonzero(k == _C)
        closing = np.searchsorted(commit_at, begin_at)
        whole = closing < len(commit_at)
        begin_at, commit_at = begin_at[whole], commit_at[closing[whole]]
        if not len(begin_at):
            return []
        is_dml = (k == _I) | (k == _U) | (k == _D)
        rows = np.concatenate(([0], np.cumsum(is_dml)))
        sizes = np.where(is_dml, chunk.message_ends[lo:hi] - starts[lo:hi], 0)
        nbytes = np.concatenate(([0], np.cumsum(sizes)))
        big = ((rows[commit_at] - rows[begin_at] > self.flush_rows)
               | (nbytes[commit_at] - nbytes[begin_at] > self.flush_bytes))
        return (begin_at[big] + lo + 1).tolist()

    def _segment(
        self,
        chunk: WalChunk,
        starts: npt.NDArray[np.int64],
        kinds: npt.NDArray[np.uint8],
        lo: int,
        hi: int,
        out: list[Flush],
    ) -> None:
        if lo >= hi:
            return
        k = kinds[lo:hi]
        st = starts[lo:hi]
        known = _IS_KNOWN[k]
        if not known.all():
            bad = int(np.flatnonzero(~known)[0])
            raise ProtocolError(
                f"unexpected pgoutput message type {chr(int(k[bad]))!r} (byte 0x{int(k[bad]):02x})"
                f" at LSN {int(chunk.lsns[lo + bad])}",
                "the stream may use a protocol version dbmazz does not support; use "
                "PGOUTPUT_PROTOCOL auto or 1-4",
            )
        is_begin = k == _B
        is_dml = (k == _I) | (k == _U) | (k == _D)
        # Commit LSN of the enclosing transaction for every message: forward-fill Begins.
        begin_lsn = np.zeros(len(k), dtype=np.uint64)
        begin_at = np.flatnonzero(is_begin)
        if len(begin_at):
            begin_lsn[begin_at] = be_u64_at(chunk.data, st[begin_at] + 1)
        owner = np.where(is_begin, np.arange(len(k)), -1)
        np.maximum.accumulate(owner, out=owner)
        txn_lsn = np.where(owner >= 0, begin_lsn[np.maximum(owner, 0)], np.uint64(self._txn_lsn))

        dml_at = np.flatnonzero(is_dml)
        sizes = (chunk.message_ends[lo:hi] - st)[dml_at]
        slab = Slab(
            data=chunk.data,
            starts=st[dml_at],
            sizes=sizes.astype(np.int64),
            oids=be_u32_at(chunk.data, st[dml_at] + 1),
            commit_lsns=txn_lsn[dml_at],
        )
        commit_at = np.flatnonzero(k == _C)
        # DML messages of this segment before each commit, and the commit end LSNs.
        dml_before = np.cumsum(is_dml)[commit_at] if len(commit_at) else np.zeros(0, np.int64)
        end_lsns = be_u64_at(chunk.data, st[commit_at] + 10)
        last_kind = int(k[np.flatnonzero(is_begin | (k == _C))[-1]]) if (
            is_begin.any() or len(commit_at)) else None
        taken = 0  # DML of this slab already moved into pieces
        j = 0
        if len(commit_at) and self._in_txn:
            # The segment starts inside a transaction begun earlier: split its rows before
            # the commit too when they reach a limit (a part never exceeds the limits).
            taken = self._split_open(slab, 0, int(dml_before[0]), out, commit_follows=True)
        if len(commit_at) and self._split_part:
            # The commit of a split transaction ends its own flush: all parts loaded
            # before the commit LSN may be confirmed.
            upto = int(dml_before[0])
            self._push(_slice(slab, taken, upto))
            taken = upto
            self._mark_commit(int(end_lsns[0]))
            out.append(self._cut_committed())
            j = 1
        if j < len(commit_at):
            # Commits are handled in runs, not one by one: a run ends at the first commit
            # where the pending rows or bytes reach a limit (cut there), or at the last one.
            cum_bytes = np.concatenate(([0], np.cumsum(slab.sizes)))
            bytes_before = cum_bytes[dml_before]
            while j < len(commit_at):
                # Pending after pushing DML [taken, upto): rows + upto - taken, and bytes
                # likewise; find the first commit where either reaches its limit.
                at_rows = np.searchsorted(dml_before[j:], self.flush_rows - self._rows + taken)
                at_bytes = np.searchsorted(
                    bytes_before[j:], self.flush_bytes - self._bytes + int(cum_bytes[taken]))
                c = j + int(min(at_rows, at_bytes))
                cut = c < len(commit_at)
                if not cut:
                    c = len(commit_at) - 1
                upto = int(dml_before[c])
                self._push(_slice(slab, taken, upto))
                taken = upto
                self._mark_commit(int(end_lsns[c]))
                if cut:
                    out.append(self._cut_committed())
                j = c + 1
        if last_kind is not None:
            self._in_txn = last_kind == _B
        if len(begin_at):
            # Only now: a part cut above for the transaction begun in an earlier segment
            # must carry that transaction's commit LSN, not the next one's.
            self._txn_lsn = int(begin_lsn[begin_at[-1]])
        if self._in_txn:
            # The rest belongs to the open transaction.
            taken = self._split_open(slab, taken, len(slab), out)
        self._push(_slice(slab, taken, len(slab)))

    def _split_open(self, slab: Slab, taken: int, end: int, out: list[Flush], *,
                    commit_follows: bool = False) -> int:
        """Cut DML ``[taken, end)`` of the open transaction into split parts exactly where
        the pending rows or bytes reach a limit (however large the chunk); returns how far
        it pushed. The rest stays for the caller to push. With ``commit_follows`` (its
        commit is at ``end``) a part is cut only if more of the transaction follows it: a
        transaction within the limits is never split."""
        if taken >= end:
            return taken
        cum = np.concatenate(([0], np.cumsum(slab.sizes[taken:end])))
        base = taken
        while True:
            need_rows = max(1, self.flush_rows - (self._rows - self._committed_rows))
            need_bytes = self.flush_bytes - (self._bytes - self._committed_bytes)
            by_bytes = int(np.searchsorted(cum, int(cum[taken - base]) + need_bytes))
            upto = min(taken + need_rows, base + max(by_bytes, taken - base + 1))
            if upto > end or (commit_follows and upto == end):
                return taken
            self._push(_slice(slab, taken, upto))
            taken = upto
            if self._committed_pieces:
                out.append(self._cut_committed())
            out.append(self._cut_split())

    def _control(self, message: bytes, lsn: int) -> None:
        parsed = pgoutput.parse_message(message, lsn=lsn)
        if isinstance(parsed, Relation):
            self._pieces.append(_Shape(parsed))
            delta = self.schemas.on_relation(parsed, self._txn_lsn)
            if delta is not None and (delta.before is None or not delta.is_empty):
                self._pieces.append(_Control(parsed.oid, SchemaStep(delta, parsed)))
        elif isinstance(parsed, pgoutput.Type):
            self.schemas.types.add_type_message(parsed.oid, parsed.namespace, parsed.name)
        elif isinstance(parsed, pgoutput.Truncate):
            for oid in parsed.relation_oids:
                self._pieces.append(
                    _Control(oid, TruncateStep(self.schemas.relation(oid), self._txn_lsn))
                )
        elif isinstance(parsed, pgoutput.LogicalMessage):
            self.messages_seen[parsed.prefix] = self.messages_seen.get(parsed.prefix, 0) + 1

    def _push(self, slab: Slab) -> None:
        if len(slab):
            self._pieces.append(slab)
            self._rows += len(slab)
            self._bytes += slab.nbytes

    def _mark_commit(self, end_lsn: int) -> None:
        self._committed_pieces = len(self._pieces)
        self._committed_rows = self._rows
        self._committed_bytes = self._bytes
        self._committed_end_lsn = end_lsn
        self.last_end_lsn = end_lsn

    def _cut_committed(self) -> Flush:
        pieces = self._pieces[: self._committed_pieces]
        self._pieces = self._pieces[self._committed_pieces :]
        split = SplitPart(self._split_lsn, self._split_part, True) if self._split_part else None
        flush = self._build(pieces, self._committed_end_lsn, self._committed_rows,
                            self._committed_bytes, split)
        if split is not None:
            # Every table of the split transaction hears about its last part, even one with
            # no rows in it: the sink commits that table's open target transaction then.
            for oid in self._split_oids - flush.steps.keys():
                flush.steps[oid] = [RowsStep(self._shape_at_start[oid])]
            self._split_oids = set()
        self._cut_end_lsn = self._committed_end_lsn
        self._rows -= self._committed_rows
        self._bytes -= self._committed_bytes
        self._committed_pieces = self._committed_rows = self._committed_bytes = 0
        self._split_part = 0
        self._first_pending_at = self._clock() if self._rows else None
        self._dry = False
        return flush

    def _cut_split(self) -> Flush:
        pieces, self._pieces = self._pieces, []
        if self._split_part == 0:
            self._split_lsn = self._txn_lsn
        flush = self._build(pieces, 0, self._rows, self._bytes,
                            SplitPart(self._split_lsn, self._split_part, False))
        self._split_oids.update(flush.steps)
        self._split_part += 1
        self._rows = self._bytes = 0
        self._first_pending_at = None
        self._dry = False
        return flush

    def _build(
        self,
        pieces: list[Piece],
        end_lsn: int,
        rows: int,
        nbytes: int,
        split: SplitPart | None,
    ) -> Flush:
        steps: dict[int, list[Step]] = {}
        shape = self._shape_at_start
        for piece in _coalesce(pieces):
            if isinstance(piece, _Shape):
                shape[piece.relation.oid] = piece.relation
                continue
            if isinstance(piece, _Control):
                steps.setdefault(piece.oid, []).append(piece.step)
                if isinstance(piece.step, SchemaStep):
                    shape[piece.oid] = piece.step.relation
                continue
            order = np.argsort(piece.oids, kind="stable")
            oids_sorted = piece.oids[order]
            bounds = np.flatnonzero(np.diff(oids_sorted)) + 1
            for group in np.split(order, bounds):
                oid = int(piece.oids[group[0]])
                table_steps = steps.setdefault(oid, [])
                # A new shape starts a new step even when no SchemaStep came with it (a
                # column dropped and added again under its name moves to the end: same
                # names and types, another order), so rows decode with their own shape.
                if (not table_steps or not isinstance(table_steps[-1], RowsStep)
                        or table_steps[-1].relation != shape[oid]):
                    table_steps.append(RowsStep(shape[oid]))
                step = table_steps[-1]
                assert isinstance(step, RowsStep)
                step.slabs.append(
                    Slab(piece.data, piece.starts[group], piece.sizes[group], piece.oids[group],
                         piece.commit_lsns[group])
                )
        self._seq += 1
        return Flush(seq=self._seq, steps=steps, end_lsn=end_lsn, rows=rows, nbytes=nbytes,
                     split=split)


_NO_ROWS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint32),
            np.zeros(0, np.uint64))


def join_slabs(slabs: Sequence[Slab]) -> Slab:
    """The messages of ``slabs``, in order, as one slab over one new contiguous buffer.

    A step gathers one slab per chunk, and the reader's chunks are small when messages
    trickle in; decoding them in one call instead of one call per chunk saves the decoder's
    fixed cost per call. A slab whose messages fill most of the range between its first and
    last message is copied as that range (Begin/Commit and other tables' messages in between
    come along, unused); a sparse one is copied run by run of adjacent messages.
    """
    slabs = [s for s in slabs if len(s)]
    if len(slabs) <= 1:
        return slabs[0] if slabs else Slab(np.zeros(0, np.uint8), *_NO_ROWS)
    pieces: list[npt.NDArray[np.uint8]] = []
    starts: list[npt.NDArray[np.int64]] = []
    offset = 0
    for slab in slabs:
        ends = slab.starts + slab.sizes
        lo, hi = int(slab.starts[0]), int(ends[-1])
        # Dense: other messages and frame headers (30 bytes a message from the socket
        # reader) take at most a few times the slab's own bytes.
        if hi - lo <= 4 * int(slab.sizes.sum()):
            pieces.append(slab.data[lo:hi])
            starts.append(slab.starts - lo + offset)
            offset += hi - lo
            continue
        breaks = np.flatnonzero(slab.starts[1:] != ends[:-1]) + 1
        first = np.concatenate(([0], breaks))
        last = np.concatenate((breaks, [len(slab)])) - 1
        run_lo, run_hi = slab.starts[first], ends[last]
        lengths = run_hi - run_lo
        placed = offset + np.concatenate(([0], np.cumsum(lengths)[:-1]))
        if len(run_lo) > 64:
            # Many short runs: one gather by byte index instead of a slice per run.
            total = int(lengths.sum())
            index = np.repeat(run_lo - (placed - offset), lengths) + np.arange(total)
            pieces.append(slab.data[index])
        else:
            pieces.extend(slab.data[a:b] for a, b in zip(run_lo.tolist(), run_hi.tolist(),
                                                         strict=True))
        starts.append(slab.starts + np.repeat(placed - run_lo, last - first + 1))
        offset += int(lengths.sum())
    return Slab(
        np.concatenate(pieces) if pieces else np.zeros(0, np.uint8),
        np.concatenate(starts),
        np.concatenate([s.sizes for s in slabs]),
        np.concatenate([s.oids for s in slabs]),
        np.concatenate([s.commit_lsns for s in slabs]),
    )


def _coalesce(pieces: list[Piece]) -> list[Piece]:
    """Join adjacent slabs of one chunk (one per committed transaction) into one, so a
    chunk of many small transactions is decoded in one call, not one call per transaction."""
    out: list[Piece] = []
    run: list[Slab] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(Slab(run[0].data,
                            np.concatenate([s.starts for s in run]),
                            np.concatenate([s.sizes for s in run]),
                            np.concatenate([s.oids for s in run]),
                            np.concatenate([s.commit_lsns for s in run])))
        run.clear()

    for piece in pieces:
        if isinstance(piece, Slab):
            if run and piece.data is not run[-1].data:
                close_run()
            run.append(piece)
        else:
            close_run()
            out.append(piece)
    close_run()
    return out


def _slice(slab: Slab, lo: int, hi: int) -> Slab:
    return Slab(slab.data, slab.starts[lo:hi], slab.sizes[lo:hi], slab.oids[lo:hi],
                slab.commit_lsns[lo:hi])
