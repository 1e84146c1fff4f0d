"""Setup against publications narrowed by their owner (PostgreSQL 15+): what it refuses,
what it reports, and that it never widens them."""

from __future__ import annotations

import pytest

from dbmazz.errors import SetupError
from dbmazz.source.setup import setup_source
from dbmazz.testing.fixtures import Database


@pytest.fixture
def filtered(pg_db: Database) -> Database:
    with pg_db.connect() as conn:
        if conn.info.server_version < 150000:
            pytest.skip(f"row filters need PostgreSQL 15+, the server is "
                        f"{conn.info.server_version // 10000}")
    pg_db.execute("CREATE TABLE public.orders (id int PRIMARY KEY, status text, note text)")
    pg_db.execute("CREATE PUBLICATION mine FOR TABLE public.orders WHERE (status = 'open')")
    return pg_db


def test_identity_that_the_row_filter_outgrows_is_refused(filtered: Database) -> None:
    filtered.execute("ALTER TABLE public.orders REPLICA IDENTITY FULL")
    # DEFAULT would leave the filter's column outside the identity: PostgreSQL would reject
    # every UPDATE of the table.
    with pytest.raises(SetupError) as failure:
        setup_source(filtered.dsn, ["public.orders"], "mine", "s1", "default")
    assert "row filter reads column(s) status" in failure.value.message
    assert "REPLICA IDENTITY DEFAULT" in failure.value.message
    [(identity,)] = filtered.query(
        "SELECT relreplident::text FROM pg_class WHERE relname = 'orders'")
    assert identity == "f"  # nothing changed
    assert not filtered.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 's1'")


def test_existing_conflict_is_reported_not_refused(filtered: Database) -> None:
    # The table already has DEFAULT identity: its UPDATEs fail today, dbmazz did not cause it.
    filtered.execute("ALTER TABLE public.orders REPLICA IDENTITY DEFAULT")
    result = setup_source(filtered.dsn, ["public.orders"], "mine", "s1", "keep",
                          check_only=True)
    assert any("PostgreSQL rejects UPDATEs and DELETEs of public.orders" in w
               and "'mine'" in w for w in result.warnings), result.warnings
    assert any("row filter WHERE (status = 'open'::text)" in w for w in result.warnings)


def test_another_publications_column_list_counts_too(filtered: Database) -> None:
    # Another consumer's publication with a column list: FULL would break the table for it.
    filtered.execute("CREATE PUBLICATION theirs FOR TABLE public.orders (id, status)")
    with pytest.raises(SetupError, match=r"'theirs'.*note"):
        setup_source(filtered.dsn, ["public.orders"], "mine", "s1")
    # Setup leaves both publications as they were.
    rows = filtered.query("SELECT pubname, attnames::text, rowfilter FROM "
                          "pg_publication_tables ORDER BY pubname")
    assert rows == [("mine", "{id,status,note}", "(status = 'open'::text)"),
                    ("theirs", "{id,status}", None)]


def test_partitions_are_held_to_their_roots_column_list(filtered: Database) -> None:
    """Through the root, PostgreSQL holds each partition's identity to the root's column
    list; the root's own identity (FULL here) is never checked, it holds no rows."""
    filtered.execute("""
    CREATE TABLE public.ev (id int, region text, secret text, PRIMARY KEY (id, region))
        PARTITION BY LIST (region);
    CREATE TABLE public.ev_eu PARTITION OF public.ev FOR VALUES IN ('eu');
    INSERT INTO public.ev VALUES (1, 'eu', 's');
    ALTER TABLE public.ev REPLICA IDENTITY FULL;
    CREATE PUBLICATION root FOR TABLE public.ev (id, region)
        WITH (publish_via_partition_root = true);
    """)
    with pytest.raises(SetupError) as failure:
        setup_source(filtered.dsn, ["public.ev"], "root", "s1")
    assert ("would reject UPDATEs and DELETEs of public.ev_eu (partitions of public.ev): "
            "publication 'root'") in failure.value.message
    assert "column(s) secret" in failure.value.message
    [(identity,)] = filtered.query(
        "SELECT relreplident::text FROM pg_class WHERE relname = 'ev_eu'")
    assert identity == "d"  # nothing changed: the table still takes UPDATEs
    filtered.execute("UPDATE public.ev SET secret = 'x'")
    # DEFAULT, the partitions' identity now, is what the column list allows.
    setup_source(filtered.dsn, ["public.ev"], "root", "s1", "default")
    filtered.execute("UPDATE public.ev SET secret = 'y'")


def test_row_filter_under_default_identity_and_toastable_columns(pg_db: Database) -> None:
    with pg_db.connect() as conn:
        if conn.info.server_version < 150000:
            pytest.skip("row filters need PostgreSQL 15+")
    # The filter reads only the key, so DEFAULT identity is valid for PostgreSQL; but a
    # row whose key change moves it into the filter arrives as an insert without its
    # unchanged TOASTed `big`, and the target would get NULL.
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, big text, n int)")
    pg_db.execute("CREATE PUBLICATION f FOR TABLE public.t WHERE (id > 100)")
    # The table has DEFAULT identity already (the user's choice): reported, not refused.
    kept = setup_source(pg_db.dsn, ["public.t"], "f", "s1", "keep", check_only=True)
    assert any("without the TOASTed values" in w and "(big)" in w for w in kept.warnings)
    # Setup switching a FULL table to DEFAULT would cause it: refused.
    pg_db.execute("ALTER TABLE public.t REPLICA IDENTITY FULL")
    with pytest.raises(SetupError) as failure:
        setup_source(pg_db.dsn, ["public.t"], "f", "s1", "default")
    assert "(big)" in failure.value.message
    assert "REPLICA_IDENTITY=full" in str(failure.value.hint)
    # FULL: PostgreSQL fills the values from the old row; nothing to say.
    full = setup_source(pg_db.dsn, ["public.t"], "f", "s1", "full", check_only=True)
    assert not any("TOASTed" in w for w in full.warnings)
