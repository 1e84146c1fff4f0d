"""What a publication does to the tables dbmazz replicates: partitions, row filters,
column lists. Read-only checks and reports; the changes themselves are made by
:mod:`dbmazz.source.setup`.

Partitioned tables are published through their root (``publish_via_partition_root =
true``): every partition's changes then arrive as the root's, under the root's name and
shape, and load into one target table. A publication dbmazz creates always has that option.
An existing publication without it would send each partition's changes under the
partition's own name, which is not in ``TABLES``; setup refuses it with the ``ALTER
PUBLICATION`` that fixes it rather than change an option other subscribers may rely on.

Row filters and column lists (PostgreSQL 15+), and on PostgreSQL 18 stored generated
columns left out (``publish_generated_columns = none``), narrow what a publication sends.
Setup never widens them; it reports them, and it refuses a replica identity change that
PostgreSQL would answer by rejecting the table's UPDATEs and DELETEs (every replica identity
column must be published, a row filter may read only replica identity columns), or that
would leave rows entering a row filter without their unchanged TOASTed values.

While streaming, the slot health sample compares what the publication sends of each table
with its last sample (:func:`published_shapes`, :func:`widenings`): what a widening lets
through is not sent until it changes, so the service loads such a table again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbmazz.errors import SetupError

#: PostgreSQL 13 brought ``publish_via_partition_root``; 15 row filters and column lists.
VIA_ROOT_VERSION = 130000
FILTERS_VERSION = 150000
#: PostgreSQL 18: ``publish_generated_columns``.
GENERATED_VERSION = 180000

#: A Var of the filtered table in ``pg_publication_rel.prqual``'s node tree text. A row
#: filter references only its own table (no subqueries, no other relations), so every
#: Var's ``varattno`` is one of the table's columns.
_VARATTNO = re.compile(r"\{VAR :varno \d+ :varattno (\d+)\b")


@dataclass(frozen=True)
class Partition:
    """A leaf partition of a listed partitioned table (its replica identity matters: the
    partition's WAL carries the old rows the root's changes are published with)."""

    root_oid: int
    oid: int
    schema: str
    table: str
    identity: str
    may_alter: bool


def partitioned_oids(conn: psycopg.Connection, oids: Sequence[int]) -> set[int]:
    """The partitioned tables (``relkind = 'p'``) among ``oids``."""
    rows = conn.execute(
        "SELECT oid::int FROM pg_class WHERE oid = ANY(%s) AND relkind = 'p'", (list(oids),)
    ).fetchall()
    return {int(r[0]) for r in rows}


def leaf_partitions(conn: psycopg.Connection, roots: Sequence[int]) -> list[Partition]:
    """The leaf partitions (plain tables) under each of ``roots``, at any depth."""
    if not roots:
        return []
    rows = conn.execute(
        """
        SELECT r.root::int, c.oid::int, n.nspname, c.relname, c.relreplident::text,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
               OR pg_has_role(current_user, c.relowner, 'USAGE')
        FROM unnest(%s::oid[]) AS r(root)
        CROSS JOIN LATERAL pg_partition_tree(r.root) pt
        JOIN pg_class c ON c.oid = pt.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE pt.isleaf AND c.relkind = 'r'
        ORDER BY r.root, n.nspname, c.relname
        """,
        (list(roots),),
    ).fetchall()
    return [Partition(int(root), int(oid), str(s), str(t), str(ident), bool(owner))
            for root, oid, s, t, ident, owner in rows]


def check_partitions(conn: psycopg.Connection, publication: str,
                     tables: dict[int, str]) -> None:
    """Refuse layouts whose partition changes would not arrive under a listed name.

    ``tables``: oid → ``'schema.table'`` of every listed table."""
    oids = list(tables)
    rows = conn.execute(
        """
        SELECT c.oid::int, c.relkind = 'p',
               ARRAY(SELECT a.relid::int FROM pg_partition_ancestors(c.oid) a
                     WHERE a.relid <> c.oid)
        FROM pg_class c WHERE c.oid = ANY(%s)
        """,
        (oids,),
    ).fetchall()
    roots = sorted(tables[int(oid)] for oid, partitioned, _ in rows if partitioned)
    nested = sorted(
        f"{tables[int(oid)]} (a partition of {tables[int(a)]})"
        for oid, _, ancestors in rows for a in ancestors if int(a) in tables
    )
    if nested:
        raise SetupError(
            f"TABLES lists partitions together with their partitioned table: "
            f"{', '.join(nested)}; the partition's changes are published as the root's",
            "list only the partitioned (root) table: its target table receives every "
            "partition's rows",
        )
    pub = conn.execute(
        "SELECT pubviaroot, puballtables FROM pg_publication WHERE pubname = %s",
        (publication,),
    ).fetchone()
    if pub is None:
        return
    via_root, all_tables = bool(pub[0]), bool(pub[1])
    if roots and not via_root:
        raise SetupError(
            f"publication {publication!r} has publish_via_partition_root = false, so the "
            f"changes of the partitioned table(s) {', '.join(roots)} would arrive under each "
            "partition's own name and miss the root's target table",
            f"run `ALTER PUBLICATION {sql.Identifier(publication).as_string(conn)} SET "
            "(publish_via_partition_root = true);` (dbmazz does not change an existing "
            "publication's options: other subscribers may rely on them), or choose another "
            "PUBLICATION_NAME and dbmazz creates one that way",
        )
    if via_root:
        published = _published_oids(conn, publication) if not all_tables else None
        hidden = sorted(
            f"{tables[int(oid)]} (published as {_name(conn, int(ancestors[-1]))})"
            for oid, _, ancestors in rows
            if ancestors and (published is None or any(int(a) in published for a in ancestors))
        )
        if hidden:
            raise SetupError(
                f"publication {publication!r} publishes partitions through their root, so "
                f"these listed partitions' changes arrive under another name: "
                f"{', '.join(hidden)}",
                "list the partitioned root table in TABLES instead of its partitions",
            )


def unpublished(conn: psycopg.Connection, publication: str,
                tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(schema, table)`` pairs ``publication`` does not publish (anymore): dropped
    from it by hand, or the publication or the table itself dropped."""
    rows = conn.execute(
        """
        SELECT x.s, x.t FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(s, t, i)
        WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables p
                          WHERE p.pubname = %s AND p.schemaname = x.s AND p.tablename = x.t)
        ORDER BY x.i
        """,
        ([s for s, _ in tables], [t for _, t in tables], publication),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def through_partitions(conn: psycopg.Connection, publication: str,
                       tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The partitioned ``tables`` that ``publication`` would publish through their
    partitions' names (``publish_via_partition_root`` off), which are not in TABLES."""
    rows = conn.execute(
        """
        SELECT x.s, x.t FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(s, t, i)
        JOIN pg_namespace n ON n.nspname = x.s
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.t AND c.relkind = 'p'
        JOIN pg_publication p ON p.pubname = %s AND NOT p.pubviaroot
        ORDER BY x.i
        """,
        ([s for s, _ in tables], [t for _, t in tables], publication),
    ).fetchall()
    return [(str(s), str(t)) for s, t in rows]


def _published_oids(conn: psycopg.Connection, publication: str) -> set[int]:
    rows = conn.execute(
        """
        SELECT c.oid::int FROM pg_publication_tables pt
        JOIN pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        WHERE pt.pubname = %s
        """,
        (publication,),
    ).fetchall()
    return {int(r[0]) for r in rows}


def _name(conn: psycopg.Connection, oid: int) -> str:
    row = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,)
    ).fetchone()
    return str(row[0]) if row else str(oid)


