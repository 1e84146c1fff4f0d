"""PostgreSQL source setup: idempotency, hostile identifiers, and every error's text."""

from __future__ import annotations

import re

import pytest

from dbmazz.errors import SetupError
from dbmazz.source.replication import ReplicationStream
from dbmazz.source.setup import primary_keys, setup_source
from dbmazz.source.slots import slot_info
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster
from tests.integration._replication_helpers import commits, parse_all, read_until

HOSTILE_TABLE = '"My Schema"."we""ird tab lé"'
HOSTILE_PUB = 'my pub "1"'


def create_tables(db: Database) -> None:
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, v text)")
    db.execute('CREATE SCHEMA "My Schema"')
    db.execute('CREATE TABLE "My Schema"."we""ird tab lé" ("k2" int, "Key Col" text, '
               'x int, PRIMARY KEY ("Key Col", "k2"))')
    db.execute('CREATE SCHEMA "Sales"')
    db.execute('CREATE TABLE "Sales"."Orders" (id int PRIMARY KEY)')


def identities(db: Database) -> dict[str, str]:
    rows = db.query(
        "SELECT n.nspname || '.' || c.relname, c.relreplident::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    )
    return {str(k): str(v) for k, v in rows}


def published(db: Database, pub: str) -> set[str]:
    return {f"{s}.{t}" for s, t in db.query(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,))}


TABLES = ["orders", HOSTILE_TABLE, "Sales.Orders"]
NAMES = ("public.orders", 'My Schema.we"ird tab lé', "Sales.Orders")


def test_setup_creates_everything_then_is_idempotent(pg_db: Database) -> None:
    create_tables(pg_db)
    first = setup_source(pg_db.dsn, TABLES, HOSTILE_PUB, "s1")
    assert first.tables == NAMES
    assert first.primary_keys == {
        "public.orders": ("id",),
        'My Schema.we"ird tab lé': ("Key Col", "k2"),
        "Sales.Orders": ("id",),
    }
    assert first.slot_created and first.publication_created
    assert set(first.replica_identity_changed) == set(NAMES)
    assert first.consistent_point and first.confirmed_flush_lsn is None
    assert published(pg_db, HOSTILE_PUB) == set(NAMES)
    assert all(identities(pg_db)[n] == "f" for n in NAMES)
    info = slot_info(pg_db.dsn, "s1")
    assert info.exists and info.confirmed_flush_lsn == first.consistent_point

    again = setup_source(pg_db.dsn, TABLES, HOSTILE_PUB, "s1")
    assert not again.slot_created and not again.publication_created
    assert again.tables_added == () and again.replica_identity_changed == ()
    assert again.warnings == ()
    assert again.consistent_point is None
    assert again.confirmed_flush_lsn == first.consistent_point
    assert again.primary_keys == first.primary_keys

    # The hostile publication name survives START_REPLICATION's quoting too.
    pg_db.execute('INSERT INTO "My Schema"."we""ird tab lé" VALUES (1, \'a\', 2)')
    with ReplicationStream.open(pg_db.dsn, "s1", [HOSTILE_PUB]) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
    assert [m.qualified_name for m in msgs if hasattr(m, "qualified_name")] == [
        'My Schema.we"ird tab lé'
    ]


