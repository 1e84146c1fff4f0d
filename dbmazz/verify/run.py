"""One verify from start to end: schemas, snapshot, wait, compare, repair, report.

Used by ``dbmazz verify`` (in its own process, when no engine answers), by the engine's
Verify RPC (in the engine's process, through its own target connection and sink) and by
notebooks through ``client.verify()``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from dbmazz.config import Config
from dbmazz.errors import DbmazzError, SetupError, SourceConnectionError
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
from dbmazz.source.catalog import describe_relations, split_table_name
from dbmazz.source.database import SourceDatabase
from dbmazz.source.types import TypeRegistry
from dbmazz.verify.compare import Options, TableCheck, TableDiff
from dbmazz.verify.durable import DurableEngine, wait_for_pipeline
from dbmazz.verify.repair import Write, repair
from dbmazz.verify.report import TableResult, VerifyReport
from dbmazz.verify.source import SourceSnapshot
from dbmazz.verify.target import DuckDBTarget, StarRocksTarget, TargetReader

log = logging.getLogger("dbmazz.verify")

_FIRST_USER_OID = 10000


class BadVerifyRequest(DbmazzError):
    """Arguments of a verify that cannot work (ranges, sample)."""


class RepairRefused(DbmazzError):
    """A repair that cannot be ordered against the running pipeline's writes."""


@dataclass(frozen=True)
class VerifyRequest:
    tables: tuple[str, ...] = ()
    ranges: int = 64
    sample: float = 1.0
    max_keys: int = 20
    repair: bool = False

    def options(self) -> Options:
        if self.ranges < 1:
            raise BadVerifyRequest(f"--ranges must be at least 1, got {self.ranges}")
        if not 0 < self.sample <= 1:
            raise BadVerifyRequest(f"--sample must be in (0, 1], got {self.sample}",
                                   "e.g. --sample 0.1 checks a tenth of the ranges")
        if self.max_keys < 0:
            raise BadVerifyRequest(f"--max-keys must be 0 or more, got {self.max_keys}")
        return Options(ranges=self.ranges, sample=self.sample, max_keys=self.max_keys,
                       seed=secrets.randbits(32))


def qualified(name: str) -> str:
    schema, table = split_table_name(name)
    return f"{schema}.{table}"


def load_schemas(dsn: str, tables: Sequence[str], table_map: dict[str, str],
                 publication: str | None = None) -> tuple[list[TableSchema], TypeRegistry]:
    """The in-flight shape of each table, as the engine builds it: with the columns
    ``publication`` publishes (a column list leaves some out of the target, PostgreSQL 18
    adds stored generated ones)."""
    from dbmazz.source.setup import primary_keys

    try:
        with SourceDatabase(dsn).connect("verify") as conn:
            keys = primary_keys(conn, list(tables), strict=True)
            relations = describe_relations(conn, list(tables), publication)
            registry = TypeRegistry()
            user_oids = {c.type_oid for r in relations.values() for c in r.columns
                         if c.type_oid >= _FIRST_USER_OID}
            if user_oids:
                registry.load_catalog(conn, user_oids)
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"cannot connect to PostgreSQL: {exc}") from None
    cache = SchemaCache(keys_from_map(keys), table_map, types=registry)
    return [cache.build(relations[t]) for t in tables], registry


#: The differences a publication that does not publish an operation leaves on purpose.
_KEPT_BY = {"insert": "missing", "update": "changed", "delete": "extra", "truncate": "extra"}


