"""PostgreSQL 14's empty transactions, out of the stream even when a read splits one.

PostgreSQL 14 sends every transaction of the database as at least Begin + Commit, published
changes or not; 15+ skips the empty ones. :func:`~dbmazz.source.protocol.drop_empty_transactions`
removes the pairs inside one chunk; a pair a read splits in two (the chunk ends with the
Begin, the next starts with its Commit) would still reach the pipeline, be flushed and
checkpointed, and the checkpoint write is itself such a transaction. So a chunk's trailing
Begin is held back until the next read shows what follows it: its Commit (both go), or a
change (the Begin is delivered first, then that read). While a Begin is held the stream
must not move the slot past it (:attr:`EmptyTransactionFilter.holding`).
"""

from __future__ import annotations

from collections.abc import Callable

from dbmazz.source.chunk import WalChunk
from dbmazz.source.protocol import BEGIN, COMMIT, drop_empty_transactions


class EmptyTransactionFilter:
    """Stateful over one stream: call :meth:`next` for every chunk the stream hands out."""

    def __init__(self) -> None:
        self._held: WalChunk | None = None  # a trailing Begin, waiting for the next read
        self._due: WalChunk | None = None  # a read that follows a delivered held Begin

    @property
    def holding(self) -> bool:
        """A Begin was read but not handed out: the transaction it opens is not delivered."""
        return self._held is not None

    def next(self, read: Callable[[], WalChunk | None]) -> WalChunk | None:
        """The next chunk to hand out, calling ``read`` for more when nothing is due."""
        chunk, self._due = self._due, None
        if chunk is None:
            chunk = read()
            if chunk is None:
                return None
            if self._held is not None:
                if _kind(chunk, 0) == COMMIT:  # the held Begin's own Commit: both go
                    self._held = None
                    chunk = chunk.part(1, len(chunk)) if len(chunk) > 1 else None
                    if chunk is None:
                        return None
                else:
                    held, self._held = self._held, None
                    self._due = chunk
                    return held
        kept = drop_empty_transactions(chunk)
        if kept is None:
            return None
        last = len(kept) - 1
        if _kind(kept, last) == BEGIN:
            self._held = kept.part(last, last + 1)
            return kept.part(0, last) if last else None
        return kept


def _kind(chunk: WalChunk, i: int) -> int:
    return int(chunk.data[chunk.starts[i]])
