"""Capture files: the replication stream recorded as an Arrow IPC stream (DESIGN §3).

Schema ``{lsn: uint64, payload: binary}`` (:data:`~dbmazz.source.chunk.CAPTURE_SCHEMA`),
one row per pgoutput message (streamed transactions already re-assembled, as the reader
delivers them), one record batch per chunk. Schema metadata:

``dbmazz.capture.version``  ``"1"``
``dbmazz.proto_version``    pgoutput protocol version of the payloads
``dbmazz.publication``      publication the stream was read with
``dbmazz.primary_keys``     JSON ``{"schema.table": [key columns]}`` so replay needs no
                            database

Plain pyarrow reads it (``pa.ipc.open_stream(path).read_all()``). Capturing consumes the
slot, so it follows invariant 1 too: it confirms a transaction only once the file holding
its commit has been fsync'd.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import pyarrow as pa

from dbmazz.errors import CaptureFormatError
from dbmazz.lsn import format_lsn
from dbmazz.source.chunk import CAPTURE_SCHEMA, WalChunk
from dbmazz.source.database import SourceDatabase
from dbmazz.source.replication import ReplicationStream

CAPTURE_VERSION = "1"
META_VERSION = "dbmazz.capture.version"
META_PROTO = "dbmazz.proto_version"
META_PUBLICATION = "dbmazz.publication"
META_KEYS = "dbmazz.primary_keys"

_B, _C = ord("B"), ord("C")
#: Sync at most this often while data flows; confirmation waits for the sync.
_SYNC_INTERVAL_S = 0.5


@dataclass(frozen=True)
class CaptureMetadata:
    version: str
    proto_version: int
    publication: str
    primary_keys: dict[str, tuple[str, ...]]
    #: Every schema metadata entry, including the ones above.
    raw: dict[str, str] = field(default_factory=dict)


class CaptureWriter:
    """Append chunks to a capture file. ``sync()`` makes what was written durable."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        proto_version: int,
        publication: str,
        primary_keys: Mapping[str, Sequence[str]],
        compression: Literal["zstd", "lz4"] | None = "zstd",
        extra_metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        metadata = {
            **(extra_metadata or {}),
            META_VERSION: CAPTURE_VERSION,
            META_PROTO: str(proto_version),
            META_PUBLICATION: publication,
            META_KEYS: json.dumps(
                {table: list(cols) for table, cols in sorted(primary_keys.items())},
                ensure_ascii=False,
            ),
        }
        self.messages = 0
        self.payload_bytes = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        try:
            self._writer = pa.ipc.new_stream(
                self._file,
                CAPTURE_SCHEMA.with_metadata(metadata),
                options=pa.ipc.IpcWriteOptions(compression=compression),
            )
        except BaseException:
            self._file.close()
            raise
        self._closed = False

    def write(self, chunk: WalChunk) -> None:
        if len(chunk):
            self._writer.write_batch(chunk.to_arrow())
            self.messages += len(chunk)
            self.payload_bytes += chunk.payload_bytes

    def sync(self) -> None:
        """Flush and fsync: everything written so far survives a crash."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()  # writes the end-of-stream marker
            self.sync()
        finally:
            self._file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open(path: str | os.PathLike[str]) -> pa.ipc.RecordBatchStreamReader:
    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise CaptureFormatError(
            f"{path} is not an Arrow IPC stream: {exc}",
            "capture files are written by `dbmazz capture` (format: DESIGN §3)",
        ) from None
    schema = reader.schema
    names = set(schema.names)
    if not {"lsn", "payload"} <= names or not pa.types.is_unsigned_integer(
        schema.field("lsn").type
    ) or not (
        pa.types.is_binary(schema.field("payload").type)
        or pa.types.is_large_binary(schema.field("payload").type)
    ):
        raise CaptureFormatError(
            f"{path} has schema {schema.remove_metadata()}, not "
            "{lsn: uint64, payload: binary}",
            "capture files are written by `dbmazz capture` (format: DESIGN §3)",
        )
    return reader


def _metadata(path: str | os.PathLike[str], schema: pa.Schema) -> CaptureMetadata:
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    version = raw.get(META_VERSION, CAPTURE_VERSION)
    if version != CAPTURE_VERSION:
        raise CaptureFormatError(
            f"{path} is capture format version {version}; this dbmazz reads version "
            f"{CAPTURE_VERSION}",
            "replay it with the dbmazz version that wrote it",
        )
    try:
        keys = {t: tuple(c) for t, c in json.loads(raw.get(META_KEYS, "{}")).items()}
        proto = int(raw.get(META_PROTO, "1"))
    except (ValueError, AttributeError, TypeError) as exc:
        raise CaptureFormatError(f"{path} has invalid dbmazz metadata: {exc}") from None
    return CaptureMetadata(
        version=version,
        proto_version=proto,
        publication=raw.get(META_PUBLICATION, ""),
        primary_keys=keys,
        raw=raw,
    )


def capture_metadata(path: str | os.PathLike[str]) -> CaptureMetadata:
    """The file's metadata (missing optional entries get defaults)."""
    with _open(path) as reader:
        return _metadata(path, reader.schema)