def create_options(conn: psycopg.Connection) -> sql.Composable:
    """``WITH (...)`` for a publication dbmazz creates: through the partition root
    (PostgreSQL 13+), and with stored generated columns (PostgreSQL 18+; before 18 pgoutput
    cannot send them, and on 18 a REPLICA IDENTITY FULL table whose stored generated columns
    a publication leaves out has its UPDATEs and DELETEs rejected)."""
    options = []
    if conn.info.server_version >= VIA_ROOT_VERSION:
        options.append("publish_via_partition_root = true")
    if conn.info.server_version >= GENERATED_VERSION:
        options.append("publish_generated_columns = stored")
    return sql.SQL(f" WITH ({', '.join(options)})" if options else "")


# --- row filters, column lists, generated columns -----------------------------------------
@dataclass(frozen=True)
class Narrowing:
    """What one publication publishes of one listed table (PostgreSQL 15+)."""

    publication: str
    table: str
    oid: int
    #: The row filter's text as ``pg_publication_tables.rowfilter`` shows it.
    row_filter: str | None
    #: The publication names the table with a column list.
    column_list: bool
    #: Published column names (``pg_publication_tables.attnames``).
    columns: tuple[str, ...]
    #: attnums the row filter reads.
    filter_attnums: frozenset[int]
    #: The publication publishes UPDATE or DELETE (only then does PostgreSQL hold row
    #: filters and published columns against the replica identity).
    old_rows: bool
    #: Stored generated columns the publication leaves out (PostgreSQL 18+).
    unpublished_generated: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        return (self.row_filter is not None or self.column_list
                or bool(self.unpublished_generated))

    def describe(self) -> str:
        parts = []
        if self.row_filter is not None:
            parts.append(f"row filter WHERE {self.row_filter}")
        if self.column_list:
            parts.append(f"column list ({', '.join(self.columns)})")
        if self.unpublished_generated:
            parts.append(f"stored generated column(s) {', '.join(self.unpublished_generated)} "
                         "left out (publish_generated_columns = none)")
        return " and ".join(parts)


