"""Prepare a PostgreSQL source: replica identity, publication, replication slot. Idempotent.

Everything is checked before anything is changed, so a failing setup leaves the database
as it found it. Nothing is ever removed: existing publications only gain tables, an
existing slot is reused (resume), never dropped (invariant 5).

Keys: every table needs a key for the target's upserts. It is the primary key, or — for a
table without one — the unique index chosen with ``REPLICA IDENTITY USING INDEX``. A table
with neither is refused, also under REPLICA IDENTITY FULL: using all columns as the key
breaks on duplicate rows and on columns the target cannot key on (float, json, …), so the
fix (add a primary key, or a unique index as replica identity) is left to the user.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, TypeVar

import psycopg
from psycopg import sql

from dbmazz import retry
from dbmazz.contract import AUDIT_NAMES
from dbmazz.errors import (
    DbmazzError,
    SetupError,
    SetupProblems,
    SlotLostError,
    SourceConnectionError,
    SourceError,
)
from dbmazz.retry import RetryPolicy, Waiter
from dbmazz.source import publication as pubinfo
from dbmazz.source.catalog import keys_by_oid, split_table_name
from dbmazz.source.connection import server_error
from dbmazz.source.database import SourceDatabase
from dbmazz.source.names import describe_dsn, validate_slot_name
from dbmazz.source.slots import (
    FAILOVER_VERSION,
    SlotCreation,
    SlotInfo,
    create_slot,
    failover_unsupported,
    read_slot_info,
    set_failover,
    slot_moved_hint,
)
from dbmazz.state.checkpoint import TABLE as CHECKPOINT_TABLE
from dbmazz.state.checkpoint import slot_lost_reason

log = logging.getLogger("dbmazz.setup")

_T = TypeVar("_T")

ReplicaIdentityMode = Literal["full", "default", "keep"]
_IDENTITY_CODE = {"full": "f", "default": "d"}
_IDENTITY_SQL = {"f": "FULL", "d": "DEFAULT"}
_IDENTITY_NAME = {"d": "DEFAULT", "f": "FULL", "i": "USING INDEX", "n": "NOTHING"}
_NAMEDATALEN = 63

#: Contention and lost connections during setup: about a minute of attempts (each may also
#: wait up to the lock timeout for its lock) before setup reports what it retried.
SETUP_RETRY = RetryPolicy(max_attempts=6, max_elapsed=120.0, base_delay=1.0, max_delay=15.0)
#: How long one ALTER TABLE waits for its table's lock (SETUP_LOCK_TIMEOUT_S).
DEFAULT_LOCK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SourceSetup:
    """What setup found and did."""

    #: ``'schema.table'`` → key columns in key order.
    primary_keys: dict[str, tuple[str, ...]]
    slot_created: bool
    #: Where the new slot starts (None when an existing slot was reused).
    consistent_point: int | None
    #: The reused slot's resume position (None for a new slot).
    confirmed_flush_lsn: int | None
    #: ``'schema.table'`` in the order given.
    tables: tuple[str, ...]
    publication_created: bool = False
    tables_added: tuple[str, ...] = ()
    replica_identity_changed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: With ``export_snapshot=True`` and a new slot: holds the exported snapshot open.
    #: The caller must ``close()`` it once the snapshot is read.
    slot_creation: SlotCreation | None = field(default=None, compare=False)
    #: False for ``check_only``: the change fields then describe what setup would do.
    applied: bool = True
    #: ``SLOT_FAILOVER``: an existing slot was (or, check_only, would be) made a failover
    #: slot.
    slot_failover_set: bool = False
    #: The slot's ``failover`` / ``synced`` flags after setup (None before PostgreSQL 17).
    slot_failover: bool | None = None
    slot_synced: bool | None = None

    @property
    def pending_changes(self) -> list[str]:
        """What a ``check_only`` run found missing (empty: the source is ready)."""
        changes = []
        if self.publication_created:
            changes.append("create the publication")
        if self.tables_added:
            changes.append(f"add {', '.join(self.tables_added)} to the publication")
        if self.replica_identity_changed:
            changes.append(
                f"set REPLICA IDENTITY on {', '.join(self.replica_identity_changed)}"
            )
        if self.slot_created:
            changes.append("create the replication slot")
        if self.slot_failover_set:
            changes.append("make the replication slot a failover slot")
        return changes


@dataclass
class _Table:
    name: str  # 'schema.table'
    schema: str
    table: str
    oid: int
    identity: str  # relreplident
    may_alter: bool  # current user owns it (or is superuser)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def _qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def _connect(dsn: str) -> psycopg.Connection:
    return SourceDatabase(dsn).connect("setup")


class _Problems:
    """Setup's refusals. Setup that would change things stops at the first; ``check_only``
    (``dbmazz setup --check``) collects them, so one run names every problem."""

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.found: list[SetupError] = []

    def add(self, problem: SetupError | None) -> None:
        if problem is None:
            return
        if not self.collect:
            raise problem
        self.found.append(problem)

    def check(self, step: Callable[[], _T], instead: _T) -> _T:
        """``step()``, or ``instead`` once its refusal is collected."""
        try:
            return step()
        except SetupError as exc:
            self.add(exc)
            return instead

    def raise_found(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise SetupProblems(self.found)


def _resolve(conn: psycopg.Connection, tables: Sequence[str]) -> list[_Table]:
    """Look the tables up; one error naming every missing one (with near misses)."""
    found, missing = _lookup(conn, tables)
    if missing is not None:
        raise missing
    return found


def _lookup(conn: psycopg.Connection,
            tables: Sequence[str]) -> tuple[list[_Table], SetupError | None]:
    """The tables found, and the error naming every missing one (None: all found)."""
    names = [split_table_name(t) for t in tables]
    dotted = [_qualified(schema, table) for schema, table in names if "." in schema]
    if dotted:
        # dbmazz names a table 'schema.table' and reads that back at its first dot.
        raise SetupError(
            f"schemas whose names contain a dot are not supported: {', '.join(dotted)}",
            "rename the schema (ALTER SCHEMA \"my.schema\" RENAME TO my_schema); a dot in "
            "a table's own name is fine",
        )
    rows = conn.execute(
        """
        SELECT t.ord, c.oid, c.relreplident::text,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               OR pg_has_role(current_user, c.relowner, 'USAGE')
        FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(nsp, rel, ord)
        JOIN pg_namespace n ON n.nspname = t.nsp
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel
                       AND c.relkind IN ('r', 'p')
        """,
        ([s for s, _ in names], [t for _, t in names]),
    ).fetchall()
    found = {int(ord_) - 1: (int(oid), str(ident), bool(owner)) for ord_, oid, ident, owner in rows}
    missing = [i for i in range(len(names)) if i not in found]
    if missing:
        described = []
        for i in missing:
            schema, table = names[i]
            near = conn.execute(
                """
                SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE lower(n.nspname) = lower(%s) AND lower(c.relname) = lower(%s)
                """,
                (schema, table),
            ).fetchall()
            text = _qualified(schema, table)
            tables_near = [r for r in near if r[2] in ("r", "p")]
            if tables_near:
                text += f" (did you mean {_qualified(tables_near[0][0], tables_near[0][1])!r}?)"
            elif near:
                text += " (exists but is not a table)"
            described.append(text)
        db = conn.info.dbname
        not_found = SetupError(
            f"tables not found in database {db!r}: {', '.join(described)}",
            "create them or correct TABLES; names are case-sensitive, 'table' means "
            "public.table, and names containing dots are written with double quotes "
            '("my.schema"."my.table")',
        )
    else:
        not_found = None
    out = []
    for i, (schema, table) in enumerate(names):
        if i not in found:
            continue
        oid, ident, owner = found[i]
        out.append(_Table(_qualified(schema, table), schema, table, oid, ident, owner))
    seen: dict[str, int] = {}
    for t in out:
        seen[t.name] = seen.get(t.name, 0) + 1
    dupes = sorted(n for n, c in seen.items() if c > 1)
    if dupes:
        raise SetupError(f"tables listed more than once: {', '.join(dupes)}",
                         "list each table once in TABLES")
    return out, not_found


def _identity_off_the_key(conn: psycopg.Connection, oids: Sequence[int]) -> set[int]:
    """Tables with a primary key whose REPLICA IDENTITY USING INDEX names another index."""
    rows = conn.execute(
        """
        SELECT i.indrelid::int FROM pg_index i
        WHERE i.indrelid = ANY(%s) AND i.indisreplident AND NOT i.indisprimary
          AND EXISTS (SELECT 1 FROM pg_index p WHERE p.indrelid = i.indrelid AND p.indisprimary)
        """,
        (list(oids),),
    ).fetchall()
    return {int(oid) for (oid,) in rows}


def primary_keys(
    conn: psycopg.Connection, tables: Sequence[str], *, strict: bool = True
) -> dict[str, tuple[str, ...]]:
    """``'schema.table'`` → key columns (primary key, else replica identity index).

    ``strict``: raise :class:`SetupError` naming every missing or keyless table; otherwise
    missing tables are left out and keyless ones map to ``()``.
    """
    if strict:
        resolved = _resolve(conn, tables)
    else:
        resolved = []
        for name in tables:
            with contextlib.suppress(SetupError):
                resolved.extend(_resolve(conn, [name]))
    keys = keys_by_oid(conn, [t.oid for t in resolved])
    keyless = [t.name for t in resolved if t.oid not in keys]
    if strict and keyless:
        raise _keyless_error(keyless)
    return {t.name: keys[t.oid][1] if t.oid in keys else () for t in resolved}


def _keyless_error(names: Sequence[str]) -> SetupError:
    return SetupError(
        f"tables without a primary key: {', '.join(names)} — dbmazz needs a key to "
        "apply updates and deletes in the target",
        "add a PRIMARY KEY, or create a UNIQUE index on NOT NULL columns and run "
        "`ALTER TABLE ... REPLICA IDENTITY USING INDEX <index>` (then set "
        "REPLICA_IDENTITY=keep)",
    )


def _audit_name_clash(conn: psycopg.Connection, tables: Sequence[_Table]) -> SetupError | None:
    """Columns named like the audit columns every target table carries (compared without
    case, as StarRocks and DuckDB compare column names)."""
    rows = conn.execute(
        "SELECT attrelid::int, attname FROM pg_attribute WHERE attrelid = ANY(%s)"
        " AND attnum > 0 AND NOT attisdropped AND lower(attname) = ANY(%s)"
        " ORDER BY attrelid, attnum",
        ([t.oid for t in tables], [n.lower() for n in AUDIT_NAMES]),
    ).fetchall()
    if not rows:
        return None
    names = {t.oid: t.name for t in tables}
    clashes: dict[str, list[str]] = {}
    for oid, column in rows:
        clashes.setdefault(names[int(oid)], []).append(str(column))
    return SetupError(
        "tables with columns named like dbmazz's audit columns "
        f"({', '.join(AUDIT_NAMES)}): "
        + ", ".join(f"{t} ({', '.join(cols)})" for t, cols in clashes.items()),
        "rename the columns at the source, or leave them out with a column list on the "
        "publication (PostgreSQL 15+)",
    )


def _check_replication_role(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT rolname, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row is None or not row[1]:
        role = row[0] if row else "current user"
        raise SetupError(
            f"role {role!r} lacks the REPLICATION attribute, so it cannot read the "
            "replication stream",
            f"run `ALTER ROLE {sql.Identifier(str(role)).as_string(conn)} WITH REPLICATION;` "
            "as a superuser",
        )


def _plan_identity(
    tables: Sequence[_Table], keys: dict[int, tuple[bool, tuple[str, ...]]],
    mode: ReplicaIdentityMode, off_the_key: Collection[int] = (),
) -> list[_Table]:
    """Tables whose REPLICA IDENTITY must change; refuses changes that would lose a key,
    and, under ``keep``, identities that do not carry the key (``off_the_key``: see
    :func:`_identity_off_the_key`)."""
    if mode not in ("full", "default", "keep"):
        raise SetupError(
            f"replica_identity must be 'full', 'default' or 'keep', not {mode!r}"
        )
    if mode == "keep":
        nothing = [t.name for t in tables if t.identity == "n"]
        if nothing:
            raise SetupError(
                f"tables with REPLICA IDENTITY NOTHING: {', '.join(nothing)} — once "
                "published, their UPDATEs and DELETEs would fail in PostgreSQL",
                "use replica_identity='full' or 'default', or ALTER TABLE ... REPLICA "
                "IDENTITY DEFAULT",
            )
        elsewhere = [t.name for t in tables if t.identity == "i" and t.oid in off_the_key]
        if elsewhere:
            # Their UPDATEs and DELETEs name the old row by that index's columns alone: a
            # change of the primary key would leave the old row in the target, and a
            # DELETE would carry no primary key to delete by.
            raise SetupError(
                f"tables whose REPLICA IDENTITY USING INDEX names an index other than their "
                f"primary key: {', '.join(elsewhere)} — their UPDATEs and DELETEs do not "
                "carry the primary key the target is keyed on",
                "run `ALTER TABLE ... REPLICA IDENTITY DEFAULT` (or FULL), or use "
                "replica_identity='default' or 'full'",
            )
        return []
    wanted = _IDENTITY_CODE[mode]
    change = [t for t in tables if t.identity != wanted]
    # Leaving USING INDEX drops the only key of a table without a primary key.
    index_keyed = [t.name for t in change if t.identity == "i" and not keys[t.oid][0]]
    if index_keyed:
        raise SetupError(
            f"tables keyed only by REPLICA IDENTITY USING INDEX: {', '.join(index_keyed)}; "
            f"switching them to {_IDENTITY_SQL[wanted]} would leave them without a key",
            "add a primary key, or run setup with replica_identity='keep'",
        )
    return change


def _publication_state(
    conn: psycopg.Connection, publication: str, tables: Sequence[_Table],
    *, report_extra: bool = True,
) -> tuple[bool, list[_Table], list[str]]:
    """(exists, tables to add, warnings). ``report_extra``: warn about published tables
    not in ``tables`` (False when ``tables`` are only being added, as by an on-demand
    snapshot, and the others are the pipeline's own)."""
    pubinfo.check_partitions(conn, publication, {t.oid: t.name for t in tables})
    row = conn.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate "
        "FROM pg_publication WHERE pubname = %s",
        (publication,),
    ).fetchone()
    if row is None:
        return False, list(tables), []
    all_tables, *ops = row
    warnings = []
    skipped = [op for op, on in zip(("insert", "update", "delete", "truncate"), ops,
                                    strict=True) if not on]
    if skipped:
        warnings.append(
            f"publication {publication!r} does not publish {', '.join(skipped)}; those "
            "changes will not reach the target"
        )
    published = {
        _qualified(s, t)
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
            (publication,),
        ).fetchall()
    }
    wanted = {t.name for t in tables}
    extra = sorted(published - wanted)
    if extra and not all_tables and report_extra:
        warnings.append(
            f"publication {publication!r} also publishes tables not configured: "
            f"{', '.join(extra)} (left as they are; their changes are ignored, so a table "
            "put back into TABLES later is loaded again by an on-demand snapshot under "
            "SNAPSHOT=initial)"
        )
    warnings += _narrowing_warnings(conn, publication, tables)
    to_add = [] if all_tables else [t for t in tables if t.name not in published]
    return True, to_add, warnings


