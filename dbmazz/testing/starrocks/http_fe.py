"""The FE HTTP port: auth, the Expect check, 307 redirects to BEs, get_load_state.

Also serves the emulator's own admin API under ``/_emulator/`` (faults, rows, publish),
which a standalone emulator needs since tests cannot reach its Python objects.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from dbmazz.testing.starrocks.core import Cluster, parse_basic_auth
from dbmazz.testing.starrocks.faults import FaultKind
from dbmazz.testing.starrocks.httpbase import BaseHandler, Reply
from dbmazz.testing.starrocks.responses import compact, fe_failed, rest_result

TXN_OPS = ("begin", "load", "prepare", "commit", "rollback")


def _json(obj: dict[str, Any], status: int = 200, close: bool = False) -> Reply:
    return Reply(status=status, body=compact(obj), close=close)


class FEHandler(BaseHandler):
    @property
    def cluster(self) -> Cluster:
        cluster: Cluster = self.server.context
        return cluster

    def _route(self) -> tuple[str, list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        return parts.path, segments, parse_qs(parts.query)

    def check_headers(self) -> Reply | None:
        _, segments, query = self._route()
        if segments[:1] == ["_emulator"]:
            return None
        if segments[:1] != ["api"]:
            return Reply(404, b"Not Found", "text/plain")
        hdrs = self.header_map()
        db = segments[1] if len(segments) > 1 else None
        table = segments[2] if len(segments) > 2 else None
        label = hdrs.get("label") or (query.get("label") or [""])[0] or None
        if segments[1:2] == ["transaction"]:
            db, table = hdrs.get("db"), hdrs.get("table")
        delay = self.cluster.faults.take(
            FaultKind.DELAY, db=db, table=table, label=label, where="fe"
        )
        if delay is not None:
            self.wait(float(delay.params.get("seconds", 1.0)))
        error = self.cluster.faults.take(FaultKind.FE_ERROR, db=db, table=table, label=label)
        if error is not None:
            message = str(error.params.get("message", "Internal Server Error"))
            return _json(rest_result(message), int(error.params.get("status", 500)))
        auth = parse_basic_auth(self.headers.get("Authorization"))
        if auth is None:
            return self._denied("Need auth information.")
        if not self.cluster.password_ok(auth):
            return self._denied(f"Access denied for {auth.user}@{self.client_address[0]}")
        if len(segments) == 4 and segments[3] == "_stream_load" and self.command == "PUT":
            return self._stream_load(db, table, label)
        if len(segments) == 3 and segments[2] == "get_load_state" and self.command == "GET":
            return _json(self.cluster.load_state(segments[1], label or ""))
        if len(segments) == 3 and segments[1] == "transaction" and segments[2] in TXN_OPS:
            return self._transaction(segments[2], hdrs)
        return Reply(404, b"Not Found", "text/plain")

    def _denied(self, message: str) -> Reply:
        return Reply(
            401, compact(rest_result(message)), headers=[("WWW-Authenticate", 'Basic realm=""')]
        )

    def _redirect(self, be_index: int | None, db: str | None, table: str | None,
                  label: str | None) -> Reply:
        if self.cluster.faults.take(FaultKind.NO_BACKEND, db=db, table=table, label=label):
            return _json(fe_failed("No backend alive."))
        if self.cluster.faults.take(FaultKind.BE_UNREACHABLE, db=db, table=table, label=label):
            port = self.cluster.closed_port
        else:
            index = self.cluster.next_be() if be_index is None else be_index
            port = self.cluster.be_ports[index]
        location = f"http://127.0.0.1:{port}{self.path}"
        return Reply(307, b"", "text/plain", headers=[("Location", location)])

    def _stream_load(self, db: str | None, table: str | None, label: str | None) -> Reply:
        if (self.headers.get("Expect") or "").lower() != "100-continue":
            # The FE force-closes the connection after this reply.
            return _json(fe_failed("There is no 100-continue header"), close=True)
        return self._redirect(None, db, table, label)

    def _transaction(self, op: str, hdrs: dict[str, str]) -> Reply:
        label, db, table = hdrs.get("label"), hdrs.get("db"), hdrs.get("table")
        if not label:
            return _json(fe_failed("Empty label."))
        if not db:
            return _json(fe_failed("No database selected."))
        if (hdrs.get("transaction_type") or "").lower() == "multi":
            return _json(fe_failed("The StarRocks emulator does not support multi-table "
                                   "transactions"))
        if not table:
            return _json(fe_failed("No table selected."))
        key = (db, label)
        if op == "begin":
            index = self.cluster.next_be()
            self.cluster.coordinators[key] = index
        else:
            index = self.cluster.coordinators.get(key, self.cluster.next_be())
        return self._redirect(index, db, table, label)

    # -- admin API ------------------------------------------------------------------------

    def handle_body(self) -> Reply:
        _, segments, query = self._route()
        body = self.read_body()
        cluster = self.cluster
        what = segments[1] if len(segments) > 1 else ""
        if what == "faults":
            if self.command == "GET":
                return _json({"faults": [f.to_dict() for f in cluster.faults.pending()]})
            if self.command == "DELETE":
                cluster.faults.clear()
                return _json({"status": "OK"})
            try:
                spec = json.loads(body or b"{}")
                kind = spec.pop("kind")
                params = spec.pop("params", {})
                fault = cluster.faults.add(kind, **spec, **params)
            except (ValueError, KeyError, TypeError) as e:
                return _json({"status": "FAILED", "message": f"bad fault spec: {e}"}, 400)
            return _json({"status": "OK", "fault": fault.to_dict()})
        if what == "rows":
            db, table = (query.get("db") or [""])[0], (query.get("table") or [""])[0]
            try:
                rows = cluster.rows(db, table)
            except KeyError as e:
                return _json({"status": "FAILED", "message": str(e)}, 404)
            return Reply(body=json.dumps({"rows": rows}, default=str).encode())
        if what == "publish" and self.command == "POST":
            return _json({"status": "OK", "published": cluster.publish_pending()})
        return Reply(404, b"Not Found", "text/plain")
