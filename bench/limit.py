"""The limit consumer: the least a logical replication client can do, for benchmarks.

It speaks the PostgreSQL wire protocol itself (startup, SCRAM-SHA-256 or trust, optional
TLS through ``SSLRequest``, records decrypted from memory BIOs fed by large socket reads),
starts ``START_REPLICATION … LOGICAL`` (pgoutput), then reads
the socket in large coalesced reads (``--bufsize``, 8 MiB by default; optionally with a
receive low-water mark like dbmazz's reader), walks the CopyData frame headers only to count
XLogData messages and answer keepalives, and sends a standby status update (flush = last
received position) every second. Nothing is decoded or kept: its drain rate is the physical
limit a consumer can reach on a source, and its CPU per change the floor of reading.

Used by bench/e2e.py as a child contender (``run(...)`` returns the timings).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import resource
import select
import socket
import ssl
import struct
import time
from typing import Any

from psycopg.conninfo import conninfo_to_dict

_I32 = struct.Struct("!i")
_STATUS = struct.Struct("!cQQQqB")
_PG_EPOCH_US = 946_684_800_000_000


class Wire:
    """A blocking PostgreSQL protocol connection on a plain or TLS socket."""

    def __init__(self, dsn: str, *, replication: bool = True) -> None:
        info = conninfo_to_dict(dsn)
        self.password = str(info.get("password", ""))
        sock = socket.create_connection((str(info.get("host", "127.0.0.1")),
                                         int(info.get("port", 5432) or 5432)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = str(info.get("sslmode", "disable")) in ("require", "verify-ca", "verify-full")
        if self.tls:
            sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
            if sock.recv(1) != b"S":
                raise RuntimeError("the server refused TLS")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # sslmode=require: encrypted, not verified
            # TLS over memory BIOs: the socket is read in large reads and the records
            # decrypted from memory. The walsender sends one record per message, and an
            # SSL socket would make two recv() calls per record.
            self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = ctx.wrap_bio(self._in, self._out)
            self._raw = bytearray(4 << 20)
        self.sock: socket.socket = sock
        self._buf = b""
        if self.tls:
            self._handshake()
        params = {"user": str(info.get("user", "postgres")),
                  "database": str(info.get("dbname", "postgres"))}
        if replication:
            params["replication"] = "database"
        body = struct.pack("!i", 196608) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        self.sendall(_I32.pack(len(body) + 4) + body)
        self._authenticate()
        while True:  # ParameterStatus, BackendKeyData, … until ReadyForQuery
            kind, _ = self.message()
            if kind == b"Z":
                break

    # -- transport ------------------------------------------------------------------
    def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_out()
                data = self.sock.recv(65536)
                if not data:
                    raise RuntimeError("server closed the connection during TLS") from None
                self._in.write(data)
        self._flush_out()

    def _flush_out(self) -> None:
        if pending := self._out.read():
            self.sock.sendall(pending)

    def sendall(self, data: bytes) -> None:
        if self.tls:
            self._tls.write(data)
            self._flush_out()
        else:
            self.sock.sendall(data)

    def recv_into(self, view: memoryview) -> int:
        """Blocking: at least one byte (0 at EOF), as much as one socket read brings."""
        if not self.tls:
            return self.sock.recv_into(view)
        got = 0
        while not got:
            n = self.sock.recv_into(self._raw)
            if not n:
                return 0
            self._in.write(memoryview(self._raw)[:n])
            while got < len(view):
                try:
                    got += self._tls.read(len(view) - got, view[got:])
                except ssl.SSLWantReadError:
                    break
        return got

    # -- framing (startup phase only; streaming reads the socket itself) -------------
    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = bytearray(max(65536, n))
            got = self.recv_into(memoryview(chunk))
            if not got:
                raise RuntimeError("server closed the connection")
            self._buf += bytes(chunk[:got])
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def message(self) -> tuple[bytes, bytes]:
        head = self._recv_exact(5)
        (length,) = _I32.unpack_from(head, 1)
        body = self._recv_exact(length - 4)
        if head[:1] == b"E":
            raise RuntimeError(f"server error: {body!r}")
        return head[:1], body

    def send(self, kind: bytes, body: bytes) -> None:
        self.sendall(kind + _I32.pack(len(body) + 4) + body)

    def query(self, sql: str) -> str:
        """The first column of the first row of a simple query (startup phase only)."""
        self.send(b"Q", sql.encode() + b"\0")
        value = ""
        while True:
            kind, body = self.message()
            if kind == b"D" and not value:
                (size,) = _I32.unpack_from(body, 2)
                value = body[6:6 + size].decode()
            elif kind == b"Z":
                return value

    def _authenticate(self) -> None:
        _, body = self.message()
        (code,) = _I32.unpack_from(body)
        if code == 0:
            return
        if code != 10:
            raise RuntimeError(f"unsupported authentication request {code}")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self.send(b"p", b"SCRAM-SHA-256\0" + _I32.pack(len(first)) + first)
        _, body = self.message()
        server_first = body[4:].decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(),
                                     base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={fields['r']}"
        auth_message = f"{first_bare},{server_first},{final_bare}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.send(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
        self.message()  # SASLFinal (the server's signature is not checked: a benchmark)
        _, body = self.message()  # AuthenticationOk
        if _I32.unpack_from(body)[0] != 0:
            raise RuntimeError("authentication failed")


def _status(lsn: int) -> bytes:
    now = int(time.time() * 1e6) - _PG_EPOCH_US
    payload = _STATUS.pack(b"r", lsn, lsn, lsn, now, 0)
    return b"d" + _I32.pack(len(payload) + 4) + payload


#: How long a read waits for the low-water mark before taking what is there (dbmazz's
#: socket reader waits the same slice).
_WAIT_SLICE_S = 0.02


#: The highest pgoutput protocol of each server version (PostgreSQL 14: 2, 15: 3, 16: 4),
#: kept here rather than imported from dbmazz: this consumer stays independent of it.
_PROTOCOL_SINCE = ((160000, 4), (150000, 3), (140000, 2))


def run(dsn: str, slot: str, publication: str, end: int, *, bufsize: int = 8 << 20,
        low_water: int = 0, proto: str = "1") -> dict[str, Any]:
    """Drain ``slot`` until the first message past ``end``; return timings and counts.

    ``proto``: the pgoutput protocol, or ``auto`` for the server's highest; 2 and 3 stream
    in-progress transactions (``streaming 'on'``), 4 ``streaming 'parallel'`` — as dbmazz
    asks for them, so both receive the same messages."""
    wire = Wire(dsn)
    version = int(wire.query("SHOW server_version_num"))
    protocol = (next((p for since, p in _PROTOCOL_SINCE if version >= since), 1)
                if proto == "auto" else int(proto))
    sock = wire.sock
    started = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    streaming = {1: "", 2: ", streaming 'on'", 3: ", streaming 'on'",
                 4: ", streaming 'parallel'"}[protocol]
    wire.send(b"Q", f"START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '{protocol}', "
                    f"publication_names '{publication}'{streaming})\0".encode())
    while True:
        kind, _ = wire.message()
        if kind == b"W":
            break
    # As dbmazz's reader: a wait for the low-water mark lasts one slice at most, then
    # whatever is there is taken (the backlog's tail may never reach the mark).
    waiter = None
    if low_water and not wire.tls:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low_water)
        waiter = select.poll()
        waiter.register(sock, select.POLLIN)
    buf = bytearray(bufsize)
    view = memoryview(buf)
    have = len(wire._buf)
    buf[:have] = wire._buf
    messages = keepalives = reads = 0
    last_lsn = 0
    last_status = time.monotonic()
    unpack_i32 = _I32.unpack_from
    done = False
    while not done:
        if waiter is not None and not waiter.poll(_WAIT_SLICE_S * 1000):
            try:
                n = sock.recv_into(view[have:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = None  # nothing yet: a status update if one is due, then wait again
        else:
            n = wire.recv_into(view[have:])
        if n == 0:
            raise RuntimeError("server closed the stream")
        if n:
            have += n
            reads += 1
        pos = 0
        last_w = -1
        while pos + 5 <= have:
            (length,) = unpack_i32(buf, pos + 1)
            stop = pos + 1 + length
            if stop > have:
                break
            inner = buf[pos + 5]
            if inner == 0x77:  # 'w' XLogData
                messages += 1
                last_w = pos
            elif inner == 0x6B:  # 'k' keepalive: answer when asked
                keepalives += 1
                if buf[pos + 22]:
                    wire.sendall(_status(last_lsn))
            pos = stop
        if last_w >= 0:
            last_lsn = int.from_bytes(buf[last_w + 6:last_w + 14], "big")
            done = last_lsn > end
        if pos:
            buf[:have - pos] = buf[pos:have]
            have -= pos
        now = time.monotonic()
        if now - last_status >= 1.0:
            wire.sendall(_status(last_lsn))
            last_status = now
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wire.sendall(_status(last_lsn))
    sock.close()
    return {"stream_s": wall,
            "stream_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
            "x_messages": messages, "x_reads": reads, "x_keepalives": keepalives,
            "x_tls": wire.tls, "x_proto": protocol}