def _narrowing_warnings(
    conn: psycopg.Connection, publication: str, tables: Sequence[_Table]
) -> list[str]:
    """What the publication's row filters and column lists leave out (reported, never
    widened)."""
    return [
        f"publication {publication!r} publishes {n.table} with a {n.describe()}: only those "
        "rows and columns reach the target (setup never widens a publication)"
        for n in pubinfo.narrowings(conn, {t.oid: t.name for t in tables}, publication)
        if n.narrows
    ]


def _partition_identity_changes(
    conn: psycopg.Connection, tables: Sequence[_Table], mode: ReplicaIdentityMode
) -> list[_Table]:
    """Leaf partitions of the listed partitioned tables whose REPLICA IDENTITY must change.

    ALTER TABLE ... REPLICA IDENTITY on a partitioned table does not reach its partitions,
    yet each partition's own identity decides which old row its WAL carries; the root's
    decides how pgoutput labels it. Both must agree, so the partitions follow the root."""
    roots = pubinfo.partitioned_oids(conn, [t.oid for t in tables])
    leaves = [
        _Table(_qualified(p.schema, p.table), p.schema, p.table, p.oid, p.identity,
               p.may_alter)
        for p in pubinfo.leaf_partitions(conn, sorted(roots))
    ]
    if not leaves:
        return []
    keys = keys_by_oid(conn, [t.oid for t in leaves])
    keyless = [t.name for t in leaves if t.oid not in keys]
    if keyless:
        raise _keyless_error(keyless)
    return _plan_identity(leaves, keys, mode,
                          _identity_off_the_key(conn, [t.oid for t in leaves]))


