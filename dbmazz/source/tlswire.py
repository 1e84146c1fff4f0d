"""dbmazz's own TLS connection to the walsender, for the socket reader on encrypted sources.

libpq owns the TLS session of its connections, so over TLS the stream could only read one
CopyData frame per libpq call (one TLS record each: the walsender writes one per message).
This module opens a second replication connection with the parameters libpq resolved
(host address, port, user, database, password, sslmode and certificates) and speaks TLS
over memory BIOs: one large socket read feeds many records, decrypted in a tight loop
straight into the reader's receive buffer (:meth:`TlsWire.read_into`), then split like
plaintext (:mod:`dbmazz.source.frames`).

What it does not implement (GSS, SCRAM channel binding, CRLs, an encrypted client key,
``require_auth``, direct TLS negotiation, …) raises :class:`TlsWireUnavailable` before or
instead of a refusal, and the stream keeps libpq's reader on libpq's still-open connection.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg.pq.abc import PGconn

from dbmazz.errors import SourceConnectionError, SourceError
from dbmazz.source.connection import connect_error, fields_error
from dbmazz.source.wire import ServerMessage, error_fields, next_message

_LENGTH = struct.Struct(">I")
_SSL_REQUEST = struct.pack(">II", 8, 80877103)
_PROTOCOL_3 = 196608
_TERMINATE = b"X\x00\x00\x00\x04"
# Authentication request codes (the 'R' message's first Int32).
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5 = 0, 3, 5
_AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 10, 11, 12
#: One socket read's worth of ciphertext (the kernel rarely holds more at a 64 KiB mark).
_RAW_BUFFER = 1 << 20
#: Conninfo keywords whose non-empty value this module cannot honour the way libpq does.
_UNSUPPORTED_KEYS = ("sslcrl", "sslcrldir", "require_auth", "sslcertmode")
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsWireUnavailable(Exception):
    """This connection needs something the own TLS wire does not do; libpq reads instead.
    The message says what (it is logged once)."""


@dataclass(frozen=True)
class TlsParams:
    """What the own TLS connection needs, as libpq resolved it for its connection."""

    host: str
    #: The address libpq actually connected to ("" when it resolved ``host`` itself).
    hostaddr: str
    port: int
    user: str
    dbname: str
    password: str
    sslmode: str
    sslrootcert: str
    sslcert: str
    sslkey: str
    sslpassword: str
    sslsni: bool
    min_version: str
    max_version: str
    #: StartupMessage parameters besides user and database (replication, options, …).
    startup: Mapping[str, str]
    connect_timeout_s: float


def tls_params(pgconn: PGconn) -> TlsParams:
    """The parameters of libpq's (SSL) connection, or :class:`TlsWireUnavailable`.

    ``PGconn.info`` (PQconninfo) holds the options as libpq resolved them, environment
    variables (PGSSLMODE, …) included; ``PGconn.password`` (PQpass) the password it used,
    from the URL, PGPASSWORD or the password file alike.
    """
    if pgconn.used_gssapi:
        raise TlsWireUnavailable("the connection is GSS-encrypted")
    info = {o.keyword.decode(): (o.val or b"").decode() for o in pgconn.info}
    for key in _UNSUPPORTED_KEYS:
        if info.get(key) and not (key == "sslcertmode" and info[key] == "allow"):
            raise TlsWireUnavailable(f"{key}={info[key]} is set")
    if info.get("channel_binding") == "require":
        raise TlsWireUnavailable("channel_binding=require (SCRAM channel binding)")
    if info.get("sslnegotiation", "postgres") != "postgres":
        raise TlsWireUnavailable(f"sslnegotiation={info['sslnegotiation']}")
    host = pgconn.host.decode()
    if not host or host.startswith("/") or host.startswith("@"):
        raise TlsWireUnavailable(f"the connection is not TCP (host {host!r})")
    startup = {"replication": info.get("replication") or "database"}
    for key in ("options", "application_name", "client_encoding"):
        if info.get(key):
            startup[key] = info[key]
    if "application_name" not in startup and info.get("fallback_application_name"):
        startup["application_name"] = info["fallback_application_name"]
    timeout = int(info.get("connect_timeout") or 0)
    return TlsParams(
        host=host,
        hostaddr=pgconn.hostaddr.decode(),
        port=int(pgconn.port.decode() or 5432),
        user=pgconn.user.decode(),
        dbname=pgconn.db.decode(),
        password=(pgconn.password or b"").decode(),
        sslmode=info.get("sslmode") or "prefer",
        sslrootcert=info.get("sslrootcert", ""),
        sslcert=info.get("sslcert", ""),
        sslkey=info.get("sslkey", ""),
        sslpassword=info.get("sslpassword", ""),
        sslsni=info.get("sslsni", "1") != "0",
        min_version=info.get("ssl_min_protocol_version") or "TLSv1.2",
        max_version=info.get("ssl_max_protocol_version", ""),
        startup=startup,
        connect_timeout_s=float(max(timeout, 2) if timeout else 30),
    )


def _user_file(name: str) -> Path:
    return Path(os.environ.get("HOME") or Path.home()) / ".postgresql" / name


def ssl_context(params: TlsParams) -> ssl.SSLContext:
    """An SSLContext with libpq's semantics for ``sslmode`` and the certificate files.

    As libpq: the server's certificate is verified whenever a root certificate file exists
    (``sslrootcert``, default ~/.postgresql/root.crt), so ``require`` then acts like
    ``verify-ca``; ``verify-full`` also checks the host name; ``sslrootcert=system`` uses
    the system's trusted roots. A client certificate is sent when ``sslcert`` (default
    ~/.postgresql/postgresql.crt) exists.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # libpq does not restrict ciphers beyond OpenSSL's defaults and its protocol range.
    try:
        ctx.minimum_version = _TLS_VERSIONS[params.min_version]
        if params.max_version:
            ctx.maximum_version = _TLS_VERSIONS[params.max_version]
    except KeyError as exc:
        raise TlsWireUnavailable(f"TLS protocol version {exc.args[0]!r}") from None
    root = params.sslrootcert or str(_user_file("root.crt"))
    if root == "system":
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif Path(root).is_file():
        ctx.load_verify_locations(cafile=root)
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif params.sslmode.startswith("verify"):
        raise TlsWireUnavailable(f"root certificate file {root!r} not found")
    if params.sslmode == "verify-full":
        ctx.check_hostname = True
    cert = params.sslcert or str(_user_file("postgresql.crt"))
    if Path(cert).is_file():
        key = params.sslkey or str(_user_file("postgresql.key"))

        def no_prompt() -> str:  # an encrypted key without sslpassword: libpq would prompt
            raise TlsWireUnavailable("the client key is encrypted and sslpassword is empty")

        ctx.load_cert_chain(cert, key, password=params.sslpassword or no_prompt)
    return ctx


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _LENGTH.pack(4 + len(body)) + body


