"""``StarRocksEmulator``: one FE HTTP port, N BE HTTP ports and a MySQL port, in-process."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

from dbmazz.testing.starrocks.clock import Clock
from dbmazz.testing.starrocks.core import Cluster, EmulatorConfig
from dbmazz.testing.starrocks.faults import Faults
from dbmazz.testing.starrocks.http_be import BEHandler
from dbmazz.testing.starrocks.http_fe import FEHandler
from dbmazz.testing.starrocks.httpbase import EmulatorHTTPServer
from dbmazz.testing.starrocks.mysql import MySQLFrontend


class StarRocksEmulator:
    """A StarRocks cluster emulator for tests and demos, bound to 127.0.0.1 only.

    Use as a context manager, or call ``start()``/``stop()``. Port 0 picks free ports.
    """

    def __init__(
        self,
        *,
        http_port: int = 0,
        mysql_port: int = 0,
        be_count: int = 1,
        be_ports: list[int] | None = None,
        user: str = "root",
        password: str = "",
        label_keep_max_second: float = 259200.0,
        max_running_txn_num_per_db: int = 1000,
        txn_default_timeout: float = 20.0,
        alter_delay: float = 0.0,
        version: str = "3.3.0-emulator",
        clock: Clock | None = None,
    ) -> None:
        if be_count < 1:
            raise ValueError("be_count must be at least 1")
        self.config = EmulatorConfig(
            user=user,
            password=password,
            be_count=be_count,
            label_keep_max_second=label_keep_max_second,
            max_running_txn_num_per_db=max_running_txn_num_per_db,
            txn_default_timeout=txn_default_timeout,
            alter_delay=alter_delay,
            version=version,
        )
        self.cluster = Cluster(self.config, clock)
        self._http_port = http_port
        self._mysql_port = mysql_port
        self._be_ports = be_ports or [0] * be_count
        self.config.be_count = len(self._be_ports)
        self._servers: list[EmulatorHTTPServer] = []
        self._mysql: MySQLFrontend | None = None
        self._closed: socket.socket | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> StarRocksEmulator:
        if self._started:
            return self
        try:
            # A bound socket that never listens: connecting to it is refused.
            self._closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._closed.bind(("127.0.0.1", 0))
            self.cluster.closed_port = self._closed.getsockname()[1]
            bes = [
                EmulatorHTTPServer(BEHandler, self.cluster, f"be{i}", port)
                for i, port in enumerate(self._be_ports)
            ]
            self._servers.extend(bes)
            self.cluster.be_ports = [s.port for s in bes]
            self._servers.append(EmulatorHTTPServer(FEHandler, self.cluster, "fe",
                                                    self._http_port))
            for server in self._servers:
                server.start()
            self._mysql = MySQLFrontend(self.cluster, self._mysql_port)
            self._mysql.start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """Stop every server and join every thread; safe to call twice."""
        for server in self._servers:
            server.stop()
        self._servers.clear()
        if self._mysql is not None:
            self._mysql.stop()
            self._mysql = None
        if self._closed is not None:
            self._closed.close()
            self._closed = None
        self._started = False

    def __enter__(self) -> StarRocksEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------

    @property
    def fe_http_port(self) -> int:
        return self._servers[-1].port

    @property
    def be_http_ports(self) -> list[int]:
        return list(self.cluster.be_ports)

    @property
    def mysql_port(self) -> int:
        assert self._mysql is not None
        return self._mysql.port

    @property
    def url(self) -> str:
        """The FE HTTP base URL, e.g. ``http://127.0.0.1:8030``."""
        return f"http://127.0.0.1:{self.fe_http_port}"

    @property
    def closed_port(self) -> int:
        return self.cluster.closed_port

    # -- test helpers ---------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.cluster.faults

    @property
    def clock(self) -> Clock:
        return self.cluster.clock

    def rows(self, db: str, table: str) -> list[dict[str, Any]]:
        """The table's rows (column name -> Python value), in primary-key order.

        Raises KeyError for an unknown database or table.
        """
        return self.cluster.rows(db, table)

    def label_state(self, db: str, label: str) -> str:
        """What ``get_load_state`` would answer (ignoring faults)."""
        return self.cluster.txns.label_state(db, label)[0].value

    def publish_pending(self) -> int:
        """Publish COMMITTED loads (publish timed out): their rows become visible, their
        labels VISIBLE; returns how many."""
        return self.cluster.publish_pending()

    def error_log(self, url_or_name: str) -> str | None:
        name = url_or_name.rsplit("file=", 1)[-1]
        return self.cluster.error_logs.get(name)

    def execute(self, sql: str, db: str | None = None) -> list[tuple[Any, ...]]:
        """Run SQL through the MySQL port (pymysql); returns the rows of the last statement."""
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1", port=self.mysql_port, user=self.config.user,
            password=self.config.password, database=db, autocommit=True, ssl_disabled=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()
