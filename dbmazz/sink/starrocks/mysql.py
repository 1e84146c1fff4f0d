"""A small client for the StarRocks FE MySQL port (:9030): DDL and catalog reads.

One connection, serialized by a lock: setup and schema changes are rare and a StarRocks
table accepts one schema change at a time anyway. Statements are sent without client-side
parameter interpolation, so identifiers containing ``%`` cannot break formatting; values are
quoted with :func:`quote_literal` and names with :func:`quote_ident`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.converters import escape_string


def quote_ident(name: str) -> str:
    """A backtick-quoted identifier; backticks inside are doubled."""
    if "\x00" in name:
        raise ValueError(f"identifier contains a NUL byte: {name!r}")
    return "`" + name.replace("`", "``") + "`"


def quote_literal(value: str) -> str:
    """A single-quoted SQL string literal (backslash escapes, as StarRocks reads them)."""
    return "'" + escape_string(value) + "'"


class FeError(Exception):
    """A statement the FE refused; ``code`` is the MySQL error number (0 if unknown)."""

    def __init__(self, code: int, message: str, statement: str) -> None:
        self.code = code
        self.message = message
        self.statement = statement
        super().__init__(f"({code}) {message}")


class FeConnectionError(Exception):
    """The FE MySQL port could not be reached, refused the login, or dropped the connection."""

    def __init__(self, message: str, *, auth: bool = False) -> None:
        super().__init__(message)
        #: The server refused the credentials: retrying cannot help.
        self.auth = auth


class FeClient:
    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        password: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"FeClient({self.user}@{self.address})"

    def _connection(self) -> pymysql.connections.Connection[Any]:
        if self._conn is not None:
            try:
                self._conn.ping(reconnect=False)
                return self._conn
            except pymysql.err.Error:
                self._drop()  # reconnect below
        try:
            self._conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self._password,
                connect_timeout=max(1, int(self._connect_timeout)),
                read_timeout=max(1, int(self._read_timeout)),
                autocommit=True,
                charset="utf8mb4",
                cursorclass=pymysql.cursors.DictCursor,
            )
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            raise FeConnectionError(
                f"cannot connect to the StarRocks FE MySQL port {self.address} as "
                f"{self.user!r}: {_text(exc)}",
                auth=code in (1044, 1045),
            ) from None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                conn.close()

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run a statement and return its rows as dicts (column label → value)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return list(cur.fetchall())
            except pymysql.err.OperationalError as exc:
                code = exc.args[0] if exc.args else 0
                # 2006/2013: the connection died under the statement.
                if code in (2006, 2013, 2014, 2055):
                    self._drop()
                    raise FeConnectionError(
                        f"lost the connection to the StarRocks FE {self.address}: {_text(exc)}"
                    ) from None
                raise FeError(int(code), _text(exc), sql) from None
            except pymysql.err.Error as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
                raise FeError(code, _text(exc), sql) from None

    def execute(self, sql: str) -> None:
        self.query(sql)

    def close(self) -> None:
        with self._lock:
            self._drop()


def _text(exc: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    return str(args[1]) if len(args) >= 2 else str(exc)