class TlsWire:
    """A replication connection over TLS that dbmazz speaks itself (see the module doc).

    Implements :class:`dbmazz.source.wire.Wire` for the socket reader. The TCP socket is
    non-blocking once connected; SO_RCVLOWAT applies to it (the ciphertext is the plaintext
    plus ~22 bytes per record).
    """

    name = "tls"

    def __init__(self, params: TlsParams, target: str) -> None:
        self.target = target
        self.low_water = 1
        context = ssl_context(params)
        deadline = time.monotonic() + params.connect_timeout_s
        address = params.hostaddr or params.host
        try:
            sock = socket.create_connection((address, params.port),
                                            timeout=params.connect_timeout_s)
        except OSError as exc:
            raise SourceConnectionError(
                f"cannot open the TLS replication connection to {target}: {exc}",
                "dbmazz reconnects and resumes from the last confirmed LSN",
            ) from None
        self._sock = sock
        self.fd = sock.fileno()
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._raw = bytearray(_RAW_BUFFER)
        #: Whether the last decryption filled its buffer (so more may be decrypted without
        #: reading the socket).
        self._ready = False
        self._eof = False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            sock.setblocking(False)
            self._poll = select.poll()
            self._poll.register(self.fd, select.POLLIN)
            self._send_raw(_SSL_REQUEST, deadline)
            answer = self._recv_raw_byte(deadline)
            if answer != b"S":
                raise SourceConnectionError(
                    f"{target} refused TLS on a second connection (answer {answer!r})",
                    "dbmazz reconnects; set REPLICATION_READER=libpq if this repeats",
                )
            sni = params.host if params.sslsni and not _is_ip(params.host) else None
            hostname = params.host if context.check_hostname else sni
            self._ssl = context.wrap_bio(self._in, self._out, server_hostname=hostname)
            self._handshake(deadline)
            self.tls_version = self._ssl.version() or ""
            self._startup(params, deadline)
        except BaseException:
            sock.close()
            raise

    # -- the connection's start (blocking, bounded by connect_timeout) ------------------

    def _wait(self, deadline: float, *, write: bool = False) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SourceConnectionError(
                f"the TLS replication connection to {self.target} timed out while starting",
                "check that the server is not overloaded; dbmazz retries",
            )
        if write:
            select.select([], [self.fd], [], remaining)
        else:
            self._poll.poll(remaining * 1000)

    def _send_raw(self, data: bytes | memoryview, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view):]
            except BlockingIOError:
                self._wait(deadline, write=True)

    def _recv_raw_byte(self, deadline: float) -> bytes:
        while True:
            try:
                return self._sock.recv(1)  # no more: the server's TLS starts after it
            except BlockingIOError:
                self._wait(deadline)

    def _flush_out(self, deadline: float) -> None:
        if self._out.pending:
            self._send_raw(self._out.read(), deadline)

    def _handshake(self, deadline: float) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_out(deadline)
                self._feed(deadline)
            except ssl.SSLCertVerificationError as exc:
                # libpq accepted this server a moment ago with the same settings: a
                # difference between the two verifications, not an attack; libpq's stands.
                raise TlsWireUnavailable(
                    f"certificate verification differs from libpq's: {exc.verify_message}"
                ) from None
            except ssl.SSLError as exc:
                raise TlsWireUnavailable(f"TLS handshake failed: {exc}") from None
        self._flush_out(deadline)

    def _feed(self, deadline: float) -> None:
        """Blocking (until ``deadline``): one socket read into the incoming BIO."""
        while True:
            try:
                got = self._sock.recv_into(self._raw)
            except BlockingIOError:
                self._wait(deadline)
                continue
            if not got:
                raise SourceConnectionError(
                    f"{self.target} closed the TLS replication connection while starting",
                    "dbmazz reconnects and resumes from the last confirmed LSN",
                )
            self._in.write(memoryview(self._raw)[:got])
            return

    def _next(self, pending: bytearray, deadline: float) -> ServerMessage:
        try:
            return next_message(self, pending, max(0.0, deadline - time.monotonic()))
        except (TimeoutError, EOFError, OSError) as exc:
            raise SourceConnectionError(
                f"the TLS replication connection to {self.target} failed while starting: "
                f"{exc}",
                "dbmazz reconnects and resumes from the last confirmed LSN",
            ) from None

    def _startup(self, params: TlsParams, deadline: float) -> None:
        fields = {"user": params.user, "database": params.dbname, **params.startup}
        body = _LENGTH.pack(_PROTOCOL_3) + b"".join(
            k.encode() + b"\0" + v.encode() + b"\0" for k, v in fields.items()) + b"\0"
        self.write_all(_LENGTH.pack(4 + len(body)) + body, deadline - time.monotonic())
        pending = bytearray()
        auth = Authentication(params.user, params.password, self.target)
        while True:
            message = self._next(pending, deadline)
            kind = chr(message.kind)
            if kind == "E":
                fields = error_fields(message.body)
                if fields.get("C") == "53300":
                    # max_wal_senders/max_connections used up, libpq's connection counted:
                    # libpq's connection can still stream.
                    raise TlsWireUnavailable(
                        f"the server refused a second connection: {fields.get('M', '')}")
                raise startup_error(fields, self.target)
            if kind == "R":
                reply = auth.answer(message.body)
                if reply:
                    self.write_all(reply, deadline - time.monotonic())
            elif kind == "Z":
                if not auth.done:
                    raise SourceError(f"{self.target} skipped authentication's end")
                break
            # ParameterStatus, BackendKeyData, NoticeResponse: nothing to keep.
        if pending:
            raise SourceError(f"{self.target} sent data past ReadyForQuery")

    # -- the Wire protocol (non-blocking) -----------------------------------------------

    def set_low_water(self, nbytes: int) -> None:
        self.low_water = nbytes
        # Not supported here: the reader only wakes more often.
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)

    def wait_readable(self, timeout_s: float) -> bool:
        if self._ready:
            return True  # data may be waiting in the BIO or the SSL object
        return bool(self._poll.poll(max(0.0, timeout_s * 1000)))

    def read_into(self, view: memoryview) -> int:
        """Plaintext into ``view`` (0: none available now); EOFError when closed.

        Decrypts what the incoming BIO holds; if that does not fill ``view``, reads the
        socket once (as much as it has) and decrypts again. One ``SSLObject.read`` per
        record (OpenSSL hands out one record per call), nothing else per message.
        """
        got = self._decrypt(view, 0)
        if got < len(view) and not self._eof:
            try:
                n = self._sock.recv_into(self._raw)
            except BlockingIOError:
                n = -1
            if n == 0:
                self._eof = True
            elif n > 0:
                self._in.write(memoryview(self._raw)[:n])
                got = self._decrypt(view, got)
        if not got and self._eof:
            raise EOFError("the server closed the connection")
        return got

    def _decrypt(self, view: memoryview, got: int) -> int:
        size = len(view)
        # typeshed types read() as returning bytes; with a buffer it returns the count.
        read: Callable[[int, memoryview], int] = self._ssl.read  # type: ignore[assignment]
        try:
            while got < size:
                n = read(size - got, view[got:])
                if not n:
                    self._eof = True
                    break
                got += n
            # Filled: more may wait in the BIO or inside the SSL object (the rest of a
            # record), where poll cannot see it; the next read_into finds out.
            self._ready = True
        except ssl.SSLWantReadError:
            self._ready = False
        except ssl.SSLZeroReturnError:
            self._ready = False
            self._eof = True  # close_notify
        if self._out.pending:  # TLS 1.3 key updates answer from inside read()
            self._send_out(30.0)
        return got

    def write_all(self, data: bytes, timeout_s: float = 30.0) -> None:
        self._ssl.write(data)
        self._send_out(timeout_s)

    def _send_out(self, timeout_s: float) -> None:
        data = memoryview(self._out.read())
        deadline = time.monotonic() + timeout_s
        while data:
            try:
                data = data[self._sock.send(data):]
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("the server did not accept data for "
                                       f"{timeout_s:.0f} s") from None
                select.select([], [self.fd], [], remaining)

    def read_message(self, pending: bytearray, timeout_s: float) -> ServerMessage:
        return next_message(self, pending, timeout_s)

    def close(self) -> None:
        """Terminate and TLS close_notify (best effort), then close the socket."""
        if self._sock.fileno() < 0:
            return
        try:
            if not self._eof:
                self._ssl.write(_TERMINATE)
                # close_notify is written; the server's answer is not awaited.
                with contextlib.suppress(ssl.SSLWantReadError):
                    self._ssl.unwrap()
                self._send_out(1.0)
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self._poll.unregister(self.fd)
            self._sock.close()