def _partitioned(conn: psycopg.Connection, tables: Sequence[_Table]) -> list[str]:
    """The names of the partitioned tables among ``tables``."""
    roots = pubinfo.partitioned_oids(conn, [t.oid for t in tables])
    return [t.name for t in tables if t.oid in roots]


def _log_partition_root(publication: str, partitioned: Sequence[str]) -> None:
    if partitioned:
        log.info(
            "publication %s created with publish_via_partition_root = true: the changes of "
            "every partition of %s are published as the partitioned table's, so each loads "
            "into one target table", publication, ", ".join(partitioned),
        )


def _toast_risk(
    conn: psycopg.Connection,
    narrowing: pubinfo.Narrowing,
    identity: str,
    table: _Table,
    changing: set[int],
) -> list[str]:
    """A row filter under a replica identity other than FULL: a row entering the filter
    (its key changed) comes as an insert whose unchanged TOASTed values are unknown, and
    would load as NULL. Refused when setup would make it so, reported when it is so."""
    columns = pubinfo.unfillable_toast(conn, narrowing, identity)
    if not columns:
        return []
    text = (f"publication {narrowing.publication!r} has a row filter on {table.name} and its "
            f"REPLICA IDENTITY is {_IDENTITY_NAME[identity]}: a row that enters the filter "
            "arrives as an insert without the TOASTed values its UPDATE did not change "
            f"({', '.join(columns)}), which the target cannot fill")
    if table.oid in changing:
        raise SetupError(text, "use REPLICA_IDENTITY=full: PostgreSQL then sends those values")
    return [text + "; use REPLICA IDENTITY FULL on it"]


