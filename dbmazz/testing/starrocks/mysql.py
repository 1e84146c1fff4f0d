"""The FE MySQL port, on mysql-mimic: DDL, SHOW, information_schema and SELECT.

mysql-mimic's own information_schema and SHOW middlewares are removed so this session
answers them the StarRocks way. The server runs its asyncio loop in a thread of its own.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

import sqlglot
from mysql_mimic import MysqlServer, ResultColumn, Session
from mysql_mimic.auth import IdentityProvider, NativePasswordAuthPlugin, NoLoginAuthPlugin, User
from mysql_mimic.charset import CharacterSet
from mysql_mimic.errors import ErrorCode, MysqlError
from mysql_mimic.results import AllowedResult
from mysql_mimic.session import Query, mysql_function_mapping
from mysql_mimic.stream import ConnectionClosed
from mysql_mimic.types import ColumnType
from mysql_mimic.variable_processor import VariableProcessor
from mysql_mimic.variables import SYSTEM_VARIABLES, GlobalVariables, SessionVariables
from sqlglot import exp
from sqlglot.dialects.starrocks import StarRocks

from dbmazz.testing.starrocks import ddl
from dbmazz.testing.starrocks.catalog import Table
from dbmazz.testing.starrocks.coltypes import ConversionError, convert_json, info_schema, render
from dbmazz.testing.starrocks.core import Cluster
from dbmazz.testing.starrocks.errors import (
    ER_BAD_DB_ERROR,
    ER_NOT_SUPPORTED_YET,
    SRError,
)
from dbmazz.testing.starrocks.query import (
    ALTER_JOB_COLUMNS,
    INFO_SCHEMA,
    Result,
    alter_job_rows,
    filter_rows,
    run_select,
)
from dbmazz.testing.starrocks.store import ApplyMode, RowOp

_SHOW_ALTER = re.compile(
    r"^\s*SHOW\s+ALTER\s+TABLE\s+COLUMN(?:\s+(?:FROM|IN)\s+(?P<db>`[^`]+`|\S+))?(?P<tail>.*?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_DDL = (exp.Create, exp.Alter, exp.Command, exp.Drop, exp.Insert, exp.TruncateTable)

# StarRocks reports a MySQL-5.1-compatible server version in the handshake.
_VARIABLES = dict(SYSTEM_VARIABLES)
_VARIABLES["version"] = (str, "5.1.0", False)
_VARIABLES["version_comment"] = (str, "StarRocks emulator (dbmazz.testing.starrocks)", False)

_DUCK_TO_MYSQL = {
    "BOOLEAN": ColumnType.TINY, "TINYINT": ColumnType.TINY, "SMALLINT": ColumnType.SHORT,
    "INTEGER": ColumnType.LONG, "BIGINT": ColumnType.LONGLONG, "HUGEINT": ColumnType.LONGLONG,
    "FLOAT": ColumnType.FLOAT, "DOUBLE": ColumnType.DOUBLE, "DATE": ColumnType.DATE,
    "TIMESTAMP": ColumnType.DATETIME, "BLOB": ColumnType.BLOB, "VARCHAR": ColumnType.VARCHAR,
    "UTINYINT": ColumnType.SHORT, "USMALLINT": ColumnType.LONG, "UINTEGER": ColumnType.LONGLONG,
    "UBIGINT": ColumnType.LONGLONG,
}


def _mysql_error(e: SRError) -> MysqlError:
    # mysql-mimic's enum lacks most server error numbers; the packet writer takes any int.
    return MysqlError(e.message, cast(ErrorCode, e.code))


def _columns(result: Result) -> list[ResultColumn]:
    out = []
    for name, duck in result.columns:
        base = duck.split("(")[0].upper()
        if duck.endswith("]"):  # an ARRAY (DECIMAL(20,10)[] too) goes out as text
            kind = ColumnType.VARCHAR
        elif base == "DECIMAL":
            kind = ColumnType.NEWDECIMAL
        else:
            kind = _DUCK_TO_MYSQL.get(base, ColumnType.VARCHAR)
        if kind == ColumnType.BLOB:
            # VARBINARY goes out with the binary charset, so clients keep bytes, not text.
            out.append(ResultColumn(name=name, type=kind, character_set=CharacterSet.binary))
        else:
            out.append(ResultColumn(name=name, type=kind))
    return out


def _result(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> AllowedResult:
    typed = [ResultColumn(c, _infer(rows, i)) for i, c in enumerate(columns)]
    return [tuple(r) for r in rows], typed


def _infer(rows: Sequence[Sequence[Any]], index: int) -> ColumnType:
    for row in rows:
        value = row[index]
        if value is None:
            continue
        if isinstance(value, bool):
            return ColumnType.TINY
        if isinstance(value, int):
            return ColumnType.LONGLONG
        return ColumnType.VARCHAR
    return ColumnType.VARCHAR


class _Identity(IdentityProvider):
    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def get_plugins(self) -> list[Any]:
        return [NativePasswordAuthPlugin(), NoLoginAuthPlugin()]

    async def get_user(self, username: str) -> User | None:
        if username != self.user:
            return None
        auth = NativePasswordAuthPlugin.create_auth_string(self.password) if self.password else None
        return User(name=username, auth_string=auth, auth_plugin=NativePasswordAuthPlugin.name)


class StarRocksSession(Session):
    dialect = StarRocks

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(SessionVariables(GlobalVariables(_VARIABLES)))
        self.cluster = cluster
        # Without these two, information_schema and SHOW reach query() and _show().
        removed = (self._info_schema_middleware, self._show_middleware)
        self.middlewares = [
            m for m in self.middlewares  # type: ignore[has-type]
            if m not in removed
        ]

    @property
    def catalog(self) -> Any:
        return self.cluster.catalog

    async def use(self, database: str) -> None:
        if database.lower() != INFO_SCHEMA and database not in self.catalog.databases:
            raise MysqlError(f"Unknown database '{database}'", ErrorCode.UNKNOWN_ERROR)
        self.database = database

    def _parse(self, sql: str) -> list[exp.Expression]:
        # Statements sqlglot cannot parse skip it (and its fallback warning) altogether.
        stripped = sql.strip().rstrip(";").strip()
        if _SHOW_ALTER.match(stripped) or ddl.is_add_column_list(stripped):
            keyword, _, rest = stripped.partition(" ")
            return [exp.Command(this=keyword.upper(), expression=rest)]
        try:
            return super()._parse(sql)
        except sqlglot.errors.ParseError as e:
            raise MysqlError(f"Getting syntax error. {e}", ErrorCode.PARSE_ERROR) from e

    async def _set_var_middleware(self, q: Query) -> AllowedResult:
        # DDL keeps functions such as DEFAULT CURRENT_TIMESTAMP as written.
        if isinstance(q.expression, _DDL):
            return await q.next()
        functions = dict(mysql_function_mapping(self))
        functions["CURRENT_VERSION"] = lambda: self.cluster.config.version
        with VariableProcessor(functions, self.variables, q.expression).set_variables():
            return await q.next()

    async def query(self, expression: exp.Expression, sql: str, attrs: dict[str, str]
                    ) -> AllowedResult:
        try:
            self.catalog.advance()
            return self._dispatch(expression, sql)
        except SRError as e:
            raise _mysql_error(e) from e

    async def _show(self, expression: exp.Show) -> AllowedResult:
        try:
            return self._show_statement(expression)
        except SRError as e:
            raise _mysql_error(e) from e

    # -- statements -----------------------------------------------------------------------

    def _dispatch(self, expression: exp.Expression, sql: str) -> AllowedResult:
        if isinstance(expression, exp.Query):
            result = run_select(self.catalog, expression, self.database)
            return result.rows, _columns(result)
        if isinstance(expression, exp.Create):
            return self._create(expression)
        if isinstance(expression, exp.Drop):
            return self._drop(expression)
        if isinstance(expression, exp.Alter):
            return self._alter(expression)
        if isinstance(expression, exp.Show):
            return self._show_statement(expression)
        if isinstance(expression, exp.TruncateTable):
            for node in expression.expressions:
                db, name = ddl.table_ref(node, self.database)
                with self.catalog.lock:
                    table = self.catalog.table(db, name)
                    # Loads committed before the truncate are truncated with the rest.
                    self.cluster.publish_pending(table)
                    table.data.truncate()
            return [], []
        if isinstance(expression, exp.Insert):
            return self._insert(expression)
        if isinstance(expression, exp.Command):
            rest = expression.expression
            rest_text = rest.name if isinstance(rest, exp.Expression) else str(rest or "")
            keyword = str(expression.this).upper()
            text = f"{keyword} {rest_text}"
            if keyword == "ALTER":
                return self._alter(ddl.parse_alter(text))
            if keyword == "SHOW":
                return self._show_command(text)
        raise SRError(
            f"The StarRocks emulator does not support this statement: {sql.strip()[:200]}",
            ER_NOT_SUPPORTED_YET,
        )

    def _create(self, stmt: exp.Create) -> AllowedResult:
        kind = str(stmt.args.get("kind") or "").upper()
        exists = bool(stmt.args.get("exists"))
        if kind in ("DATABASE", "SCHEMA"):
            target = stmt.this
            self.catalog.create_database(target.name, if_not_exists=exists)
            return [], []
        if kind == "TABLE":
            table = ddl.table_from_create(stmt, self.database, self.cluster.ids)
            self.catalog.create_table(table, if_not_exists=exists)
            return [], []
        raise SRError(f"The StarRocks emulator does not support CREATE {kind}",
                      ER_NOT_SUPPORTED_YET)

    def _drop(self, stmt: exp.Drop) -> AllowedResult:
        kind = str(stmt.args.get("kind") or "").upper()
        exists = bool(stmt.args.get("exists"))
        for node in stmt.args.get("tables") or [stmt.this]:
            if kind in ("DATABASE", "SCHEMA"):
                self.catalog.drop_database(node.name, if_exists=exists)
            elif kind == "TABLE":
                db, name = ddl.table_ref(node, self.database)
                if db not in self.catalog.databases and exists:
                    continue
                self.catalog.drop_table(db, name, if_exists=exists)
            else:
                raise SRError(f"The StarRocks emulator does not support DROP {kind}",
                              ER_NOT_SUPPORTED_YET)
        return [], []

    def _alter(self, stmt: exp.Alter) -> AllowedResult:
        if not isinstance(stmt.this, exp.Table):
            raise SRError("ALTER needs a table")
        db, name = ddl.table_ref(stmt.this, self.database)
        self.catalog.submit_alter(db, name, ddl.alter_actions(stmt))
        return [], []

    def _insert(self, stmt: exp.Insert) -> AllowedResult:
        target = stmt.this
        names: list[str] | None = None
        if isinstance(target, exp.Schema):
            names = [c.name for c in target.expressions]
            target = target.this
        values = stmt.expression
        if not isinstance(target, exp.Table) or not isinstance(values, exp.Values):
            raise SRError("The StarRocks emulator supports only INSERT INTO t [(cols)] VALUES",
                          ER_NOT_SUPPORTED_YET)
        db, name = ddl.table_ref(target, self.database)
        with self.catalog.lock:
            table = self.catalog.table(db, name)
            self.cluster.publish_pending(table)  # versions apply in commit order
            ops = [self._insert_row(table, names, row) for row in values.expressions]
            now = self.cluster.clock.time()
            table.data.apply(ops, ApplyMode(), lambda v: table.complete_row(v, now))
            table.update_time = now
        return [], []

    def _insert_row(self, table: Table, names: list[str] | None, row: exp.Expression
                    ) -> RowOp:
        items = row.expressions if isinstance(row, exp.Tuple) else [row]
        columns = [table.column(n) for n in names] if names else list(table.columns)
        if len(items) != len(columns):
            raise SRError("Column count doesn't match value count")
        values: dict[str, Any] = {}
        for column, item in zip(columns, items, strict=True):
            if column is None:
                raise SRError("Unknown column in INSERT")
            literal: Any
            if isinstance(item, exp.Null):
                literal = None
            elif isinstance(item, exp.Literal):
                literal = item.this if item.is_string else item.to_py()
            elif isinstance(item, exp.Boolean):
                literal = bool(item.this)
            elif isinstance(item, exp.Neg) and isinstance(item.this, exp.Literal):
                # copy_negate is exact; unary minus would round to the context's 28 digits.
                literal = Decimal(str(item.this.to_py())).copy_negate()
            else:
                raise SRError(f"The StarRocks emulator supports only literals in VALUES: "
                              f"{item.sql('starrocks')}", ER_NOT_SUPPORTED_YET)
            try:
                value = None if literal is None else convert_json(literal, column.type)
            except ConversionError as e:
                raise SRError(str(e)) from e
            if value is None and not column.nullable:
                raise SRError(f"Column '{column.name}' is not nullable")
            values[column.lname] = value
        return RowOp("upsert", values)

    # -- SHOW -----------------------------------------------------------------------------

    def _db_of(self, expression: exp.Show) -> str:
        db = expression.args.get("db")
        name = db.name if isinstance(db, exp.Expression) else self.database
        if not name:
            raise SRError("No database selected", 1046)
        return name

    def _show_statement(self, expression: exp.Show) -> AllowedResult:
        kind = expression.name.upper()
        if kind in ("VARIABLES", "STATUS", "WARNINGS", "ERRORS"):
            handler = {
                "VARIABLES": self._show_variables, "STATUS": self._show_status,
                "WARNINGS": self._show_warnings, "ERRORS": self._show_errors,
            }[kind]
            return handler(expression)
        if kind == "DATABASES":
            names = [INFO_SCHEMA, *sorted(self.catalog.databases)]
            return _result([(n,) for n in names], ["Database"])
        if kind == "TABLES":
            db = self._db_of(expression)
            tables = sorted(self.catalog.database(db).tables)
            like = expression.text("like")
            if like:
                pattern = re.compile(
                    "^" + re.escape(like).replace("%", ".*").replace("_", ".") + "$", re.I
                )
                tables = [t for t in tables if pattern.match(t)]
            if expression.args.get("full"):
                return _result([(t, "BASE TABLE") for t in tables], [f"Tables_in_{db}",
                                                                     "Table_type"])
            return _result([(t,) for t in tables], [f"Tables_in_{db}"])
        if kind == "COLUMNS":
            table = self.catalog.table(self._db_of(expression), expression.text("target"))
            return self._describe(table, full=bool(expression.args.get("full")))
        if kind == "CREATE TABLE":
            table = self.catalog.table(self._db_of(expression), expression.text("target"))
            return _result([(table.name, table.create_sql())], ["Table", "Create Table"])
        raise SRError(f"The StarRocks emulator does not support SHOW {kind}",
                      ER_NOT_SUPPORTED_YET)

    def _describe(self, table: Table, full: bool) -> AllowedResult:
        rows: list[tuple[Any, ...]] = []
        for c in table.columns:
            default = None
            if c.default is not None:
                default = "CURRENT_TIMESTAMP" if c.default.current_timestamp else (
                    None if c.default.value is None else render(c.default.value)
                )
            column_type = info_schema(c.type)[1]
            null = "YES" if c.nullable else "NO"
            key = "true" if c.is_key else "false"
            if full:
                rows.append((c.name, column_type, "", null, key, default, "", "", c.comment))
            else:
                rows.append((c.name, column_type, null, key, default, ""))
        if full:
            names = ["Field", "Type", "Collation", "Null", "Key", "Default", "Extra",
                     "Privileges", "Comment"]
        else:
            names = ["Field", "Type", "Null", "Key", "Default", "Extra"]
        return rows, [ResultColumn(n, ColumnType.VARCHAR) for n in names]

    def _show_command(self, text: str) -> AllowedResult:
        match = _SHOW_ALTER.match(text)
        if match is None:
            raise SRError(f"The StarRocks emulator does not support: {text.strip()[:200]}",
                          ER_NOT_SUPPORTED_YET)
        db = (match.group("db") or "").strip("`") or self.database
        if not db:
            raise SRError("No database selected", 1046)
        if db not in self.catalog.databases:
            raise SRError(f"Unknown database '{db}'", ER_BAD_DB_ERROR)
        result = filter_rows(ALTER_JOB_COLUMNS, alter_job_rows(self.catalog, db),
                             match.group("tail") or "")
        return result.rows, _columns(result)


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Clients that hang up (port probes, shutdown) are not errors worth a traceback."""
    error = context.get("exception")
    if isinstance(error, asyncio.CancelledError | ConnectionError | ConnectionClosed):
        return
    loop.default_exception_handler(context)


class MySQLFrontend:
    """mysql-mimic on 127.0.0.1, served from its own event-loop thread."""

    def __init__(self, cluster: Cluster, port: int = 0) -> None:
        self.cluster = cluster
        self.requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: MysqlServer | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="starrocks-emulator-mysql", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_disconnects)
        config = self.cluster.config
        self._server = MysqlServer(
            session_factory=lambda: StarRocksSession(self.cluster),
            identity_provider=_Identity(config.user, config.password),
        )
        try:
            loop.run_until_complete(
                self._server.start_server(host="127.0.0.1", port=self.requested_port)
            )
            self.port = int(self._server.sockets()[0].getsockname()[1])
        except BaseException as e:  # noqa: BLE001 - surfaced to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.get_running_loop().stop()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join()
