"""Standalone emulator: ``python -m dbmazz.testing.starrocks --http-port 8030 --mysql-port 9030``.

Test tool only; it binds 127.0.0.1 and keeps everything in memory.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence

from dbmazz.signals import wait_for
from dbmazz.testing.starrocks.emulator import StarRocksEmulator


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dbmazz.testing.starrocks",
        description="StarRocks emulator for tests (FE/BE HTTP + MySQL protocol, loopback only).",
    )
    parser.add_argument("--http-port", type=int, default=8030, help="FE HTTP port (0 = any)")
    parser.add_argument("--mysql-port", type=int, default=9030, help="MySQL port (0 = any)")
    parser.add_argument("--be-count", type=int, default=1, help="number of emulated BEs")
    parser.add_argument("--be-port", type=int, action="append", default=None,
                        help="BE HTTP port (repeat per BE; default: free ports)")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--alter-delay", type=float, default=0.0,
                        help="seconds a schema-change job runs (0 = fast schema evolution)")
    parser.add_argument("--label-keep-max-second", type=float, default=259200.0)
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    if logging.getLogger().level > logging.DEBUG:
        # mysql-mimic logs every refused statement at ERROR; those are normal replies here.
        logging.getLogger("mysql_mimic").setLevel(logging.CRITICAL)
    be_ports = args.be_port
    be_count = len(be_ports) if be_ports else args.be_count
    emulator = StarRocksEmulator(
        http_port=args.http_port,
        mysql_port=args.mysql_port,
        be_count=be_count,
        be_ports=be_ports,
        user=args.user,
        password=args.password,
        alter_delay=args.alter_delay,
        label_keep_max_second=args.label_keep_max_second,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with emulator:
        print(
            f"StarRocks emulator (test tool): FE http {emulator.url}, "
            f"BE http ports {emulator.be_http_ports}, mysql 127.0.0.1:{emulator.mysql_port}",
            flush=True,
        )
        wait_for(done)  # the signal handlers set it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