def _check_narrowed_identity(
    conn: psycopg.Connection,
    publication: str,
    tables: Sequence[_Table],
    identity_changes: Sequence[_Table],
    identity_code: str,
) -> list[str]:
    """Refuse a replica identity change that makes PostgreSQL reject a table's UPDATEs and
    DELETEs because of what a publication — dbmazz's or any other — leaves out of it (a
    column list, a row filter, PostgreSQL 18's unpublished generated columns); warn about
    such a conflict that already exists."""
    changing = {t.oid for t in identity_changes}
    by_oid = {t.oid: t for t in tables}
    warnings = []
    for narrowing in pubinfo.narrowings(conn, {t.oid: t.name for t in tables}):
        _check_partition_identity(narrowing, [t for t in identity_changes
                                              if t.oid not in by_oid], conn, identity_code)
        table = by_oid[narrowing.oid]
        identity = identity_code if table.oid in changing else table.identity
        problems = pubinfo.identity_conflicts(conn, narrowing, identity)
        if problems:
            text = (f"under REPLICA IDENTITY {_IDENTITY_NAME[identity]}, PostgreSQL rejects "
                    f"UPDATEs and DELETEs of {table.name}: publication "
                    f"{narrowing.publication!r} publishes it, but {'; '.join(problems)}")
            if table.oid in changing:
                raise SetupError(
                    text.replace("rejects", "would reject"),
                    "set REPLICA_IDENTITY to a mode the publication allows ('default' when "
                    "the key columns are published and filtered on, or 'keep'), or change "
                    "the publication's column list / row filter / publish_generated_columns "
                    "yourself",
                )
            warnings.append(text)
        if narrowing.publication == publication:
            warnings += _toast_risk(conn, narrowing, identity, table, changing)
    return warnings


