"""Stream Load round trip benchmark: one load through dbmazz's own HTTP client, end to end,
against the two Stream Load endpoints this repository has — the StarRocks emulator (tests,
``make demo``) and ``bench/nullsink.py`` (the end-to-end and snapshot benchmarks' target).

Each load is what the StarRocks sink sends: ``PUT`` to the FE with ``Expect: 100-continue``,
307 to the BE, the body after ``100 Continue``, the JSON reply (``Transport.send_following``).
Both servers are Python ``http.server`` handlers that write a reply in two sends, headers
then body. With Nagle's algorithm on, the second send waits until the client ACKs the
first, and the client delays that ACK (it has nothing to send back): a fixed wait per
request that a real StarRocks, which writes a reply in one buffer, does not have. Both
handlers now switch Nagle off; this runs each endpoint with it on (as before) and off,
interleaved, in one process, and reports milliseconds per load at a few body sizes (the
median of ``--loads`` loads; in the JSON the best of ``--repeat`` rounds).

Usage: ``python bench/roundtrip.py [--loads 20] [--repeat 3]``. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nullsink import Handler as NullHandler
from nullsink import NullServer

from dbmazz.sink.starrocks.http import Transport
from dbmazz.testing.starrocks import StarRocksEmulator
from dbmazz.testing.starrocks.httpbase import BaseHandler

DDL = "CREATE TABLE bench.t (id BIGINT, v VARCHAR(32)) PRIMARY KEY (id) DISTRIBUTED BY HASH(id)"
#: Body sizes per endpoint: one row (a trickle's load) and more. The emulator stores what
#: it loads (~10 µs a row), so its larger body is small; the null endpoint only reads.
ROWS = {"emulator": {"1_row": 1, "1000_rows": 1_000},
        "null": {"1_row": 1, "1_mib": 29_000, "8_mib": 233_000}}


@contextmanager
def emulator() -> Iterator[str]:
    with StarRocksEmulator() as em:
        em.execute("CREATE DATABASE bench")
        em.execute(DDL)
        yield em.url


@contextmanager
def null_endpoint() -> Iterator[str]:
    server = NullServer(0, redirect=True, record_key=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def body_of(rows: int) -> bytes:
    return b"".join(b"%d,value-%024d\n" % (i, i) for i in range(rows))


def time_loads(url: str, body: bytes, loads: int, tag: str) -> float:
    """Median milliseconds of ``loads`` Stream Loads of ``body``."""
    transport = Transport("root", "")
    times = []
    try:
        for i in range(loads):
            started = time.perf_counter()
            reply = transport.send_following(
                "PUT", f"{url}/api/bench/t/_stream_load",
                {"label": f"{tag}-{time.monotonic_ns()}-{i}", "format": "csv",
                 "column_separator": ","},
                body, expect_continue=True)
            times.append((time.perf_counter() - started) * 1000)
            if reply.status != 200 or b"Success" not in reply.body:
                raise RuntimeError(f"load failed: {reply.status} {reply.body[:200]!r}")
    finally:
        transport.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20, help="loads per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each endpoint both ways")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    handlers = {"emulator": BaseHandler, "null": NullHandler}
    with emulator() as emulator_url, null_endpoint() as null_url:
        urls = {"emulator": emulator_url, "null": null_url}
        for round_ in range(args.repeat):
            for endpoint, url in urls.items():
                for name, rows in ROWS[endpoint].items():
                    body = body_of(rows)
                    for nagle in (True, False) if round_ % 2 == 0 else (False, True):
                        handlers[endpoint].disable_nagle_algorithm = not nagle
                        key = f"{endpoint}_{name}_{'nagle' if nagle else 'nodelay'}_ms"
                        ms = time_loads(url, body, args.loads, key)
                        results.setdefault(key, []).append(ms)
                        print(f"round {round_ + 1}: {endpoint:8s} {name:9s} "
                              f"({len(body) / 2**20:5.2f} MiB) Nagle {'on ' if nagle else 'off'}"
                              f" {ms:8.2f} ms/load", flush=True)
    for handler in handlers.values():
        handler.disable_nagle_algorithm = True
    out: dict[str, object] = {key: round(min(values), 2) for key, values in results.items()}
    out.update(loads=args.loads, repeat=args.repeat,
               date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
