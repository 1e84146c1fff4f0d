"""HTTP for Stream Load over pycurl: reused handles, manual redirects, Basic auth.

Redirects are followed here rather than by libcurl because the FE answers a load with
307 to a BE on another port, and credentials must be re-sent there (libcurl only does that
with UNRESTRICTED_AUTH, which would also leak them to any host a server names). Each
thread keeps its own curl handle, so connections to the BEs are reused across loads.
pycurl releases the GIL while transferring, so loads of different tables run in parallel.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import pycurl

_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class TransportError(Exception):
    """No HTTP response: connect failure, reset, timeout.

    ``body_sent`` says whether any request body bytes left this process, which decides
    whether re-sending a non-idempotent request (a transaction ``load``) is safe.
    """

    def __init__(self, message: str, *, code: int, url: str, body_sent: bool) -> None:
        super().__init__(message)
        self.code = code
        self.url = url
        self.body_sent = body_sent


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)
        self.sent = 0

    def read(self, size: int) -> bytes:
        chunk = self._buf.read(size)
        self.sent += len(chunk)
        return chunk


def _safe_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


class Transport:
    def __init__(
        self,
        user: str,
        password: str,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 600.0,
        expect_timeout: float = 30.0,
    ) -> None:
        self._user = user
        self._password = password
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.expect_timeout = expect_timeout
        self._local = threading.local()
        self._handles: list[pycurl.Curl] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Transport(user={self._user!r})"

    def _handle(self) -> pycurl.Curl:
        handle: pycurl.Curl | None = getattr(self._local, "curl", None)
        if handle is None:
            handle = pycurl.Curl()
            self._local.curl = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        expect_continue: bool = False,
        auth: bool = True,
    ) -> HttpResponse:
        """One request, no redirect following."""
        if self._closed:
            raise TransportError("transport closed", code=0, url=_safe_url(url), body_sent=False)
        c = self._handle()
        # reset() clears options but keeps the connection cache of the handle.
        c.reset()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.FOLLOWLOCATION, 0)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(self.connect_timeout * 1000)))
        c.setopt(pycurl.TIMEOUT_MS, max(1, int(self.timeout * 1000)))
        if auth:
            c.setopt(pycurl.HTTPAUTH, pycurl.HTTPAUTH_BASIC)
            c.setopt(pycurl.USERNAME, self._user)
            c.setopt(pycurl.PASSWORD, self._password)
        lines = [_header_line(k, v) for k, v in (headers or {}).items()]
        # An empty "Expect:" stops libcurl from adding one on its own for big bodies.
        lines.append(b"Expect: 100-continue" if expect_continue else b"Expect:")
        c.setopt(pycurl.HTTPHEADER, lines)
        reader = _Reader(body or b"")
        if method == "GET":
            c.setopt(pycurl.HTTPGET, 1)
        else:
            c.setopt(pycurl.UPLOAD, 1)
            c.setopt(pycurl.READFUNCTION, reader.read)
            c.setopt(pycurl.INFILESIZE_LARGE, len(body or b""))
            if method != "PUT":
                c.setopt(pycurl.CUSTOMREQUEST, method)
            if expect_continue:
                c.setopt(pycurl.EXPECT_100_TIMEOUT_MS, max(1, int(self.expect_timeout * 1000)))
        out = io.BytesIO()
        response_headers: dict[str, str] = {}

        def on_header(raw: bytes) -> None:
            line = raw.decode("latin-1").rstrip("\r\n")
            if line.startswith("HTTP/"):
                response_headers.clear()  # a new block: after "100 Continue" comes the reply
            elif ":" in line:
                key, _, value = line.partition(":")
                response_headers[key.strip().lower()] = value.strip()

        c.setopt(pycurl.WRITEFUNCTION, out.write)
        c.setopt(pycurl.HEADERFUNCTION, on_header)
        try:
            c.perform()
            status = int(c.getinfo(pycurl.RESPONSE_CODE))
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else 0
            text = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise TransportError(
                f"{method} {_safe_url(url)}: {text} (curl error {code})",
                code=int(code),
                url=_safe_url(url),
                body_sent=reader.sent > 0,
            ) from None
        finally:
            # The handle holds its callbacks (and through the reader, the body) until the
            # next request: let go of them now, the body may be tens of MB.
            c.reset()
        return HttpResponse(status, out.getvalue(), url, response_headers)

    def send_following(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        expect_continue: bool = False,
        max_redirects: int = 4,
        auth: bool = True,
    ) -> HttpResponse:
        """Send, following redirects (FE → leader FE → BE) with auth re-attached each hop."""
        for _ in range(max_redirects + 1):
            response = self.send(
                method, url, headers, body, expect_continue=expect_continue, auth=auth
            )
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                return response
            url = urljoin(url, location)
        raise TransportError(
            f"{method} {_safe_url(url)}: more than {max_redirects} redirects",
            code=0,
            url=_safe_url(url),
            body_sent=False,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()


def _header_line(key: str, value: str) -> bytes:
    if any(ch in key or ch in value for ch in "\r\n\x00"):
        raise ValueError(f"HTTP header {key!r} would contain a line break")
    return f"{key}: {value}".encode()