def _check_partition_identity(narrowing: pubinfo.Narrowing, partitions: Sequence[_Table],
                              conn: psycopg.Connection, identity_code: str) -> None:
    """Refuse to give a partition of a narrowed root an identity PostgreSQL would reject
    its UPDATEs and DELETEs under: it holds the partition to the root's column list and
    row filter when the publication publishes through the root, while the root's own
    identity (a partitioned table holds no rows) is never checked. The root's narrowing
    read by names fits its partitions: they have the root's columns."""
    if not partitions or not narrowing.old_rows:
        return
    via_root = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s",
                            (narrowing.publication,)).fetchone()
    if not (via_root and via_root[0]):
        return  # each partition is published as itself, without the root's narrowing
    mine = {p.oid for p in pubinfo.leaf_partitions(conn, [narrowing.oid])}
    changing = [t.name for t in partitions if t.oid in mine]
    problems = pubinfo.identity_conflicts(conn, narrowing, identity_code) if changing else []
    if problems:
        raise SetupError(
            f"under REPLICA IDENTITY {_IDENTITY_NAME[identity_code]}, PostgreSQL would reject "
            f"UPDATEs and DELETEs of {', '.join(changing)} (partitions of {narrowing.table}): "
            f"publication {narrowing.publication!r} publishes {narrowing.table}, but "
            f"{'; '.join(problems)}",
            "set REPLICA_IDENTITY to a mode the publication allows ('default' when the key "
            "columns are published and filtered on, or 'keep'), or change the publication's "
            "column list / row filter / publish_generated_columns yourself",
        )