def narrowings(conn: psycopg.Connection, tables: dict[int, str],
               publication: str | None = None) -> list[Narrowing]:
    """What each publication (or only ``publication``) publishes of the listed tables."""
    version = conn.info.server_version
    if version < FILTERS_VERSION or not tables:
        return []
    rows = conn.execute(
        """
        SELECT p.pubname, c.oid::int, pt.attnames::text[], pt.rowfilter,
               p.pubupdate OR p.pubdelete, pr.prqual::text, pr.prattrs IS NOT NULL,
               ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid
                     AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = 's'
                     ORDER BY a.attnum)
        FROM pg_publication_tables pt
        JOIN pg_publication p ON p.pubname = pt.pubname
        JOIN pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid AND pr.prrelid = c.oid
        WHERE c.oid = ANY(%s) AND (%s::text IS NULL OR p.pubname = %s)
        ORDER BY p.pubname, c.oid
        """,
        (list(tables), publication, publication),
    ).fetchall()
    out = []
    for pub, oid, names, row_filter, old_rows, qual_tree, has_list, generated in rows:
        published = tuple(names or ())
        out.append(Narrowing(
            publication=str(pub),
            table=tables[int(oid)],
            oid=int(oid),
            row_filter=str(row_filter) if row_filter is not None else None,
            column_list=bool(has_list),
            columns=published,
            filter_attnums=frozenset(int(a) for a in _VARATTNO.findall(qual_tree or "")),
            old_rows=bool(old_rows),
            unpublished_generated=tuple(g for g in generated if g not in published)
            if version >= GENERATED_VERSION else (),
        ))
    return out


def identity_attnums(conn: psycopg.Connection, oid: int, identity: str) -> dict[int, str]:
    """attnum → name of the columns a replica identity covers (FULL: every stored column,
    stored generated ones included from PostgreSQL 18 on, which publishes them)."""
    if identity == "n":
        return {}
    if identity == "f":
        generated = "'', 's'" if conn.info.server_version >= GENERATED_VERSION else "''"
        query = ("SELECT attnum::int, attname::text FROM pg_attribute WHERE attrelid = %s "
                 f"AND attnum > 0 AND NOT attisdropped AND attgenerated IN ({generated})")
    else:
        flag = "indisprimary" if identity == "d" else "indisreplident"
        query = (  # flag is one of two constants, never input
            "SELECT a.attnum::int, a.attname::text FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            f"WHERE i.indrelid = %s AND i.{flag}"
        )
    return {int(n): str(name) for n, name in conn.execute(query, (oid,)).fetchall()}


