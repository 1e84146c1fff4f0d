"""A BE HTTP port: Stream Load, the transaction interface, and the error log.

Every reply is HTTP 200 with a JSON body, success or not; unknown paths get 404 "Not
Found". Header checks (including the label check) run before ``100 Continue``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dbmazz.testing.starrocks.core import Cluster, Rejected, StreamLoadCtx, parse_basic_auth
from dbmazz.testing.starrocks.faults import FaultKind
from dbmazz.testing.starrocks.http_fe import TXN_OPS
from dbmazz.testing.starrocks.httpbase import BaseHandler, Reply
from dbmazz.testing.starrocks.loads import LoadPlan
from dbmazz.testing.starrocks.responses import pretty
from dbmazz.testing.starrocks.txn import Txn


def _json(obj: dict[str, Any]) -> Reply:
    return Reply(200, pretty(obj))


class BEHandler(BaseHandler):
    _stream_ctx: StreamLoadCtx | None = None
    _txn_ctx: tuple[Txn, LoadPlan] | None = None

    @property
    def cluster(self) -> Cluster:
        cluster: Cluster = self.server.context
        return cluster

    @property
    def be_index(self) -> int:
        return self.cluster.be_ports.index(self.server.port)

    def _segments(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return [unquote(s) for s in parts.path.split("/") if s], parse_qs(parts.query)

    def _kind(self) -> str:
        segments, _ = self._segments()
        if len(segments) == 4 and segments[0] == "api" and segments[3] == "_stream_load":
            return "stream_load" if self.command == "PUT" else "unknown"
        if (
            len(segments) == 3
            and segments[:2] == ["api", "transaction"]
            and segments[2] in TXN_OPS
            and self.command in ("PUT", "POST")
        ):
            return f"txn_{segments[2]}"
        if segments == ["api", "_load_error_log"] and self.command == "GET":
            return "error_log"
        return "unknown"

    def check_headers(self) -> Reply | None:
        self._stream_ctx = None
        self._txn_ctx = None
        kind = self._kind()
        if kind == "unknown":
            return Reply(404, b"Not Found", "text/plain")
        hdrs = self.header_map()
        if kind == "stream_load":
            segments, _ = self._segments()
            try:
                self._stream_ctx = self.cluster.begin_stream_load(
                    segments[1],
                    segments[2],
                    hdrs,
                    parse_basic_auth(self.headers.get("Authorization")),
                    self.client_address[0],
                    self.be_index,
                )
            except Rejected as e:
                return _json(e.reply)
        elif kind == "txn_load":
            try:
                self._txn_ctx = self.cluster.txn_load_begin(hdrs)
            except Rejected as e:
                return _json(e.reply)
        return None

    def handle_body(self) -> Reply:
        kind = self._kind()
        hdrs = self.header_map()
        if kind == "error_log":
            _, query = self._segments()
            name = (query.get("file") or [""])[0]
            text = self.cluster.error_logs.get(name)
            if text is None:
                return Reply(404, b"Not Found", "text/plain")
            return Reply(200, text.encode("utf-8"), "text/plain; charset=utf-8")
        if kind == "stream_load":
            assert self._stream_ctx is not None
            return self._finish_stream_load(self._stream_ctx)
        if kind == "txn_load":
            assert self._txn_ctx is not None
            return self._finish_txn_load(*self._txn_ctx)
        self.read_body()
        self._delay(hdrs)
        op = kind.removeprefix("txn_")
        auth = parse_basic_auth(self.headers.get("Authorization"))
        if op == "begin":
            reply = self.cluster.txn_begin(hdrs, auth, self.client_address[0])
            txn = self.cluster.txns.get(hdrs.get("db") or "", hdrs.get("label") or "")
            if txn is not None and txn.coordinator is None:
                txn.coordinator = self.be_index
            return _json(reply)
        if op in ("prepare", "commit"):
            return _json(self.cluster.txn_commit(hdrs, prepare=op == "prepare"))
        return _json(self.cluster.txn_rollback(hdrs))

    def _delay(self, hdrs: dict[str, str]) -> None:
        segments, _ = self._segments()
        db = segments[1] if len(segments) == 4 else hdrs.get("db")
        table = segments[2] if len(segments) == 4 else hdrs.get("table")
        fault = self.cluster.faults.take(
            FaultKind.DELAY, db=db, table=table, label=hdrs.get("label"), where="be"
        )
        if fault is not None:
            self.wait(float(fault.params.get("seconds", 1.0)))

    def _read_or_reset(self, txn: Txn, abort: Callable[[str], None]) -> bytes:
        """The body; a read failure or a connection_reset fault aborts the transaction."""
        fault = self.cluster.faults.take(
            FaultKind.CONNECTION_RESET, db=txn.db, table=txn.table, label=txn.label
        )
        if fault is not None:
            self.read_body(limit=int(fault.params.get("after_bytes", 0)))
            # Abort first, so the client never observes the reset before the abort.
            abort("connection reset while receiving data")
            self.reset_connection()
        try:
            return self.read_body()
        except Exception:
            abort("failed to receive data from the client")
            raise

    def _finish_stream_load(self, ctx: StreamLoadCtx) -> Reply:
        started = time.monotonic()
        body = self._read_or_reset(ctx.txn, lambda why: self.cluster.abort_stream_load(ctx, why))
        read_ms = int((time.monotonic() - started) * 1000)
        reply = self.cluster.finish_stream_load(ctx, body, read_ms)
        self._delay(self.header_map())
        return _json(reply)

    def _finish_txn_load(self, txn: Txn, plan: LoadPlan) -> Reply:
        started = time.monotonic()
        body = self._read_or_reset(txn, lambda why: self.cluster.txn_abort_load(txn, why))
        read_ms = int((time.monotonic() - started) * 1000)
        reply = self.cluster.txn_load_body(txn, body, read_ms)
        self._delay(self.header_map())
        return _json(reply)