def setup_source(
    dsn: str,
    tables: Sequence[str],
    publication: str,
    slot: str,
    replica_identity: ReplicaIdentityMode = "full",
    *,
    export_snapshot: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    check_only: bool = False,
    slot_failover: bool = False,
    retry_policy: RetryPolicy = SETUP_RETRY,
    stop: threading.Event | None = None,
    primary_dsn: str | None = None,
) -> SourceSetup:
    """Check the source and create what is missing; safe to run any number of times.

    ``tables``: ``'schema.table'`` or ``'table'`` (= ``public.table``), case-sensitive.
    ``replica_identity``: ``'full'`` (default: old rows complete, so unchanged TOAST values
    can be filled), ``'default'`` (key only), ``'keep'`` (change nothing; NOTHING refused).
    ``export_snapshot``: when the slot is created, keep its exported snapshot open in
    :attr:`SourceSetup.slot_creation` for an initial snapshot.
    ``check_only``: run every check but change nothing; the result then says what setup
    *would* create or change (``applied`` is False).
    ``lock_timeout_s``, ``retry_policy``: each replica identity change waits this long for
    its table's lock; contention and lost connections are retried under the policy.
    ``stop`` interrupts a retry's backoff (shutdown).
    ``slot_failover``: create the slot as a failover slot, or make the existing one one
    (PostgreSQL 17+).
    ``primary_dsn``: ``dsn`` is a hot standby (PostgreSQL 16+); the catalog checks and
    changes (publication, replica identity) go to the primary, the slot to the standby.
    A standby without it is refused with what to do.
    """
    if not tables:
        raise SetupError("no tables to replicate", "list them in TABLES (schema.table,...)")
    if not publication or len(publication.encode()) > _NAMEDATALEN:
        raise SetupError(
            f"invalid publication name {publication!r}",
            f"use a non-empty name of at most {_NAMEDATALEN} bytes",
        )
    try:
        validate_slot_name(slot)
    except SourceError as exc:
        raise SetupError(str(exc)) from None
    target = describe_dsn(dsn)
    warnings: list[str] = []
    waiter = Waiter(stop)
    _check_standby(dsn, target, primary_dsn)
    # The first connection is not retried: failing it is almost always configuration
    # (host, port, credentials), reported at once. Losing it later is retried in _apply.
    # On a standby (primary_dsn) the catalog is read and changed on the primary.
    problems = _Problems(collect=check_only)
    with _connect(primary_dsn or dsn) as conn:
        (wal_level,) = conn.execute("SHOW wal_level").fetchone() or ("?",)
        if wal_level != "logical":
            problems.add(SetupError(
                f"wal_level is {wal_level!r}; set wal_level=logical in postgresql.conf and "
                "restart PostgreSQL"
            ))
        resolved, not_found = _lookup(conn, tables)
        problems.add(not_found)
        problems.check(lambda: _check_replication_role(conn), None)
        keys = keys_by_oid(conn, [t.oid for t in resolved])
        keyless = [t.name for t in resolved if t.oid not in keys]
        if keyless:
            problems.add(_keyless_error(keyless))
            resolved = [t for t in resolved if t.oid in keys]
        problems.add(_audit_name_clash(conn, resolved))
        no_changes: list[_Table] = []
        identity_changes = problems.check(lambda: _plan_identity(
            resolved, keys, replica_identity,
            _identity_off_the_key(conn, [t.oid for t in resolved])), no_changes)
        identity_changes += _partition_identity_changes(conn, resolved, replica_identity)
        pub_exists, to_add, pub_warnings = _publication_state(conn, publication, resolved)
        warnings += pub_warnings
        warnings += _check_narrowed_identity(
            conn, publication, resolved, identity_changes,
            _IDENTITY_CODE.get(replica_identity, "d"),
        )
        not_owned = sorted(
            {t.name for t in [*identity_changes, *to_add] if not t.may_alter}
        )
        if not_owned:
            problems.add(SetupError(
                f"the connecting role does not own {', '.join(not_owned)}, so it cannot "
                "change their replica identity or add them to a publication",
                "run setup once as the tables' owner (or a superuser), or make those "
                "changes by hand",
            ))
        if primary_dsn is None:
            info = read_slot_info(conn, slot)
        else:
            with _connect(dsn) as standby:
                info = read_slot_info(standby, slot)
        warnings += problems.check(lambda: _check_failover(conn, slot_failover, target), [])
        set_failover_now = slot_failover and info.exists and not info.failover
        if not info.exists:
            problems.check(lambda: _refuse_dropped_slot(conn, slot, target), None)
        if info.exists:
            problems.check(lambda: _check_existing_slot(info, conn.info.dbname, target), None)
            problems.check(lambda: _refuse_untrusted_slot(conn, slot, target), None)
            if to_add:
                warnings.append(
                    f"tables added to publication {publication!r} while resuming slot "
                    f"{slot!r}: {', '.join(t.name for t in to_add)}; their changes are "
                    "streamed from now on, and under SNAPSHOT=initial an on-demand snapshot "
                    "loads their existing rows (otherwise `dbmazz snapshot --table`)"
                )

        problems.raise_found()
        if check_only:
            return SourceSetup(
                primary_keys={t.name: keys[t.oid][1] for t in resolved},
                slot_created=not info.exists,
                consistent_point=None,
                confirmed_flush_lsn=info.confirmed_flush_lsn if info.exists else None,
                tables=tuple(t.name for t in resolved),
                publication_created=not pub_exists,
                tables_added=tuple(t.name for t in to_add) if pub_exists else (),
                replica_identity_changed=tuple(t.name for t in identity_changes),
                warnings=tuple(warnings),
                applied=False,
                slot_failover_set=set_failover_now,
                slot_failover=info.failover,
                slot_synced=info.synced,
            )

        # -- everything checked; now change what is missing ----------------------------
        # Read before the changes: a lost connection is replaced inside _apply, not here.
        partitioned = _partitioned(conn, resolved) if not pub_exists else []
        connection = _Connection(primary_dsn or dsn, conn)
        try:
            changed = _apply(
                connection,
                publication,
                resolved,
                identity_changes,
                _IDENTITY_CODE.get(replica_identity, "d"),
                lock_timeout_s,
                retry_policy,
                waiter,
            )
        finally:
            connection.close()
        _log_partition_root(publication, partitioned)

    for w in warnings:
        log.warning("%s", w)
    creation: SlotCreation | None = None
    consistent_point: int | None = None
    if not info.exists:
        creation = create_slot(dsn, slot, export_snapshot=export_snapshot,
                               failover=slot_failover)
        consistent_point = creation.consistent_point
        if not export_snapshot:
            creation.close()
            creation = None
    elif set_failover_now:
        set_failover(dsn, slot)
        log.info("replication slot %s is now a failover slot", slot)
    after = slot_info_after(dsn, slot, info, slot_failover)
    return SourceSetup(
        primary_keys={t.name: keys[t.oid][1] for t in resolved},
        slot_created=not info.exists,
        consistent_point=consistent_point,
        confirmed_flush_lsn=info.confirmed_flush_lsn if info.exists else None,
        tables=tuple(t.name for t in resolved),
        publication_created=not pub_exists,
        tables_added=tuple(t.name for t in to_add) if pub_exists else (),
        replica_identity_changed=tuple(changed),
        warnings=tuple(warnings),
        slot_creation=creation,
        slot_failover_set=set_failover_now,
        slot_failover=after.failover,
        slot_synced=after.synced,
    )


def _check_standby(dsn: str, target: str, primary_dsn: str | None) -> None:
    """Decoding from a hot standby needs PostgreSQL 16+ and the primary for every write
    (a standby is read-only): refuse a standby without PRIMARY_URL, naming what to do."""
    with _connect(dsn) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), current_setting('server_version_num')"
                           "::int").fetchone()
    standby, version = (bool(row[0]), int(row[1])) if row else (False, 0)
    if not standby:
        if primary_dsn is not None:
            log.warning("PRIMARY_URL is set but SOURCE_URL (%s) is not a standby; setup and "
                        "checkpoints go to PRIMARY_URL anyway", target)
        return
    if version < 160000:
        raise SetupError(
            f"SOURCE_URL ({target}) is a hot standby of PostgreSQL {version // 10000}: "
            "logical decoding on a standby needs PostgreSQL 16+",
            "point SOURCE_URL at the primary (or upgrade to PostgreSQL 16+)",
        )
    if primary_dsn is None:
        raise SetupError(
            f"SOURCE_URL ({target}) is a hot standby: dbmazz can decode there, but the "
            "publication, replica identity, checkpoint table, heartbeats and snapshot "
            "progress must be written on the primary, and a standby is read-only",
            "set PRIMARY_URL to the primary's URL (the slot stays on the standby); the "
            "standby needs hot_standby_feedback=on and the primary wal_level=logical",
        )


