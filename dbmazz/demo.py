"""``dbmazz demo``: a private PostgreSQL, a small shop with live traffic, replicated live.

Everything is embedded: the PostgreSQL cluster is a throwaway one
(:mod:`dbmazz.testing.postgres`), the target is a DuckDB file (or, with
``DEMO_SINK=starrocks``, the bundled StarRocks emulator). Ctrl-C (or ``--duration``) stops
the traffic, drains dbmazz, prints a source-vs-target row count check and cleans up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from dbmazz.api.client import Client
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.core import Engine
from dbmazz.engine.service import EngineService
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import quote
from dbmazz.ui import dashboard

TABLES = ["shop.customers", "shop.products", "shop.orders", "shop.order_items"]

SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.customers (
    id bigint PRIMARY KEY, email text NOT NULL, name text, country char(2),
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.products (
    id int PRIMARY KEY, sku text NOT NULL, title text, price numeric(10,2), stock int,
    attributes jsonb);
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
    total numeric(12,2), placed_at timestamptz NOT NULL DEFAULT now(), details jsonb);
CREATE TABLE shop.order_items (
    order_id bigint, line int, product_id int, qty int, price numeric(10,2),
    PRIMARY KEY (order_id, line));
"""

COUNTRIES = ["DE", "FR", "US", "BR", "JP", "IN", "ES", "IT"]
STATUSES = ["new", "paid", "shipped", "delivered", "cancelled"]


def _large_details(rng: random.Random) -> str:
    """A JSON document of ~40 KB: stored out of line (TOASTed) by PostgreSQL."""
    events = [
        {"at": i, "kind": rng.choice(["view", "cart", "note"]), "text": f"{rng.random():.12f}" * 4}
        for i in range(600)
    ]
    return json.dumps({"events": events})


def seed(conn: psycopg.Connection, rng: random.Random) -> None:
    conn.execute(SCHEMA)
    conn.execute(
        "INSERT INTO shop.customers (id, email, name, country) "
        "SELECT g, 'user' || g || '@example.com', 'User ' || g, "
        "(ARRAY['DE','FR','US','BR'])[1 + g % 4] FROM generate_series(1, 2000) g"
    )
    conn.execute(
        "INSERT INTO shop.products SELECT g, 'SKU-' || g, 'Product ' || g, "
        "(g % 97) + 0.99, 100, jsonb_build_object('color', (ARRAY['red','blue'])[1 + g % 2]) "
        "FROM generate_series(1, 500) g"
    )


class Traffic:
    """Inserts, updates (incl. large TOASTed JSON) and deletes at a bounded rate."""

    def __init__(self, dsn: str, rate_per_s: float = 100.0, seed_value: int = 7) -> None:
        self.dsn = dsn
        self.rate = rate_per_s
        self.rng = random.Random(seed_value)
        self.stop = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._next_order = 1

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.wait(1.0 / self.rate):
                    self._one(conn)
                    self.transactions += 1
        except BaseException as exc:  # noqa: BLE001 - shown when the demo ends
            self.error = exc

    def _one(self, conn: psycopg.Connection) -> None:
        rng = self.rng
        roll = rng.random()
        with conn.transaction():
            if roll < 0.5 or self._next_order < 20:
                order = self._next_order
                self._next_order += 1
                lines = rng.randint(1, 4)
                conn.execute(
                    "INSERT INTO shop.orders (id, customer_id, status, total, details) "
                    "VALUES (%s, %s, 'new', 0, %s)",
                    (order, rng.randint(1, 2000), json.dumps({"channel": "web"})),
                )
                for line in range(lines):
                    conn.execute(
                        "INSERT INTO shop.order_items SELECT %s, %s, p.id, %s, p.price "
                        "FROM shop.products p WHERE p.id = %s",
                        (order, line, rng.randint(1, 3), rng.randint(1, 500)),
                    )
                conn.execute(
                    "UPDATE shop.orders o SET total = (SELECT sum(qty * price) FROM "
                    "shop.order_items i WHERE i.order_id = o.id) WHERE id = %s", (order,)
                )
            elif roll < 0.8:
                conn.execute(
                    "UPDATE shop.orders SET status = %s WHERE id = %s",
                    (rng.choice(STATUSES), rng.randint(1, self._next_order - 1)),
                )
            elif roll < 0.88:
                conn.execute(
                    "UPDATE shop.orders SET details = %s WHERE id = %s",
                    (_large_details(rng), rng.randint(1, self._next_order - 1)),
                )
            elif roll < 0.95:
                conn.execute(
                    "UPDATE shop.products SET stock = stock - 1, price = price * 1.01 "
                    "WHERE id = %s", (rng.randint(1, 500),)
                )
            else:
                order = rng.randint(1, self._next_order - 1)
                conn.execute("DELETE FROM shop.order_items WHERE order_id = %s", (order,))
                conn.execute("DELETE FROM shop.orders WHERE id = %s", (order,))