def startup_error(fields: Mapping[str, str], target: str) -> SourceError:
    """An ErrorResponse while starting the connection, classified by SQLSTATE."""
    state = fields.get("C", "")
    text = fields.get("M", "")
    if state.startswith("28") or state in ("42501", "3D000"):
        # Authentication, pg_hba, the replication privilege, a missing database: the
        # same classification (and fix) as a libpq connection's.
        error = connect_error(text, target)
        if not isinstance(error, SourceConnectionError):
            return error
        return SourceError(f"PostgreSQL at {target} refused the connection: {text} "
                           f"(SQLSTATE {state})",
                           "check SOURCE_URL's user, password and client certificate "
                           "(sslcert/sslkey)")
    if state == "57P03":
        return SourceConnectionError(
            f"PostgreSQL at {target} cannot accept the replication connection now: {text}",
            "raise max_connections/max_wal_senders if this repeats; dbmazz retries",
        )
    return fields_error(fields, target, None)


class Authentication:
    """The client side of the authentication exchange: trust, cleartext password, md5,
    SCRAM-SHA-256 (without channel binding; the server's signature is verified)."""

    def __init__(self, user: str, password: str, target: str) -> None:
        self._user = user
        self._password = password
        self._target = target
        self.done = False
        self._nonce = ""
        self._first_bare = ""
        self._server_signature = b""
        self._verified = False

    def _need_password(self) -> str:
        if not self._password:
            raise TlsWireUnavailable("the server asks for a password libpq did not use")
        return self._password

    def answer(self, body: bytes) -> bytes:
        """The reply to one Authentication message (b"" when none is due)."""
        (code,) = struct.unpack_from(">I", body)
        if code == _AUTH_OK:
            if self._first_bare and not self._verified:
                raise SourceError(
                    f"{self._target} ended SCRAM authentication without proving it knows "
                    "the password", "check that SOURCE_URL names the intended server")
            self.done = True
            return b""
        if code == _AUTH_CLEARTEXT:
            return _message(b"p", self._need_password().encode() + b"\0")
        if code == _AUTH_MD5:
            salt = body[4:8]
            inner = hashlib.md5(
                (self._need_password() + self._user).encode()).hexdigest().encode()
            return _message(b"p", b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
                            + b"\0")
        if code == _AUTH_SASL:
            mechanisms = body[4:].split(b"\0")
            if b"SCRAM-SHA-256" not in mechanisms:
                raise TlsWireUnavailable(f"SASL mechanisms {mechanisms!r}")
            return self._scram_first()
        if code == _AUTH_SASL_CONTINUE:
            return self._scram_final(body[4:].decode())
        if code == _AUTH_SASL_FINAL:
            self._check_server(body[4:].decode())
            return b""
        raise TlsWireUnavailable(f"authentication request {code} (GSS/SSPI/Kerberos)")

    def _scram_first(self) -> bytes:
        password = self._need_password()
        if not password.isascii():
            # SCRAM needs SASLprep of the password; libpq has it, this module does not.
            raise TlsWireUnavailable("a non-ASCII password with SCRAM")
        self._nonce = base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        # "n": this client does not do channel binding (so a server offering it is fine).
        first = ("n,," + self._first_bare).encode()
        return _message(b"p", b"SCRAM-SHA-256\0" + _LENGTH.pack(len(first)) + first)

    def _scram_final(self, server_first: str) -> bytes:
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        nonce, salt, iterations = fields.get("r", ""), fields.get("s", ""), fields.get("i", "")
        if not nonce.startswith(self._nonce) or not salt or not iterations.isdigit():
            raise SourceError(f"{self._target} sent an invalid SCRAM challenge")
        salted = hashlib.pbkdf2_hmac("sha256", self._need_password().encode(),
                                     base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first},{final_bare}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self._server_signature = hmac.new(server_key, auth_message, "sha256").digest()
        return _message(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())

    def _check_server(self, server_final: str) -> None:
        fields = dict(item.split("=", 1) for item in server_final.split(","))
        try:
            claimed = base64.b64decode(fields.get("v", ""), validate=True)
        except ValueError:
            claimed = b""
        if not self._server_signature or not hmac.compare_digest(
                claimed, self._server_signature):
            raise SourceError(
                f"{self._target} failed SCRAM server verification (its signature is wrong)",
                "the server does not know the password: check that SOURCE_URL names the "
                "intended server",
            )
        self._verified = True