def read_capture(path: str | os.PathLike[str]) -> pa.Table:
    """The whole capture as a table ``{lsn, payload}`` (with the schema metadata)."""
    with _open(path) as reader:
        try:
            return reader.read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise CaptureFormatError(f"{path} is truncated or corrupt: {exc}") from None


def iter_capture(path: str | os.PathLike[str]) -> Iterator[WalChunk]:
    """The capture as chunks, one per record batch, in file order.

    A file cut short by a crash yields its complete batches, then raises
    :class:`CaptureFormatError`.
    """
    with _open(path) as reader:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except (pa.ArrowInvalid, OSError) as exc:
                raise CaptureFormatError(f"{path} is truncated or corrupt: {exc}") from None
            yield WalChunk.from_arrow(batch)


# --------------------------------------------------------------------------------------
# Recording a live stream
# --------------------------------------------------------------------------------------

StopReason = Literal["until_lsn", "duration", "max_messages", "stopped", "interrupted"]


@dataclass
class CaptureSummary:
    path: Path
    messages: int = 0
    transactions: int = 0
    payload_bytes: int = 0
    first_lsn: int | None = None
    last_lsn: int | None = None
    #: End LSN of the last complete transaction in the file.
    last_commit_lsn: int | None = None
    #: What the slot was told is durable (≤ last_commit_lsn; the file was fsync'd first).
    confirmed_lsn: int | None = None
    stopped_because: StopReason = "stopped"
    elapsed_s: float = 0.0


def _publication_keys(dsn: str, publication: str) -> dict[str, tuple[str, ...]]:
    """Key columns (primary key, else replica identity index) of the published tables."""
    with SourceDatabase(dsn).connect("capture") as conn:
        rows = conn.execute(
            """
            SELECT pt.schemaname, pt.tablename,
                   coalesce(array_agg(a.attname::text ORDER BY k.ord)
                            FILTER (WHERE a.attname IS NOT NULL), '{}')
            FROM pg_publication_tables pt
            JOIN pg_namespace n ON n.nspname = pt.schemaname
            JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
            LEFT JOIN LATERAL (
                SELECT i.indkey FROM pg_index i
                WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)
                ORDER BY i.indisprimary DESC LIMIT 1
            ) ix ON true
            LEFT JOIN LATERAL unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                ON true
            LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
            WHERE pt.pubname = %s
            GROUP BY 1, 2
            """,
            (publication,),
        ).fetchall()
    return {f"{s}.{t}": tuple(cols) for s, t, cols in rows}


def _head(chunk: WalChunk, n: int) -> WalChunk:
    """The first ``n`` messages of a chunk (views, no copy)."""
    return chunk.head(n)