def unfillable_toast(conn: psycopg.Connection, narrowing: Narrowing,
                     identity: str) -> list[str]:
    """Published TOAST-able columns outside the replica identity, when a row filter can turn
    an UPDATE into an INSERT: a row entering the filter arrives as an insert, and a TOASTed
    value the UPDATE did not change comes as "unchanged" with no old row to take it from
    unless the identity is FULL (PostgreSQL fills it from the old row then). Empty when
    there is no such risk."""
    if narrowing.row_filter is None or identity == "f":
        return []
    covered = set(identity_attnums(conn, narrowing.oid, identity).values())
    rows = conn.execute(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
        "AND NOT attisdropped AND attlen = -1 AND attstorage <> 'p' ORDER BY attnum",
        (narrowing.oid,),
    ).fetchall()
    return [str(r[0]) for r in rows if r[0] in narrowing.columns and r[0] not in covered]


def identity_conflicts(conn: psycopg.Connection, narrowing: Narrowing,
                       identity: str) -> list[str]:
    """Why PostgreSQL would reject UPDATE/DELETE of the table under ``identity``
    (``relreplident`` code) because of this publication; empty when it would not."""
    if not narrowing.old_rows:
        return []
    covered = identity_attnums(conn, narrowing.oid, identity)
    problems = []
    missing = [name for name in covered.values() if name not in narrowing.columns]
    if missing:
        problems.append(f"it does not publish replica identity column(s) {', '.join(missing)}")
    if identity != "f" and narrowing.filter_attnums - set(covered):
        names = identity_attnums(conn, narrowing.oid, "f")
        outside = sorted(names.get(n, str(n)) for n in narrowing.filter_attnums - set(covered))
        problems.append(f"its row filter reads column(s) {', '.join(outside)} outside the "
                        "replica identity")
    return problems


# --- a publication widened while streaming ---------------------------------------------------
@dataclass(frozen=True)
class PublishedShape:
    """What a publication publishes of one table at one moment, sampled while streaming to
    notice it widen: rows and values that were left out then are not sent when they come
    in (pgoutput sends changes, never the rows a publication change lets through)."""

    oid: int
    #: ``pg_publication_tables.rowfilter`` (PostgreSQL 15+; None: every row).
    row_filter: str | None
    #: Published columns (PostgreSQL 15+; empty before, which has no column lists).
    columns: frozenset[str]
    #: Every column the table has, to tell a column the publication now sends from one just
    #: added to the table (ADD COLUMN is a schema change, not a widening).
    table_columns: frozenset[str]
    #: A partitioned table's leaf partitions (oids).
    leaves: frozenset[int]


def published_shapes(conn: psycopg.Connection, publication: str,
                     tables: Sequence[tuple[str, str]]) -> dict[str, PublishedShape]:
    """``'schema.table'`` → what ``publication`` publishes of it, for the ``tables`` it
    publishes (an unpublished one is left out: that is another report)."""
    narrowed = conn.info.server_version >= FILTERS_VERSION
    published = "pt.attnames::text[], pt.rowfilter" if narrowed else "NULL::text[], NULL::text"
    rows = conn.execute(
        f"""
        SELECT pt.schemaname::text, pt.tablename::text, c.oid::int, {published},
               ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid
                     AND a.attnum > 0 AND NOT a.attisdropped),
               ARRAY(SELECT t.relid::int FROM pg_partition_tree(c.oid) t
                     WHERE t.isleaf AND t.relid <> c.oid)
        FROM pg_publication_tables pt
        JOIN pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        JOIN unnest(%s::text[], %s::text[]) AS x(s, t)
          ON x.s = pt.schemaname AND x.t = pt.tablename
        WHERE pt.pubname = %s
        """,  # `published` is one of two constants, never input
        ([s for s, _ in tables], [t for _, t in tables], publication),
    ).fetchall()
    return {f"{s}.{t}": PublishedShape(
        int(oid), str(row_filter) if row_filter is not None else None,
        frozenset(columns or ()), frozenset(table_columns), frozenset(int(o) for o in leaves))
        for s, t, oid, columns, row_filter, table_columns, leaves in rows}