def test_existing_publication_is_extended_never_shrunk(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("CREATE TABLE extra (id int PRIMARY KEY)")
    pg_db.execute("CREATE PUBLICATION pub FOR TABLE orders, extra")
    result = setup_source(pg_db.dsn, ["orders", "Sales.Orders"], "pub", "s1")
    assert not result.publication_created
    assert result.tables_added == ("Sales.Orders",)
    assert any("public.extra" in w and "not configured" in w for w in result.warnings)
    assert published(pg_db, "pub") == {"public.orders", "public.extra", "Sales.Orders"}


def test_existing_slot_and_new_table_warns_about_snapshot(pg_db: Database) -> None:
    create_tables(pg_db)
    setup_source(pg_db.dsn, ["orders"], "pub", "s1")
    result = setup_source(pg_db.dsn, ["orders", "Sales.Orders"], "pub", "s1")
    assert result.tables_added == ("Sales.Orders",)
    assert any("an on-demand snapshot loads their existing rows" in w for w in result.warnings)


def test_missing_tables_are_listed_in_one_error_and_nothing_changes(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("CREATE VIEW a_view AS SELECT 1 AS x")
    with pytest.raises(SetupError) as info:
        setup_source(pg_db.dsn, ["orders", "nope", "public.ORDERS", "a_view", "sales.orders"],
                     "pub", "s1")
    text = str(info.value)
    assert "tables not found" in text
    assert "public.nope" in text
    assert "public.ORDERS (did you mean 'public.orders'?)" in text
    assert "public.a_view (exists but is not a table)" in text
    assert "sales.orders (did you mean 'Sales.Orders'?)" in text
    assert "case-sensitive" in text
    assert published(pg_db, "pub") == set() and not slot_info(pg_db.dsn, "s1").exists


def test_tables_without_primary_key(pg_db: Database) -> None:
    pg_db.execute("CREATE TABLE nopk (a int, b int)")
    pg_db.execute("CREATE TABLE nopk2 (a int)")
    pg_db.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    with pytest.raises(SetupError, match=re.escape("tables without a primary key: public.nopk, "
                                                   "public.nopk2")) as info:
        setup_source(pg_db.dsn, ["orders", "nopk", "nopk2"], "pub", "s1")
    assert "REPLICA IDENTITY USING INDEX" in str(info.value)
    # A unique index chosen as replica identity is the documented fallback.
    pg_db.execute("ALTER TABLE nopk ALTER a SET NOT NULL, ALTER b SET NOT NULL")
    pg_db.execute("CREATE UNIQUE INDEX nopk_ba ON nopk (b, a)")
    pg_db.execute("ALTER TABLE nopk REPLICA IDENTITY USING INDEX nopk_ba")
    only_index = re.escape("keyed only by REPLICA IDENTITY USING INDEX: public.nopk")
    with pytest.raises(SetupError, match=only_index):
        setup_source(pg_db.dsn, ["nopk"], "pub", "s1", replica_identity="full")
    result = setup_source(pg_db.dsn, ["nopk", "orders"], "pub", "s1", replica_identity="keep")
    assert result.primary_keys == {"public.nopk": ("b", "a"), "public.orders": ("id",)}
    assert identities(pg_db)["public.nopk"] == "i"


def test_an_identity_index_other_than_the_primary_key_is_refused_under_keep(
        pg_db: Database) -> None:
    # Its UPDATEs and DELETEs carry that index's columns, not the primary key: a key
    # change would leave the old row in the target, a DELETE would have no key.
    pg_db.execute("CREATE TABLE ri (id int PRIMARY KEY, code int NOT NULL UNIQUE, v int)")
    pg_db.execute("ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code_key")
    with pytest.raises(SetupError, match=re.escape("other than their primary key: public.ri")):
        setup_source(pg_db.dsn, ["ri"], "pub", "s1", replica_identity="keep")
    assert published(pg_db, "pub") == set() and not slot_info(pg_db.dsn, "s1").exists
    # The primary key's own index as identity carries the key: accepted.
    pg_db.execute("ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_pkey")
    setup_source(pg_db.dsn, ["ri"], "pub", "s1", replica_identity="keep")
    assert identities(pg_db)["public.ri"] == "i"
    # 'default' switches the identity to the primary key.
    pg_db.execute("ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_code_key")
    setup_source(pg_db.dsn, ["ri"], "pub", "s1", replica_identity="default")
    assert identities(pg_db)["public.ri"] == "d"


def test_replica_identity_modes(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    result = setup_source(pg_db.dsn, ["orders"], "pub", "s1", replica_identity="default")
    assert result.replica_identity_changed == ("public.orders",)
    assert identities(pg_db)["public.orders"] == "d"
    pg_db.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    kept = setup_source(pg_db.dsn, ["orders"], "pub", "s1", replica_identity="keep")
    assert kept.replica_identity_changed == () and identities(pg_db)["public.orders"] == "f"
    pg_db.execute('ALTER TABLE "Sales"."Orders" REPLICA IDENTITY NOTHING')
    with pytest.raises(SetupError, match=re.escape("REPLICA IDENTITY NOTHING: Sales.Orders")):
        setup_source(pg_db.dsn, ["Sales.Orders"], "pub", "s1", replica_identity="keep")


def test_role_without_replication_privilege(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("DROP ROLE IF EXISTS app_norepl")
    pg_db.execute("CREATE ROLE app_norepl LOGIN PASSWORD 'app-secret-pw'")
    try:
        dsn = pg_db.dsn.replace(f"{pg_db.server.user}:{pg_db.server.password}",
                                "app_norepl:app-secret-pw")
        with pytest.raises(SetupError) as info:
            setup_source(dsn, ["orders"], "pub", "s1")
        text = str(info.value)
        assert "role 'app_norepl' lacks the REPLICATION attribute" in text
        assert "ALTER ROLE \"app_norepl\" WITH REPLICATION" in text
        assert "app-secret-pw" not in text
    finally:
        pg_db.execute("DROP ROLE app_norepl")


def test_role_that_does_not_own_the_tables(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("DROP ROLE IF EXISTS app_repl")
    pg_db.execute("CREATE ROLE app_repl LOGIN REPLICATION PASSWORD 'pw2'")
    pg_db.execute(f'GRANT CREATE ON DATABASE "{pg_db.name}" TO app_repl')
    try:
        dsn = pg_db.dsn.replace(f"{pg_db.server.user}:{pg_db.server.password}", "app_repl:pw2")
        with pytest.raises(SetupError, match=re.escape("does not own public.orders")):
            setup_source(dsn, ["orders"], "pub", "s1")
        assert published(pg_db, "pub") == set()
    finally:
        pg_db.execute(f'REVOKE CREATE ON DATABASE "{pg_db.name}" FROM app_repl')
        pg_db.execute("DROP ROLE app_repl")


def test_slot_problems_are_errors_and_the_slot_is_kept(pg_db: Database) -> None:
    create_tables(pg_db)
    setup_source(pg_db.dsn, ["orders"], "pub", "s1")
    with ReplicationStream.open(pg_db.dsn, "s1", ["pub"]), pytest.raises(
        SetupError, match=r"'s1' .* is active \(pid \d+\)"
    ):
        setup_source(pg_db.dsn, ["orders"], "pub", "s1")
    pg_db.execute("SELECT pg_create_logical_replication_slot('td', 'test_decoding')")
    with pytest.raises(SetupError, match="uses output plugin 'test_decoding', not pgoutput"):
        setup_source(pg_db.dsn, ["orders"], "pub", "td")
    pg_db.execute("SELECT pg_create_physical_replication_slot('phys')")
    with pytest.raises(SetupError, match=r"'phys' .* is a physical slot"):
        setup_source(pg_db.dsn, ["orders"], "pub", "phys")
    other = pg_db.server.create_database()
    try:
        pg_db.server.execute(
            "SELECT pg_create_logical_replication_slot('elsewhere', 'pgoutput')", other
        )
        with pytest.raises(SetupError, match=f"belongs to database '{other}'"):
            setup_source(pg_db.dsn, ["orders"], "pub", "elsewhere")
        assert slot_info(pg_db.dsn, "elsewhere").exists
    finally:
        pg_db.server.drop_database(other)
    for slot in ("s1", "td"):
        assert slot_info(pg_db.dsn, slot).exists
    pg_db.execute("SELECT pg_drop_replication_slot('phys')")


def test_invalid_names(pg_db: Database) -> None:
    create_tables(pg_db)
    with pytest.raises(SetupError, match="invalid replication slot name"):
        setup_source(pg_db.dsn, ["orders"], "pub", "Bad-Slot")
    with pytest.raises(SetupError, match="invalid publication name"):
        setup_source(pg_db.dsn, ["orders"], "p" * 64, "s1")
    with pytest.raises(SetupError, match="no tables"):
        setup_source(pg_db.dsn, [], "pub", "s1")
    with pytest.raises(SetupError, match=re.escape("more than once: public.orders")):
        setup_source(pg_db.dsn, ["orders", "public.orders"], "pub", "s1")


def test_export_snapshot_keeps_the_snapshot_open(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("INSERT INTO orders VALUES (1, 'before')")
    result = setup_source(pg_db.dsn, ["orders"], "pub", "s1", export_snapshot=True)
    assert result.slot_creation is not None
    with result.slot_creation as creation:
        pg_db.execute("INSERT INTO orders VALUES (2, 'after')")
        with pg_db.connect(autocommit=False) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute(f"SET TRANSACTION SNAPSHOT '{creation.snapshot_name}'")
            assert conn.execute("SELECT id FROM orders").fetchall() == [(1,)]
    again = setup_source(pg_db.dsn, ["orders"], "pub", "s1", export_snapshot=True)
    assert again.slot_creation is None and not again.slot_created


def test_primary_keys_function(pg_db: Database) -> None:
    create_tables(pg_db)
    pg_db.execute("CREATE TABLE nokey (a int)")
    with pg_db.connect() as conn:
        assert primary_keys(conn, [HOSTILE_TABLE]) == {'My Schema.we"ird tab lé':
                                                       ("Key Col", "k2")}
        with pytest.raises(SetupError, match=re.escape("without a primary key: public.nokey")):
            primary_keys(conn, ["nokey"])
        assert primary_keys(conn, ["nokey", "missing", "orders"], strict=False) == {
            "public.nokey": (),
            "public.orders": ("id",),
        }


def test_wal_level_replica(private_pg_cluster: PostgresCluster) -> None:
    private_pg_cluster.set_setting("wal_level", "replica", restart=True)
    private_pg_cluster.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    with pytest.raises(SetupError) as info:
        setup_source(private_pg_cluster.dsn(), ["orders"], "pub", "s1")
    assert str(info.value) == (
        "wal_level is 'replica'; set wal_level=logical in postgresql.conf and restart "
        "PostgreSQL"
    )