def capture(
    dsn: str,
    slot: str,
    publication: str,
    out: str | os.PathLike[str],
    *,
    until_lsn: int | None = None,
    duration_s: float | None = None,
    max_messages: int | None = None,
    proto_version: int = 1,
    messages: bool = True,
    binary: bool = False,
    start_lsn: int = 0,
    compression: Literal["zstd", "lz4"] | None = "zstd",
    should_stop: Callable[[], bool] | None = None,
) -> CaptureSummary:
    """Record the slot's stream into ``out`` until a limit is reached.

    Limits (any that is set ends the capture): ``until_lsn`` — every transaction committed
    at or before it is in the file (stops at a transaction boundary once the server has read
    that far); ``duration_s``; ``max_messages`` (exact count, possibly inside a
    transaction — the partial transaction is never confirmed); ``should_stop()`` returning
    True. Ctrl-C ends it too, leaving a valid file. With no limit it runs until stopped.
    """
    started = time.monotonic()
    summary = CaptureSummary(path=Path(out))
    keys = _publication_keys(dsn, publication)
    stream = ReplicationStream.open(
        dsn,
        slot,
        [publication],
        start_lsn,
        proto_version=proto_version,
        messages=messages,
        binary=binary,
        # Strict invariant 1: report only what the fsync'd file holds, never past it.
        advance_when_idle=False,
    )
    writer: CaptureWriter | None = None
    synced_commit: int | None = None
    try:
        writer = CaptureWriter(
            out,
            proto_version=proto_version,
            publication=publication,
            primary_keys=keys,
            compression=compression,
            extra_metadata={
                "dbmazz.slot": slot,
                "dbmazz.system_id": stream.system.system_id,
                "dbmazz.start_lsn": format_lsn(stream.durable_lsn),
            },
        )
        in_txn = False
        last_sync = time.monotonic()
        while True:
            now = time.monotonic()
            if duration_s is not None and now - started >= duration_s:
                summary.stopped_because = "duration"
                break
            if should_stop is not None and should_stop():
                summary.stopped_because = "stopped"
                break
            if (
                until_lsn is not None
                and not in_txn
                and max(stream.server_wal_end, summary.last_commit_lsn or 0) >= until_lsn
            ):
                summary.stopped_because = "until_lsn"
                break
            wait = 0.2 if duration_s is None else max(0.0, min(0.2, started + duration_s - now))
            chunk = stream.read_chunk(timeout_s=wait)
            if chunk is not None and len(chunk):
                if max_messages is not None and summary.messages + len(chunk) >= max_messages:
                    chunk = _head(chunk, max_messages - summary.messages)
                in_txn = _account(summary, chunk, in_txn)
                writer.write(chunk)
            if (
                summary.last_commit_lsn != synced_commit
                and time.monotonic() - last_sync >= _SYNC_INTERVAL_S
            ):
                writer.sync()
                last_sync = time.monotonic()
                synced_commit = summary.last_commit_lsn
                if synced_commit is not None:
                    stream.confirm(synced_commit)
            if max_messages is not None and summary.messages >= max_messages:
                summary.stopped_because = "max_messages"
                break
    except KeyboardInterrupt:
        summary.stopped_because = "interrupted"
    finally:
        try:
            if writer is not None:
                writer.close()  # fsyncs: every commit in the file is now durable
                if summary.last_commit_lsn is not None:
                    stream.confirm(summary.last_commit_lsn)
        finally:
            stream.close()
    summary.confirmed_lsn = stream.durable_lsn
    summary.elapsed_s = time.monotonic() - started
    return summary


def _account(summary: CaptureSummary, chunk: WalChunk, in_txn: bool) -> bool:
    """Update counters from a chunk (vectorized over its type bytes); → inside a txn?"""
    starts = chunk.starts
    types = chunk.data[starts]
    begins = np.flatnonzero(types == _B)
    commits = np.flatnonzero(types == _C)
    summary.messages += len(chunk)
    summary.payload_bytes += chunk.payload_bytes
    summary.transactions += len(commits)
    if summary.first_lsn is None:
        summary.first_lsn = int(chunk.lsns[0])
    summary.last_lsn = int(chunk.lsns[-1])
    if len(commits):
        at = int(starts[commits[-1]]) + 10  # 'C', flags, commit LSN, then end LSN
        summary.last_commit_lsn = int.from_bytes(chunk.data[at : at + 8].tobytes(), "big")
    if len(begins) or len(commits):
        last_b = int(begins[-1]) if len(begins) else -1
        last_c = int(commits[-1]) if len(commits) else -1
        return last_b > last_c
    return in_txn


class CaptureSource:
    """A capture file as a :class:`~dbmazz.engine.core.ChunkSource`: replays its chunks, then
    is exhausted (``dbmazz replay``)."""

    reads_socket = False
    server_wal_end = 0

    def __init__(self, chunks: Iterator[WalChunk]) -> None:
        self._chunks = chunks
        self.exhausted = False

    def read_chunk(self, max_bytes: int = 0, timeout_s: float = 0.0) -> WalChunk | None:
        if self.exhausted:
            return None
        chunk = next(self._chunks, None)
        if chunk is None:
            self.exhausted = True
        return chunk

    def confirm(self, lsn: int) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass
