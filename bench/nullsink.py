"""A null Stream Load target for benchmarks: speaks enough StarRocks HTTP, keeps nothing.

It answers what dbmazz's StarRocks sink sends, reads every body to the end and throws it
away, so an end-to-end run measures dbmazz (decode, merge, serialize, HTTP) without a
database behind it:

* ``PUT /api/{db}/{table}/_stream_load``: with ``--redirect`` (the default, like a real FE)
  a 307 to ``/be/api/…`` on the same port without reading the body; the "BE" path sends
  ``100 Continue``, reads the body and replies ``{"Status": "Success", …}``;
* ``/api/transaction/{begin,load,prepare,commit,rollback}``: ``{"Status": "OK", …}`` (the
  sink uses them for a source transaction split across batches);
* ``GET /api/{db}/get_load_state``: ``UNKNOWN`` (no label is ever remembered);
* ``GET /bench/stats``: loads, bytes, and with ``--record-key COLUMN`` the arrival time of
  every key (``/bench/arrivals``) — the latency benchmark reads it;
* ``POST /bench/reset``: zero the counters.

The sink also reads the target table's columns over the FE MySQL port; for that the process
starts the StarRocks emulator (:mod:`dbmazz.testing.starrocks`) and creates the table there
with ``--ddl`` (only its MySQL port is used). Usage::

    python bench/nullsink.py --db bench --ddl "CREATE TABLE bench.t (…)" [--record-key id]

prints one JSON line ``{"http_port": …, "mysql_port": …}`` and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_CHUNK = 1 << 20


class Stats:
    def __init__(self, record_key: str | None) -> None:
        self.lock = threading.Lock()
        self.loads = 0
        self.bytes = 0
        self.requests = 0
        self._key = record_key
        self._pattern = (re.compile(rb'"' + re.escape(record_key.encode()) + rb'":(-?\d+)')
                         if record_key else None)
        self.arrivals: list[tuple[int, float]] = []

    def reset(self) -> None:
        with self.lock:
            self.loads = self.bytes = self.requests = 0
            self.arrivals = []

    def record(self, body: bytes | None, size: int, headers: Any = None) -> None:
        now = time.time()
        keys: list[int] = []
        if self._pattern is not None and body:
            if headers is not None and headers.get("format") == "csv":
                keys = self._csv_keys(body, headers.get("columns", ""))
            else:
                keys = [int(k) for k in self._pattern.findall(body)]
        with self.lock:
            self.loads += 1
            self.bytes += size
            self.arrivals.extend((k, now) for k in keys)

    def _csv_keys(self, body: bytes, columns: str) -> list[int]:
        """The key column of every record of a CSV body (``columns`` header order)."""
        names = [c.strip().strip("`") for c in columns.split(",")]
        if self._key not in names:
            return []
        at = names.index(self._key)
        return [int(record.split(b"\x01")[at]) for record in body.split(b"\x02") if record]

    def snapshot(self, arrivals: bool = False) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {"loads": self.loads, "bytes": self.bytes,
                                   "requests": self.requests}
            if arrivals:
                out["arrivals"] = list(self.arrivals)
            return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A reply goes out in two sends (headers, then body); with Nagle on, the second waits
    # for the client's delayed ACK of the first: 40 ms a request, which no StarRocks pays.
    disable_nagle_algorithm = True
    server: NullServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # The base class answers "Expect: 100-continue" before the handler runs; a real FE
    # never sends 100 before its 307, so the body is not sent to it.
    def handle_expect_100(self) -> bool:
        if self._redirects():
            return True
        return super().handle_expect_100()

    def _redirects(self) -> bool:
        return (self.server.redirect and self.command == "PUT"
                and self.path.startswith("/api/") and self.path.endswith("/_stream_load"))

    def _reply(self, payload: dict[str, Any], status: int = 200,
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _drain_body(self, keep: bool) -> tuple[bytes | None, int]:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._drain_chunked(keep)
        parts: list[bytes] = []
        left = length
        while left > 0:
            piece = self.rfile.read(min(_CHUNK, left))
            if not piece:
                break
            left -= len(piece)
            if keep:
                parts.append(piece)
        return (b"".join(parts) if keep else None), length - left

    def _drain_chunked(self, keep: bool) -> tuple[bytes | None, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            piece = self.rfile.read(size)
            self.rfile.readline()
            total += len(piece)
            if keep:
                parts.append(piece)
        return (b"".join(parts) if keep else None), total

    def _count_request(self) -> None:
        with self.server.stats.lock:
            self.server.stats.requests += 1

    def do_PUT(self) -> None:
        self._count_request()
        label = self.headers.get("label", "")
        if self._redirects():
            location = f"http://127.0.0.1:{self.server.server_address[1]}/be{self.path}"
            self.send_response(307)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        keep = self.server.stats._pattern is not None
        body, size = self._drain_body(keep)
        self.server.stats.record(body, size, self.headers)
        self.server.txn_id += 1
        if self.path.endswith("/api/transaction/load"):
            self._reply({"Status": "OK", "Message": "", "Label": label,
                         "TxnId": self.server.txn_id, "LoadBytes": size})
            return
        self._reply({
            "TxnId": self.server.txn_id, "Label": label, "Status": "Success",
            "Message": "OK", "NumberTotalRows": 0, "NumberLoadedRows": 0,
            "NumberFilteredRows": 0, "NumberUnselectedRows": 0, "LoadBytes": size,
            "LoadTimeMs": 0,
        })

    def do_POST(self) -> None:
        self._count_request()
        self._drain_body(False)
        if self.path == "/bench/reset":
            self.server.stats.reset()
            self._reply({"Status": "OK"})
            return
        label = self.headers.get("label", "")
        self.server.txn_id += 1
        self._reply({"Status": "OK", "Message": "", "Label": label,
                     "TxnId": self.server.txn_id})

    def do_GET(self) -> None:
        if self.path.startswith("/bench/stats"):
            self._reply(self.server.stats.snapshot())
            return
        if self.path.startswith("/bench/arrivals"):
            self._reply(self.server.stats.snapshot(arrivals=True))
            return
        self._count_request()
        if "/get_load_state" in self.path:
            self._reply({"state": "UNKNOWN", "status": "OK", "msg": "Success"})
            return
        self._reply({"status": "FAILED", "msg": f"not found: {self.path}"}, 404)


class NullServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, *, redirect: bool, record_key: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.redirect = redirect
        self.stats = Stats(record_key)
        self.txn_id = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default="bench")
    parser.add_argument("--ddl", action="append", default=[],
                        help="CREATE TABLE statement run on the emulator's MySQL port")
    parser.add_argument("--record-key",
                        help="column (JSON key or CSV column) whose values' arrival times to keep")
    parser.add_argument("--no-redirect", dest="redirect", action="store_false")
    args = parser.parse_args()

    from dbmazz.testing.starrocks import StarRocksEmulator

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = NullServer(args.port, redirect=args.redirect, record_key=args.record_key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    with StarRocksEmulator() as emulator:
        emulator.execute(f"CREATE DATABASE IF NOT EXISTS `{args.db}`")
        for ddl in args.ddl:
            emulator.execute(ddl)
        thread.start()
        print(json.dumps({"http_port": server.server_address[1],
                          "mysql_port": emulator.mysql_port}), flush=True)
        stop.wait()
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
