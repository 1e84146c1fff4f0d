"""Threaded HTTP/1.1 server with StarRocks' ``Expect: 100-continue`` behaviour.

A handler checks the headers before anything is sent. If it refuses the request, it
answers at once and ``100 Continue`` is never sent, as the BE does; otherwise the stdlib
sends ``100 Continue`` and the body is read. Shutdown closes idle keep-alive connections
and joins every handler thread.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

logger = logging.getLogger("dbmazz.testing.starrocks")

_DRAIN_TIMEOUT = 1.0
_DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def utf8_header(value: str) -> str:
    """A header value re-read as UTF-8: http.client decodes the header bytes as latin-1."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        # Not UTF-8 (or not from the wire): keep the latin-1 reading, one char per byte.
        return value


class ConnectionReset(Exception):
    """Raised by a handler that has reset its connection; nothing more is written."""


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], context: Any, name: str, port: int = 0
    ) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.context = context
        self.name = name
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind would reverse-resolve the address (getfqdn); skip that.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, name=f"starrocks-emulator-{self.name}", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_r or self.stopping.is_set():
                        return
                    self._handle_request_noblock()  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._wake_r.close()
        self._wake_w.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("%s: error serving %s", self.name, client_address, exc_info=True)


class BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer
    # A reply is written in two sends (headers, then body): with Nagle on, the second waits
    # for the client's delayed ACK of the first, 40 ms a request. StarRocks writes a reply
    # in one buffer, so no such wait exists there.
    disable_nagle_algorithm = True
    # A bound on how long an idle keep-alive connection holds a thread.
    timeout = 60

    _headers_checked = False
    _body_read = False

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s - " + format, self.server.name, self.address_string(), *args)

    def parse_request(self) -> bool:
        self._headers_checked = False
        self._body_read = False
        return super().parse_request()

    # -- the two phases subclasses implement ----------------------------------------------

    def check_headers(self) -> Reply | None:
        """Run before any 100 Continue; a Reply refuses the request."""
        return None

    def handle_body(self) -> Reply:
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------------

    def _checked_headers(self) -> Reply | None:
        try:
            return self.check_headers()
        except Exception as e:
            logger.exception("%s: header check failed", self.server.name)
            return Reply(500, f"emulator error: {e!r}".encode(), "text/plain", close=True)

    def handle_expect_100(self) -> bool:
        self._headers_checked = True
        reply = self._checked_headers()
        if reply is not None:
            self.send_reply(reply)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        try:
            if not self._headers_checked:
                self._headers_checked = True
                reply = self._checked_headers()
                if reply is not None:
                    self.send_reply(reply)
                    return
            self.send_reply(self.handle_body())
        except ConnectionReset:
            self.close_connection = True
        except Exception as e:
            # An emulator bug: make it visible to the client instead of dropping the socket.
            logger.exception("%s: handler failed", self.server.name)
            self.send_reply(Reply(500, f"emulator error: {e!r}".encode(), "text/plain",
                                  close=True))

    do_GET = do_PUT = do_POST = do_DELETE = _dispatch

    @property
    def has_body(self) -> bool:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return True
        length = self.headers.get("Content-Length")
        return bool(length and length.strip().isdigit() and int(length) > 0)

    def header_map(self) -> dict[str, str]:
        """Request headers with lower-case names (the first of repeated ones wins).

        Values are read as UTF-8, as StarRocks does with the raw bytes libevent hands it:
        column names in ``columns``, ``where``, ``db``/``table`` of the transaction API.
        """
        out: dict[str, str] = {}
        for name, value in self.headers.items():
            out.setdefault(name.lower(), utf8_header(value))
        return out

    def read_body(self, limit: int | None = None) -> bytes:
        """The request body (Content-Length or chunked); at most ``limit`` bytes if given."""
        self._body_read = limit is None
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length = self.headers.get("Content-Length")
        if not length or not length.strip().isdigit():
            return b""
        size = int(length)
        if limit is not None:
            size = min(size, limit)
        data = self.rfile.read(size)
        if len(data) < size:
            raise ConnectionError(f"body ended after {len(data)} of {size} bytes")
        return data

    def _read_chunked(self, limit: int | None) -> bytes:
        parts: list[bytes] = []
        got = 0
        while limit is None or got < limit:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("chunked body ended without its last chunk")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ConnectionError("chunked body ended inside a chunk")
            self.rfile.read(2)
            parts.append(chunk)
            got += len(chunk)
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def reset_connection(self) -> NoReturn:
        """Abort the connection with a TCP RST (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            # The buffered reader holds a reference; the fd (and the RST) goes with both.
            self.rfile.close()
            self.connection.close()
        self.close_connection = True
        raise ConnectionReset

    def send_reply(self, reply: Reply) -> None:
        unread = self.has_body and not self._body_read
        close = reply.close or unread
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)
        self.wfile.flush()
        if close:
            self.close_connection = True
        if unread:
            self._linger()

    def _linger(self) -> None:
        """Discard a body the client pushes anyway, so closing does not reset the reply."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_DRAIN_TIMEOUT)
            drained = 0
            while drained < _DRAIN_LIMIT:
                chunk = self.rfile.read1(65536) if hasattr(self.rfile, "read1") else b""
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def wait(self, seconds: float) -> None:
        """A fault's delay; cut short when the emulator stops."""
        self.server.stopping.wait(seconds)
