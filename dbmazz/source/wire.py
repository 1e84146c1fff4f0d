"""The replication connection's socket, spoken to directly once streaming starts.

libpq connects and authenticates (and runs IDENTIFY_SYSTEM and the checks); from
``START_REPLICATION`` on, the reader sends and receives the backend protocol itself, so it
can take the walsender's bytes a few megabytes at a time (:mod:`dbmazz.source.frames`)
instead of one libpq call per message. libpq never sees those bytes: the query is written
to the socket here, its answer read here, and COPY is ended here before libpq closes the
connection — libpq's own state stays "idle" throughout, which is what it was.

Only for plain TCP or Unix-socket connections: with SSL the bytes on the socket are not
the protocol's; the socket reader then reads dbmazz's own TLS connection
(:mod:`dbmazz.source.tlswire`), another :class:`Wire`. GSS encryption stays with libpq.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Protocol

_LENGTH = struct.Struct(">I")
COPY_DONE = b"c\x00\x00\x00\x04"


@dataclass(frozen=True)
class ServerMessage:
    """One backend message read by :meth:`SocketWire.read_message`."""

    kind: int
    body: bytes


def error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body (code letter → text)."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        end = body.find(b"\x00", pos + 1)
        if end < 0:
            end = len(body)
        fields[code] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def copy_data(payload: bytes) -> bytes:
    """A CopyData message around ``payload``."""
    return b"d" + _LENGTH.pack(4 + len(payload)) + payload


def query_message(sql: str) -> bytes:
    """A simple-protocol Query message."""
    text = sql.encode() + b"\x00"
    return b"Q" + _LENGTH.pack(4 + len(text)) + text


#: Bytes the kernel gathers before waking the reader (TCP's SO_RCVLOWAT). Measured on the
#: end-to-end benchmark: 16–32 KiB wake too often, 256 KiB–1 MiB stall the walsender (Linux
#: clamps the receive window to the mark), 64 KiB was fastest for both sides.
LOW_WATER_BYTES = 64 << 10


class Wire(Protocol):
    """What the socket reader needs of a connection: the plain socket (:class:`SocketWire`)
    or dbmazz's own TLS connection (:class:`dbmazz.source.tlswire.TlsWire`)."""

    #: The reader's name for status: "socket" or "tls".
    name: str
    #: Bytes the kernel gathers before waking a wait (1: any).
    low_water: int

    def set_low_water(self, nbytes: int) -> None: ...

    def wait_readable(self, timeout_s: float) -> bool: ...

    def read_into(self, view: memoryview) -> int:
        """Protocol bytes into ``view`` (0: none available now); EOFError when closed."""

    def write_all(self, data: bytes, timeout_s: float = 30.0) -> None: ...

    def read_message(self, pending: bytearray, timeout_s: float) -> ServerMessage: ...

    def close(self) -> None:
        """Release the connection's resources (what the wire owns, nothing of libpq's)."""


def next_message(wire: Wire, pending: bytearray, timeout_s: float) -> ServerMessage:
    """The next whole message, reading into ``pending`` (bytes past the message stay
    there). TimeoutError when none completes in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    chunk = bytearray(64 << 10)
    while True:
        if len(pending) >= 5:
            (length,) = _LENGTH.unpack_from(pending, 1)
            if length < 4:
                raise ValueError(f"backend message {chr(pending[0])!r} has length {length}")
            if len(pending) >= 1 + length:
                message = ServerMessage(pending[0], bytes(pending[5 : 1 + length]))
                del pending[: 1 + length]
                return message
        got = wire.read_into(memoryview(chunk))
        if got:
            pending += chunk[:got]
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer from the server in {timeout_s:.0f} s")
        wire.wait_readable(remaining)


class SocketWire:
    """Non-blocking reads and writes on a connected backend socket (the fd stays libpq's).

    The walsender writes each message as it decodes it, so the socket fills a few hundred
    bytes at a time; waking for each would cost a system call and a split per message. A
    receive low-water mark makes ``poll`` wait until :data:`LOW_WATER_BYTES` are there (a
    read still returns whatever is there), and the caller bounds each wait, so a trickle is
    read at least every few milliseconds.
    """

    name = "socket"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.low_water = 1
        os.set_blocking(fd, False)  # libpq keeps its sockets non-blocking too
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def set_low_water(self, nbytes: int) -> None:
        """Only while streaming: a short answer (to a query, to CopyDone) would otherwise
        wait for a timeout."""
        self.low_water = nbytes
        # A second socket object on a duplicate descriptor: options belong to the socket,
        # and closing the duplicate leaves libpq's descriptor open.
        try:
            with socket.socket(fileno=os.dup(self.fd)) as sock:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except OSError:
            pass  # not supported here: the reader only wakes more often

    def wait_readable(self, timeout_s: float) -> bool:
        return bool(self._poll.poll(max(0.0, timeout_s * 1000)))

    def read_into(self, view: memoryview) -> int:
        """Bytes read into ``view`` (0: nothing available now). EOFError when closed."""
        try:
            got = os.readv(self.fd, [view])
        except BlockingIOError:
            return 0
        if got == 0:
            raise EOFError("the server closed the connection")
        return got

    def write_all(self, data: bytes, timeout_s: float = 30.0) -> None:
        """Write every byte (waits for room in the socket buffer, up to ``timeout_s``)."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        while view:
            try:
                sent = os.write(self.fd, view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the server did not accept data for "
                                       f"{timeout_s:.0f} s")
                select.select([], [self.fd], [], remaining)

    def read_message(self, pending: bytearray, timeout_s: float) -> ServerMessage:
        return next_message(self, pending, timeout_s)

    def close(self) -> None:
        """The descriptor is libpq's: only stop watching it."""
        self._poll.unregister(self.fd)