def slot_info_after(dsn: str, slot: str, before: SlotInfo, failover: bool) -> SlotInfo:
    """The slot's flags once setup is done (read again only when setup changed them)."""
    if before.exists and not (failover and not before.failover):
        return before
    with _connect(dsn) as conn:
        return read_slot_info(conn, slot)


def _check_failover(conn: psycopg.Connection, failover: bool, target: str) -> list[str]:
    """``SLOT_FAILOVER``: refused before PostgreSQL 17; a warning when no standby is
    waited for, so a failover could lose changes dbmazz already loaded."""
    if not failover:
        return []
    version = conn.info.server_version
    if version < FAILOVER_VERSION:
        raise failover_unsupported(version, target)
    (standbys,) = conn.execute("SHOW synchronized_standby_slots").fetchone() or ("",)
    if not standbys:
        return [
            "SLOT_FAILOVER=true but synchronized_standby_slots is empty on the primary: "
            "dbmazz may receive changes a standby has not yet received, and a failover to "
            "that standby would lose them from the source while the target keeps them; list "
            "the standbys' physical slots in synchronized_standby_slots"
        ]
    return []


def publish_tables(
    dsn: str,
    publication: str,
    tables: Sequence[str],
    replica_identity: str,
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    retry_policy: RetryPolicy = SETUP_RETRY,
    stop: threading.Event | None = None,
) -> None:
    """Add ``tables`` to ``publication`` and set their replica identity, with setup's
    checks and retries but without its slot part (on-demand snapshots: the engine's own
    stream holds the slot)."""
    mode: ReplicaIdentityMode = (
        "default" if replica_identity == "default"
        else "keep" if replica_identity == "keep" else "full")
    waiter = Waiter(stop)
    with _connect(dsn) as conn:
        resolved = _resolve(conn, tables)
        keys = keys_by_oid(conn, [t.oid for t in resolved])
        keyless = [t.name for t in resolved if t.oid not in keys]
        if keyless:
            raise _keyless_error(keyless)
        changes = _plan_identity(resolved, keys, mode,
                                 _identity_off_the_key(conn, [t.oid for t in resolved]))
        changes += _partition_identity_changes(conn, resolved, mode)
        # The publication's other tables are the pipeline's own: no "not configured" notice.
        _, to_add, warnings = _publication_state(conn, publication, resolved,
                                                 report_extra=False)
        warnings += _check_narrowed_identity(conn, publication, resolved, changes,
                                             _IDENTITY_CODE.get(mode, "d"))
        not_owned = sorted({t.name for t in [*changes, *to_add] if not t.may_alter})
        if not_owned:
            raise SetupError(
                f"the connecting role does not own {', '.join(not_owned)}, so it cannot add "
                f"them to publication {publication!r}",
                "run the snapshot as the tables' owner (or a superuser), or add them by hand",
            )
        for warning in warnings:
            log.warning("%s", warning)
        connection = _Connection(dsn, conn)
        try:
            _apply(connection, publication, resolved, changes, _IDENTITY_CODE.get(mode, "d"),
                   lock_timeout_s, retry_policy, waiter)
        finally:
            connection.close()


def _refuse_dropped_slot(conn: psycopg.Connection, slot: str, target: str) -> None:
    """A checkpoint without its slot means the slot was dropped behind dbmazz's back (or
    lost): changes since the checkpoint were never captured. Recreating the slot would hide
    that, so stop and say how to start over."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{CHECKPOINT_TABLE}",))
    exists = row.fetchone()
    if not exists or not exists[0]:
        return
    found = conn.execute(
        sql.SQL("SELECT lsn::text FROM {} WHERE slot_name = %s").format(
            sql.Identifier("public", CHECKPOINT_TABLE)),
        (slot,),
    ).fetchone()
    if found is None:
        return
    raise SlotLostError(
        f"replication slot {slot!r} on {target} does not exist, but dbmazz had streamed from "
        f"it up to checkpoint {found[0]}: it was dropped outside dbmazz, so changes made "
        "since then were not captured",
        "dbmazz will not recreate it silently. To start over, delete the checkpoint "
        f"(DELETE FROM {CHECKPOINT_TABLE} WHERE slot_name = '{slot}') and run again with "
        "SNAPSHOT=initial to reload the tables; the snapshot does not remove target rows "
        "deleted at the source meanwhile: `dbmazz verify --repair` does",
    )


def _refuse_untrusted_slot(conn: psycopg.Connection, slot: str, target: str) -> None:
    """A running engine found the slot moved behind its back (dropped and created again,
    advanced, read by another consumer) and recorded it: a restart must not stream from it
    either, since its confirmed LSN past the checkpoint looks like any idle slot's."""
    reason = slot_lost_reason(conn, slot)
    if reason is not None:
        raise SlotLostError(f"{reason} (found by an earlier run; on {target})",
                            slot_moved_hint(slot))