@contextlib.contextmanager
def _target(kind: str, workdir: Path) -> Iterator[dict[str, Any]]:
    if kind == "starrocks":
        from dbmazz.testing.starrocks import StarRocksEmulator

        with StarRocksEmulator() as emulator:
            yield {
                "sink": "starrocks",
                "starrocks_url": emulator.url,
                "starrocks_mysql_port": emulator.mysql_port,
                "starrocks_db": "shop",
                "_emulator": emulator,
            }
    else:
        yield {"sink": "duckdb", "duckdb_path": str(workdir / "demo.duckdb")}


def _counts_check(dsn: str, engine: Engine, console: Console, target: dict[str, Any]) -> bool:
    from dbmazz.engine.build import make_sink  # noqa: F401 - keeps import cost out of startup

    ok = True
    report = Table(title="source vs target row counts")
    for column in ("table", "source", "target", "match"):
        report.add_column(column)
    with psycopg.connect(dsn) as conn:
        for name in TABLES:
            schema, table = name.split(".")
            [(source_rows,)] = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            ).fetchall()
            target_rows = _target_count(engine, target, schema, table)
            match = source_rows == target_rows
            ok &= match
            report.add_row(name, str(source_rows), str(target_rows), "yes" if match else "NO")
    console.print(report)
    return ok


def _target_count(engine: Engine, target: dict[str, Any], schema: str, table: str) -> int:
    live = "WHERE dbmazz_is_deleted IS NOT TRUE"
    if target["sink"] == "duckdb":
        rows = engine.sink.query(  # type: ignore[attr-defined]
            f"SELECT count(*) FROM {quote(schema)}.{quote(table)} {live}"
        )
        return int(rows[0][0])
    emulator = target["_emulator"]
    return sum(1 for row in emulator.rows("shop", table) if not row.get("dbmazz_is_deleted"))


def run_demo(duration_s: float | None = None, sink: str | None = None, rate: float = 100.0) -> int:
    from dbmazz.engine.build import build_live_engine
    from dbmazz.testing.postgres import temporary_cluster

    console = Console()
    sink = sink or os.environ.get("DEMO_SINK", "duckdb")
    if sink == "starrocks":
        # Before the PostgreSQL cluster starts: the emulator is an optional extra.
        from dbmazz.testing.starrocks.requirements import require_emulator

        require_emulator()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="dbmazz-demo-") as tmp:
        console.print("[bold]starting a private PostgreSQL cluster…[/bold]")
        with temporary_cluster() as cluster, _target(sink, Path(tmp)) as target:
            dbname = cluster.create_database("shop")
            dsn = cluster.dsn(dbname)
            with psycopg.connect(dsn, autocommit=True) as conn:
                seed(conn, random.Random(1))
            overrides = {k: v for k, v in target.items() if not k.startswith("_")}
            config = Config.load(
                {"source_url": dsn, "tables": ",".join(TABLES), "flush_interval_ms": 500,
                 "snapshot": "initial", **overrides},
                env_file=None,
            )
            engine = build_live_engine(config)
            # The engine runs under the same service and gRPC control plane as `dbmazz run`,
            # so the dashboard below is the real `dbmazz top`, reading it over gRPC.
            service = EngineService(config, builder=lambda: engine)
            server = GrpcServer(service, port=0)
            server.start()
            service.start()
            service.add_listener(lambda: stop.set() if service.failed else None)
            traffic = Traffic(dsn, rate)
            traffic.start()
            console.print(f"replicating {', '.join(TABLES)} into {sink} "
                          f"({target.get('duckdb_path') or target.get('starrocks_url')}); "
                          f"also try `dbmazz top --address {server.address}` or "
                          f"`dbmazz.connect({server.address!r})`. Ctrl-C stops.")
            timer = None
            if duration_s is not None:
                timer = threading.Timer(duration_s, stop.set)
                timer.daemon = True
                timer.start()
            try:
                with Client(server.address) as client:
                    dashboard.run(client, console, interval_s=0.5, until=stop)
            finally:
                if timer is not None:
                    timer.cancel()
                traffic.join()
            # Make sure everything the traffic committed is loaded before counting.
            with psycopg.connect(dsn, autocommit=True) as conn:
                [(marker,)] = conn.execute(
                    "SELECT pg_logical_emit_message(true, 'dbmazz_demo', 'end')::text"
                ).fetchall()
            if not service.failed:
                engine.wait_durable(parse_lsn(str(marker)), 120)
            service.drain(timeout=120)
            server.stop(grace=0)
            console.print()
            ok = _counts_check(dsn, engine, console, target)
            engine.sink.close()
            if traffic.error is not None:
                console.print(f"[red]traffic generator failed: {traffic.error}[/red]")
            if engine.progress.last_error:
                console.print(f"[red]dbmazz: {engine.progress.last_error}[/red]")
            console.print("[green]counts match[/green]" if ok else "[red]counts differ[/red]")
            return 0 if ok and traffic.error is None else 1


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(duration_s=args.duration, sink=args.sink, rate=args.rate)


if __name__ == "__main__":
    sys.exit(run_demo())
