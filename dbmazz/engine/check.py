"""``dbmazz setup --check`` of the target: everything a run needs, nothing changed, every
problem reported (not only the first).

StarRocks is checked on both ports with the configured credentials: the FE MySQL port
(``SHOW DATABASES``, which also says whether ``STARROCKS_DB`` exists) and the HTTP port
Stream Load uses (an authenticated ``GET /api/{db}/get_load_state`` for a label no load
ever used: it loads nothing and answers ``UNKNOWN``; on a database that does not exist yet
``information_schema`` is asked instead). DuckDB is opened read-only when its file exists;
otherwise only its directory is checked, so the check creates no file.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from dbmazz.config import Config
from dbmazz.errors import DbmazzError

if TYPE_CHECKING:
    from dbmazz.pipeline.batch import TableSchema
    from dbmazz.sink.starrocks.catalog import Catalog
    from dbmazz.sink.starrocks.settings import StarRocksSettings


@dataclass
class TargetCheck:
    """What the check found: lines to print and problems (empty: the target is ready)."""

    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_target(config: Config, tables: Sequence[TableSchema] = ()) -> TargetCheck:
    """``tables``: the target tables the run would load (their types are checked where they
    exist already)."""
    if config.sink == "starrocks":
        return check_starrocks(config, tables)
    return check_duckdb(config, tables)


def check_starrocks(config: Config, tables: Sequence[TableSchema] = ()) -> TargetCheck:
    from dbmazz.sink.starrocks.catalog import Catalog
    from dbmazz.sink.starrocks.mysql import FeClient
    from dbmazz.sink.starrocks.settings import StarRocksSettings

    result = TargetCheck()
    settings = StarRocksSettings.from_config(config)
    host, port = settings.mysql_address
    db_exists = False
    try:
        client = FeClient(host, port, settings.user, settings.password,
                          connect_timeout=settings.connect_timeout)
        catalog = Catalog(client, settings.database)
        try:
            version = catalog.version()
            db_exists = catalog.database_exists()  # SHOW DATABASES
            if db_exists:
                _check_starrocks_tables(catalog, tables, settings, result)
        finally:
            client.close()
    except DbmazzError as exc:
        result.problems.append(f"StarRocks MySQL port {host}:{port} (STARROCKS_MYSQL_PORT): "
                               f"{_text(exc)}")
    else:
        result.found.append(f"target: StarRocks {version} answers SQL on {host}:{port} as "
                            f"{settings.user!r}; database {settings.database!r} "
                            + ("exists" if db_exists else "does not exist yet (setup creates "
                               "it)"))
    problem = _check_http(settings, settings.database if db_exists else "information_schema")
    if problem is None:
        result.found.append(f"target: StarRocks HTTP port {settings.fe_url} accepts the "
                            "credentials (Stream Load endpoint reachable)")
    else:
        result.problems.append(problem)
    return result


def _check_starrocks_tables(catalog: Catalog, tables: Sequence[TableSchema],
                            settings: StarRocksSettings, result: TargetCheck) -> None:
    from dbmazz.sink.rejected import REJECTED_TABLE
    from dbmazz.sink.starrocks.typecheck import type_mismatches

    for schema in tables:
        target = catalog.describe(schema.target_name)
        if target is None:
            if settings.setup == "skip" or not settings.create_tables:
                result.problems.append(
                    f"StarRocks table {catalog.db}.{schema.target_name} (for "
                    f"{schema.source_name}) does not exist — create it, or run with "
                    "SETUP=auto and CREATE_TABLES=true")
            continue
        for mismatch in type_mismatches(schema, target, settings.type_options):
            if mismatch.severity == "warning":
                result.found.append(f"warning: {mismatch.text}")
            else:
                result.problems.append(mismatch.text)
    if settings.rejected_rows == "table" and settings.setup == "skip" \
            and catalog.describe(REJECTED_TABLE) is None:
        result.problems.append(
            f"StarRocks table {catalog.db}.{REJECTED_TABLE} (REJECTED_ROWS=table) does not "
            "exist — create it (docs/operations.md), or run with SETUP=auto")


def _check_http(settings: StarRocksSettings, db: str) -> str | None:
    """None when an authenticated request on the HTTP port succeeds, else the problem."""
    from dbmazz.sink.starrocks.http import Transport, TransportError
    from dbmazz.sink.starrocks.response import is_auth_failure, parse_reply

    where = f"StarRocks HTTP port {settings.fe_url} (STARROCKS_URL)"
    label = f"dbmazz_check_{secrets.token_hex(8)}"  # never used by a load
    url = f"{settings.fe_url}/api/{quote(db, safe='')}/get_load_state?label={label}"
    transport = Transport(settings.user, settings.password,
                          connect_timeout=settings.connect_timeout,
                          timeout=settings.connect_timeout)
    try:
        response = transport.send_following("GET", url)
    except TransportError as exc:
        return (f"{where} does not answer: {exc} — start the FE or correct STARROCKS_URL "
                "(Stream Load needs this port as well as the MySQL port)")
    finally:
        transport.close()
    reply = parse_reply(response)
    if response.status == 401 or is_auth_failure(reply):
        return (f"{where} refused the credentials of user {settings.user!r}: "
                f"{reply.message or response.status} — correct STARROCKS_USER / "
                "STARROCKS_PASSWORD")
    if response.status != 200 or not reply.state:
        return (f"{where} answered HTTP {response.status} "
                f"{reply.message or response.body[:200]!r} to an authenticated request — is "
                "STARROCKS_URL the FE's HTTP address (http://fe:8030)?")
    return None


def check_duckdb(config: Config, tables: Sequence[TableSchema] = ()) -> TargetCheck:
    """Open an existing file read-only; for a file not there yet, check only that its
    directory exists and is writable (creating nothing)."""
    result = TargetCheck()
    path = Path(config.duckdb_path)
    if path.exists():
        import duckdb

        from dbmazz.sink.duckdb_types import duckdb_mismatches

        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            result.problems.append(f"DuckDB file {path} (DUCKDB_PATH) cannot be opened: {exc}")
            return result
        try:
            result.problems += [m.text for m in duckdb_mismatches(con, tables)]
        finally:
            con.close()
        result.found.append(f"target: DuckDB {path} opens")
        return result
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        result.problems.append(f"DuckDB file {path} (DUCKDB_PATH): directory {directory} does "
                               "not exist — create it or correct DUCKDB_PATH")
    elif not os.access(directory, os.W_OK | os.X_OK):
        result.problems.append(f"DuckDB file {path} (DUCKDB_PATH): directory {directory} is "
                               "not writable — correct its permissions or DUCKDB_PATH")
    else:
        result.found.append(f"target: DuckDB {path} does not exist yet (`dbmazz setup` or "
                            "`run` creates it)")
    return result


def _text(exc: DbmazzError) -> str:
    return f"{exc.message} — {exc.hint}" if exc.hint else exc.message