def _check_existing_slot(info: SlotInfo, dbname: str, target: str) -> None:
    slot = info.slot
    if info.slot_type != "logical":
        raise SetupError(
            f"replication slot {slot!r} on {target} is a {info.slot_type} slot, not a "
            "logical one",
            "choose another SLOT_NAME (dbmazz never drops slots it did not create)",
        )
    if info.database != dbname:
        raise SetupError(
            f"replication slot {slot!r} on {target} belongs to database {info.database!r}, "
            f"not {dbname!r}",
            "choose another SLOT_NAME; slot names are unique per server",
        )
    if info.plugin != "pgoutput":
        raise SetupError(
            f"replication slot {slot!r} on {target} uses output plugin {info.plugin!r}, "
            "not pgoutput",
            "choose another SLOT_NAME, or drop that slot if nothing uses it",
        )
    if info.wal_status == "lost":
        error = server_error(
            sqlstate="55000",
            message=f'can no longer get changes from replication slot "{slot}"',
            target=target,
            slot=slot,
        )
        raise SlotLostError(error.message, error.hint)
    if info.active:
        raise SetupError(
            f"replication slot {slot!r} on {target} is active (pid {info.active_pid}): "
            "another consumer is reading it",
            "stop the other consumer (see pg_stat_replication) or choose another SLOT_NAME",
        )


class _Connection:
    """The setup connection, opened again after PostgreSQL dropped it (a retry needs one)."""

    def __init__(self, dsn: str, conn: psycopg.Connection) -> None:
        self._dsn = dsn
        self._conn = conn
        self._extra: list[psycopg.Connection] = []

    def get(self) -> psycopg.Connection:
        if self._conn.closed or self._conn.broken:
            self._conn = _connect(self._dsn)
            self._extra.append(self._conn)
        return self._conn

    def close(self) -> None:
        for conn in self._extra:
            conn.close()


def _apply(
    connection: _Connection,
    publication: str,
    tables: Sequence[_Table],
    identity_changes: Sequence[_Table],
    identity_code: str,
    lock_timeout_s: float,
    policy: RetryPolicy,
    waiter: Waiter,
) -> list[str]:
    """Replica identity changes, one table per transaction, then the publication.

    ``ALTER TABLE`` takes an ACCESS EXCLUSIVE lock: held over several tables in one
    transaction it deadlocks with an application transaction that writes them in another
    order, and it queues every later query of the table behind it. So each table is its
    own short transaction that waits at most ``lock_timeout_s`` for its lock, and
    contention (deadlock, lock timeout, serialization failure) or a lost connection is
    retried under ``policy``. Every step is idempotent, so a retry after a lost COMMIT
    reply is harmless.
    """
    timeout = sql.SQL("SET LOCAL lock_timeout = {}").format(
        sql.Literal(f"{max(1, int(lock_timeout_s * 1000))}ms"))
    identity = sql.SQL(_IDENTITY_SQL[identity_code])

    def set_identity(table: _Table) -> None:
        conn = connection.get()
        with conn.transaction():
            conn.execute(timeout)
            conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY {}").format(
                table.ident, identity))

    def publish() -> None:
        conn = connection.get()
        with conn.transaction():
            conn.execute(timeout)
            # Read again on each attempt: an earlier one may have committed unseen.
            exists, to_add, _ = _publication_state(conn, publication, tables)
            pub = sql.Identifier(publication)
            if not exists:
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
                    pub, sql.SQL(", ").join(t.ident for t in to_add),
                    pubinfo.create_options(conn)))
            elif to_add:
                conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    pub, sql.SQL(", ").join(t.ident for t in to_add)))

    def attempt(what: str, action: Callable[[], None]) -> None:
        try:
            retry.call(action, policy=policy, transient=retry.is_transient, what=what,
                       waiter=waiter, log=log)
        except retry.GaveUp as gave_up:
            raise _gave_up_error(what, gave_up, lock_timeout_s) from gave_up.last
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SetupError(
                f"{what}: not allowed: {exc}",
                "grant CREATE on the database to the connecting role, or run setup as the "
                "tables' owner",
            ) from None

    done = []
    for t in identity_changes:
        attempt(f"setting REPLICA IDENTITY {_IDENTITY_SQL[identity_code]} on {t.name}",
                partial(set_identity, t))
        done.append(t.name)
    attempt(f"adding the tables to publication {publication!r}", publish)
    return done


def _gave_up_error(what: str, gave_up: retry.GaveUp, lock_timeout_s: float) -> DbmazzError:
    """Setup stopped retrying: say what was retried, how often, why, and what to do."""
    last = retry.first_line(gave_up.last)
    tried = gave_up.attempts.summary()
    if gave_up.cancelled:
        return SetupError(f"{what}: stopped while retrying ({tried}; last error: {last})")
    if retry.is_contention(gave_up.last):
        return SetupError(
            f"{what} failed after {tried}: other transactions held the table "
            f"(lock contention: {last})",
            "run setup at a quieter time, raise SETUP_LOCK_TIMEOUT_S (now "
            f"{lock_timeout_s:g} s) so setup waits longer for the lock, or set the replica "
            "identity by hand (ALTER TABLE ... REPLICA IDENTITY FULL) and run with "
            "REPLICA_IDENTITY=keep",
        )
    return SourceConnectionError(
        f"{what} failed after {tried}: {last}",
        "check that PostgreSQL is up and reachable, then run setup again",
    )
