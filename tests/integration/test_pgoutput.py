"""Every pgoutput message type, produced by real SQL and parsed from the live stream."""

from __future__ import annotations

import psycopg
import pytest

from dbmazz.source import pgoutput as po
from dbmazz.source.replication import ReplicationStream
from dbmazz.testing.fixtures import Database
from tests.integration._replication_helpers import (
    commits,
    kinds,
    make_slot,
    make_table,
    parse_all,
    read_until,
    texts,
)


def open_stream(db: Database, **kwargs: object) -> ReplicationStream:
    return ReplicationStream.open(db.dsn, "s1", ["pub"], **kwargs)  # type: ignore[arg-type]


def test_insert_update_delete_truncate_with_default_identity(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.execute("UPDATE t SET v = 'b' WHERE id = 1")
        conn.execute("UPDATE t SET id = 2 WHERE id = 1")  # key change
        conn.execute("DELETE FROM t WHERE id = 2")
        conn.execute("TRUNCATE t")
    with open_stream(pg_db) as stream:
        raw = read_until(stream, commits(5))
    # TRUNCATE gives the table a new file: pgoutput describes the relation again.
    assert kinds(raw) == "BRICBUCBUCBDCBRTC"
    msgs = parse_all(raw)
    rel, ins, upd, upd_key, dele, trunc = msgs[1], msgs[2], msgs[5], msgs[8], msgs[11], msgs[15]
    assert msgs[14] == rel
    assert isinstance(rel, po.Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "t", "d")
    assert rel.identity_columns == ("id",)
    assert isinstance(ins, po.Insert) and ins.relation_oid == rel.oid
    assert texts(ins.new) == ["1", "a"]
    assert isinstance(upd, po.Update) and upd.old_kind is None and texts(upd.new) == ["1", "b"]
    # A key change sends the old key (other columns null) so the target can delete it.
    assert isinstance(upd_key, po.Update) and upd_key.old_kind == "K"
    assert texts(upd_key.old) == ["1", None] and texts(upd_key.new) == ["2", "b"]
    assert isinstance(dele, po.Delete) and dele.old_kind == "K"
    assert texts(dele.old) == ["2", None]
    assert isinstance(trunc, po.Truncate) and trunc.relation_oids == (rel.oid,)
    begin, commit = msgs[0], msgs[3]
    assert isinstance(begin, po.Begin) and isinstance(commit, po.Commit)
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn


def test_full_identity_sends_whole_old_rows(pg_db: Database) -> None:
    make_table(pg_db, identity="FULL")
    make_slot(pg_db)
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.execute("UPDATE t SET id = 2, v = 'b' WHERE id = 1")
        conn.execute("DELETE FROM t WHERE id = 2")
    with open_stream(pg_db) as stream:
        msgs = parse_all(read_until(stream, commits(3)))
    rel = msgs[1]
    assert isinstance(rel, po.Relation) and rel.replica_identity == "f"
    assert rel.identity_columns == ("id", "v")
    upd = next(m for m in msgs if isinstance(m, po.Update))
    assert upd.old_kind == "O" and texts(upd.old) == ["1", "a"] and texts(upd.new) == ["2", "b"]
    dele = next(m for m in msgs if isinstance(m, po.Delete))
    assert dele.old_kind == "O" and texts(dele.old) == ["2", "b"]


def test_rollbacks_and_savepoints(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("INSERT INTO t VALUES (100, 'rolled back')")
            raise RuntimeError("abort")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1, 'kept')")
            conn.execute("SAVEPOINT a")
            conn.execute("INSERT INTO t VALUES (2, 'undone')")
            conn.execute("SAVEPOINT b")
            conn.execute("INSERT INTO t VALUES (3, 'undone too')")
            conn.execute("ROLLBACK TO SAVEPOINT a")
            conn.execute("INSERT INTO t VALUES (4, 'kept')")
            conn.execute("SAVEPOINT c")
            conn.execute("INSERT INTO t VALUES (5, 'kept')")
            conn.execute("RELEASE SAVEPOINT c")
    with open_stream(pg_db) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
    inserted = [texts(m.new)[0] for m in msgs if isinstance(m, po.Insert)]
    assert inserted == ["1", "4", "5"]
    assert sum(isinstance(m, po.Begin) for m in msgs) == 1


def test_logical_messages(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1, 'a')")
            conn.execute("SELECT pg_logical_emit_message(true, 'dbmazz', 'in txn')")
        conn.execute("SELECT pg_logical_emit_message(false, 'dbmazz', '\\x00ff'::bytea)")
        conn.execute("INSERT INTO t VALUES (2, 'b')")
    with open_stream(pg_db, messages=True) as stream:
        raw = read_until(stream, commits(2))
    assert kinds(raw) == "BRIMCMBIC"
    transactional, standalone = (m for m in parse_all(raw) if isinstance(m, po.LogicalMessage))
    assert transactional.transactional and transactional.content == b"in txn"
    assert not standalone.transactional and standalone.content == b"\x00\xff"
    assert standalone.prefix == "dbmazz"


def test_messages_off_sends_none(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'p', 'x')")
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    with open_stream(pg_db) as stream:
        assert kinds(read_until(stream, commits(1))) == "BRIC"


def test_type_message_for_enum_column(pg_db: Database) -> None:
    pg_db.execute("CREATE TYPE \"Mood\" AS ENUM ('ok', 'sad')")
    pg_db.execute('CREATE TABLE t (id int PRIMARY KEY, m "Mood")')
    pg_db.execute("CREATE PUBLICATION pub FOR TABLE t")
    make_slot(pg_db)
    pg_db.execute("INSERT INTO t VALUES (1, 'sad')")
    with open_stream(pg_db) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
    typ, rel = msgs[1], msgs[2]
    assert isinstance(typ, po.Type) and (typ.namespace, typ.name) == ("public", "Mood")
    assert isinstance(rel, po.Relation) and rel.columns[1].type_oid == typ.oid


def test_origin_message(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    with pg_db.connect() as conn:
        conn.execute("SELECT pg_replication_origin_create('upstream')")
        conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())")
            conn.execute("INSERT INTO t VALUES (1, 'a')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
    with open_stream(pg_db) as stream:
        # PostgreSQL 14 also sends the origin's creation as an empty transaction (B, C).
        raw = read_until(stream, lambda m: b"I" in {x[:1] for x in m} and m[-1][:1] == b"C")
    msgs = parse_all(raw)
    begin = max(i for i, m in enumerate(msgs) if isinstance(m, po.Begin))
    origin = msgs[begin + 1]
    assert isinstance(origin, po.Origin)
    assert origin.name == "upstream" and origin.commit_lsn == 0xABCDEF


def test_truncate_options_and_several_tables(pg_db: Database) -> None:
    pg_db.execute("CREATE TABLE a (id serial PRIMARY KEY)")
    pg_db.execute("CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a)")
    pg_db.execute("CREATE PUBLICATION pub FOR TABLE a, b")
    make_slot(pg_db)
    pg_db.execute("INSERT INTO a DEFAULT VALUES")
    pg_db.execute("TRUNCATE a RESTART IDENTITY CASCADE")
    with open_stream(pg_db) as stream:
        msgs = parse_all(read_until(stream, commits(2)))
    trunc = next(m for m in msgs if isinstance(m, po.Truncate))
    rels = {m.oid: m.name for m in msgs if isinstance(m, po.Relation)}
    assert trunc.cascade and trunc.restart_identity
    assert sorted(rels[o] for o in trunc.relation_oids) == ["a", "b"]


def test_binary_mode(pg_db: Database) -> None:
    make_table(pg_db)
    make_slot(pg_db)
    pg_db.execute("INSERT INTO t VALUES (258, NULL)")
    with open_stream(pg_db, binary=True) as stream:
        msgs = parse_all(read_until(stream, commits(1)))
    ins = next(m for m in msgs if isinstance(m, po.Insert))
    assert ins.new == (po.ColumnValue("b", (258).to_bytes(4, "big")), po.ColumnValue("n", None))


def test_session_settings_make_text_deterministic(pg_db: Database) -> None:
    pg_db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz, d date, f float8, i interval)"
    )
    pg_db.execute("CREATE PUBLICATION pub FOR TABLE t")
    make_slot(pg_db)
    with psycopg.connect(pg_db.dsn, autocommit=True) as conn:
        # The writer's own session settings must not leak into the stream's text.
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET IntervalStyle = 'iso_8601'")
        conn.execute(
            "INSERT INTO t VALUES (1, '2024-01-02 09:00:00+09', '2024-03-04', 0.1, "
            "'1 day 2 hours')"
        )
    with open_stream(pg_db) as stream:
        ins = next(m for m in parse_all(read_until(stream, commits(1)))
                   if isinstance(m, po.Insert))
    assert texts(ins.new) == ["1", "2024-01-02 00:00:00+00", "2024-03-04", "0.1",
                              "1 day 02:00:00"]