def unpublished(dsn: str, publication: str) -> list[str]:
    """The operations ``publication`` does not publish (none when it does not exist)."""
    with SourceDatabase(dsn).connect("verify") as conn:
        row = conn.execute("SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM "
                           "pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        return []
    return [op for op, on in zip(_KEPT_BY, row, strict=True) if not on]


def _unpublished_note(publication: str, ops: list[str]) -> str:
    kinds = sorted({_KEPT_BY[op] for op in ops})
    return (f"publication {publication!r} does not publish {', '.join(ops)}: the target "
            f"keeps what those would change, so {' and '.join(kinds)} rows are expected "
            "and a repair leaves them as they are")


def _absent_note(table: str, absent: tuple[str, ...]) -> str:
    return (f"{table}: the target lacks column(s) {', '.join(absent)} "
            "(added at the source; dbmazz adds them with the table's next change), "
            "compared as NULL")


def _repairable(diff: TableDiff | None, result: TableResult, absent: tuple[str, ...],
                report: VerifyReport, repairing: bool) -> TableDiff | None:
    """``diff`` when a repair can write it. Columns the target lacks are noted; the sink
    cannot write them, so a table with rows to re-copy is then not repaired (its
    differences stay reported)."""
    if absent:
        report.notes.append(_absent_note(result.table, absent))
    if diff is None or not (absent and diff.upserts.num_rows):
        return diff
    if repairing:
        result.error = (f"not repaired: {_absent_note(result.table, absent)}; repair "
                        "once dbmazz has added them")
    return None


def _repair_table(result: TableResult, diff: TableDiff, lsn: int, write: Write,
                  run_id: str) -> None:
    """One table's repair; a write the target refuses is that table's error (the other
    tables are still repaired, and the report is not lost)."""
    try:
        result.repaired = repair(diff, lsn, write, run_id)
    except DbmazzError as exc:
        log.warning("repair of %s failed: %s", result.table, exc.message)
        result.error = f"repair failed: {exc.message}"


def open_target(config: Config) -> TargetReader:
    """A reader of the configured target from this process."""
    if config.sink == "starrocks":
        from dbmazz.sink.starrocks.settings import StarRocksSettings

        settings = StarRocksSettings.from_config(config)
        host, port = settings.mysql_address
        return StarRocksTarget(host, port, settings.user, settings.password,
                               settings.database)
    return DuckDBTarget.open(config.duckdb_path)


def run_verify(config: Config, request: VerifyRequest, *, target: TargetReader,
               engine: DurableEngine | None = None, write: Write | None = None,
               engine_elsewhere: bool = True,
               should_stop: Callable[[], bool] = lambda: False) -> VerifyReport:
    """Verify ``request.tables`` (default: TABLES). ``engine``: the engine of this process
    (awaited directly); otherwise a running engine is detected by its active slot and
    awaited through its checkpoint (``engine_elsewhere``). ``write``: where a repair goes
    (required with ``request.repair``)."""
    started = time.monotonic()
    options = request.options()
    names = [qualified(t) for t in (request.tables or tuple(config.tables))]
    if not names:
        raise SetupError("no tables to verify", "name them with --table or set TABLES")
    if request.repair and write is None:
        raise DbmazzError("no target to write the repair to")
    schemas, registry = load_schemas(config.source_dsn, names, config.table_map,
                                     config.publication_name)
    with SourceSnapshot(config.source_dsn, registry, publication=config.publication_name,
                        max_rows_per_s=config.verify_max_rows_per_s,
                        statement_timeout_s=config.verify_statement_timeout_s) as source:
        lsn = source.lsn
        log.info("verify of %s at snapshot LSN %s", ", ".join(names), format_lsn(lsn))
        if engine is not None or engine_elsewhere:
            state, notes = wait_for_pipeline(config.source_dsn, config.slot_name, lsn,
                                             engine=engine, timeout_s=config.verify_wait_s,
                                             should_stop=should_stop,
                                             primary_dsn=config.primary_dsn)
        else:
            state, notes = "as-is", []
        if request.repair and state == "durable" and config.delete_mode == "hard":
            raise RepairRefused(
                "--repair beside a running engine needs DELETE_MODE=soft: a hard delete "
                "leaves no version to order the repair against CDC",
                "stop the engine (dbmazz drain) and run `dbmazz verify --repair` again",
            )
        report = VerifyReport(snapshot_lsn=format_lsn(lsn), target_state=state,
                              sample=request.sample, repaired=request.repair, notes=notes)
        ops = unpublished(config.source_dsn, config.publication_name)
        if ops:
            report.notes.append(_unpublished_note(config.publication_name, ops))
        diffs: list[TableDiff] = []
        for schema in schemas:
            if should_stop():
                raise DbmazzError("verify cancelled")
            check = TableCheck(schema, source.scan, target.scan, snapshot_lsn=lsn,
                               json_text=target.json_text, options=options,
                               target_name=schema.target_name)
            try:
                result = check.run()
            except DbmazzError as exc:
                result = TableResult(table=schema.source_name, target=schema.target_name,
                                     ranges=options.ranges, error=exc.message)
            except Exception as exc:
                log.exception("verify of %s failed", schema.source_name)
                result = TableResult(table=schema.source_name, target=schema.target_name,
                                     ranges=options.ranges,
                                     error=f"verify failed: {type(exc).__name__}: {exc}")
            report.tables.append(result)
            diff = _repairable(check.diff, result, target.absent.get(schema.source_name, ()),
                               report, request.repair)
            if diff is not None:
                diffs.append(diff)
        if request.repair and write is not None:
            run_id = secrets.token_hex(4)
            by_name = {r.table: r for r in report.tables}
            # A repair never undoes what the publication leaves out on purpose (an
            # insert-only archive keeps the rows deleted at the source).
            kept = {_KEPT_BY[op] for op in ops}
            for diff in diffs:
                _repair_table(by_name[diff.table.source_name], diff.without(kept), lsn,
                              write, run_id)
    report.seconds = time.monotonic() - started
    return report