#: How a table the publication did not publish at the last sample (dropped from it, or a
#: partitioned table published through its partitions' names while
#: ``publish_via_partition_root`` was off) widened: its changes in between were passed over.
PUBLISHED_AGAIN = "published again (its changes while it was not were passed over)"


def widenings(conn: psycopg.Connection, before: dict[str, PublishedShape],
              after: dict[str, PublishedShape]) -> dict[str, str]:
    """``'schema.table'`` → how the publication came to send what it left out ``before``:
    a row filter changed or dropped, a column it now sends that the table had, a partition
    joined (ATTACH) that holds rows from before it joined, the table published again
    (:data:`PUBLISHED_AGAIN`). Narrowing is left out (a reload would not remove the rows
    the publication no longer sends)."""
    out = {}
    for table, now in after.items():
        then = before.get(table)
        if then is None:
            out[table] = PUBLISHED_AGAIN
            continue
        reasons = []
        if then.row_filter is not None and now.row_filter != then.row_filter:
            reasons.append(f"row filter WHERE {then.row_filter} became "
                           + (f"WHERE {now.row_filter}" if now.row_filter else "none"))
        columns = sorted((now.columns - then.columns) & then.table_columns)
        if columns:
            reasons.append(f"column(s) {', '.join(columns)} now published")
        joined = _partitions_with_older_rows(conn, now.oid, sorted(now.leaves - then.leaves))
        if joined:
            reasons.append(f"partition(s) {', '.join(joined)} attached with rows")
        if reasons:
            out[table] = "; ".join(reasons)
    return out


def _partitions_with_older_rows(conn: psycopg.Connection, root: int,
                                leaves: Sequence[int]) -> list[str]:
    """The ``leaves`` of ``root`` holding a row older than their joining it. A partition
    joins with a ``pg_inherits`` row written by the ATTACH (or CREATE … PARTITION OF); a
    row whose xmin is not newer than the youngest such row on its way up to ``root`` was
    there before (frozen rows count as old), so the stream never sent it. Rows written in
    the joining transaction itself count as older too, and so does a partition locked for
    longer than a second: a reload too many, never one too few."""
    found = []
    for leaf in leaves:
        row = conn.execute(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (leaf,)
        ).fetchone()
        if row is None:
            continue  # dropped since
        name = f"{row[0]}.{row[1]}"
        try:
            if _older_rows(conn, sql.Identifier(str(row[0]), str(row[1])), leaf, root):
                found.append(name)
        except psycopg.errors.UndefinedTable:
            continue  # dropped since
        except psycopg.errors.LockNotAvailable:
            found.append(name)
    return found


def _older_rows(conn: psycopg.Connection, leaf_name: sql.Identifier, leaf: int,
                root: int) -> bool:
    with conn.transaction():
        # The sampler must not wait behind DDL holding the partition.
        conn.execute("SET LOCAL lock_timeout = '1s'")
        row = conn.execute(sql.SQL(
            """
            SELECT EXISTS (SELECT 1 FROM ONLY {} WHERE age(xmin) >= (
                SELECT min(age(i.xmin)) FROM pg_inherits i
                WHERE i.inhrelid IN (SELECT relid FROM pg_partition_ancestors(%s::oid))
                  AND i.inhrelid IN (SELECT relid FROM pg_partition_tree(%s::oid))
                  AND i.inhrelid <> %s::oid))
            """).format(leaf_name), (leaf, root, root)).fetchone()
    return bool(row and row[0])
