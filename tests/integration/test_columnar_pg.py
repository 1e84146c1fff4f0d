"""decode_changes on pgoutput streams produced by a real PostgreSQL, for every type.

Changes are fetched with ``pg_logical_slot_get_binary_changes`` (proto 1) in a session set up
like dbmazz's replication connection (DateStyle ISO, TimeZone UTC, extra_float_digits 3,
IntervalStyle postgres). A minimal parser here finds Relation messages and commit LSNs; the
full parser lives in dbmazz.source.pgoutput and is not used on purpose.
"""

from __future__ import annotations

import datetime as dt
import secrets
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from dbmazz.source.columnar import decode_changes, unchanged_mask
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.source.types import DecodeStats, TypeRegistry, resolve
from dbmazz.testing.fixtures import Database
from tests.columnar_helpers import (
    US_MAX,
    US_MIN,
    assert_matches_reference,
    ref_parse,
    storage,
)

SESSION = ("SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3;"
           " SET IntervalStyle = postgres")


# --- minimal stream helper -------------------------------------------------------------------
def _cstring(msg: bytes, pos: int) -> tuple[str, int]:
    end = msg.index(b"\0", pos)
    return msg[pos:end].decode(), end + 1


def parse_relation(msg: bytes) -> Relation:
    (oid,) = struct.unpack_from(">I", msg, 1)
    namespace, pos = _cstring(msg, 5)
    name, pos = _cstring(msg, pos)
    identity = chr(msg[pos])
    (ncols,) = struct.unpack_from(">h", msg, pos + 1)
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = msg[pos]
        col, pos = _cstring(msg, pos + 1)
        type_oid, typmod = struct.unpack_from(">Ii", msg, pos)
        pos += 8
        columns.append(RelationColumn(col, type_oid, typmod, bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


@dataclass
class Changes:
    """One relation's I/U/D messages laid out as decode_changes expects them."""

    relation: Relation
    messages: list[bytes] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sizes = [len(m) for m in self.messages]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        data = np.frombuffer(b"".join(self.messages), dtype=np.uint8)
        return data, starts, np.array(self.lsns, dtype=np.uint64)


def fetch_changes(db: Database, slot: str, publication: str,
                  registry: TypeRegistry | None = None) -> dict[str, Changes]:
    """Consume the slot; I/U/D messages per table name with their commit end LSNs."""
    with db.connect() as conn:
        conn.execute(SESSION)
        rows = conn.execute(
            "SELECT lsn, data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL,"
            " 'proto_version', '1', 'publication_names', %s)", (slot, publication)).fetchall()
    relations: dict[int, Relation] = {}
    out: dict[str, Changes] = {}
    pending: list[tuple[Changes, bytes]] = []
    for _lsn, data in rows:
        msg = bytes(data)
        kind = chr(msg[0])
        if kind == "R":
            rel = parse_relation(msg)
            relations[rel.oid] = rel
            changes = out.setdefault(rel.name, Changes(rel))
            assert changes.relation == rel, "shape changed mid-test"
        elif kind == "Y" and registry is not None:
            (oid,) = struct.unpack_from(">I", msg, 1)
            namespace, pos = _cstring(msg, 5)
            name, _ = _cstring(msg, pos)
            registry.add_type_message(oid, namespace, name)
        elif kind in "IUD":
            (oid,) = struct.unpack_from(">I", msg, 1)
            pending.append((out[relations[oid].name], msg))
        elif kind == "C":
            (end_lsn,) = struct.unpack_from(">Q", msg, 10)
            for changes, change in pending:
                changes.messages.append(change)
                changes.lsns.append(end_lsn)
            pending = []
    assert not pending
    return out


def setup_slot(db: Database, *tables: str) -> None:
    db.execute(f"CREATE PUBLICATION pub FOR TABLE {', '.join(tables)}")
    db.execute("SELECT pg_create_logical_replication_slot('slot', 'pgoutput')")


def decode(db: Database, table: str, keys: list[str], registry: TypeRegistry | None = None,
           stats: DecodeStats | None = None) -> tuple[pa.RecordBatch, Changes]:
    changes = fetch_changes(db, "slot", "pub", registry)[table]
    data, starts, lsns = changes.arrays()
    batch = decode_changes(changes.relation, keys, data, starts, lsns, types=registry,
                           stats=stats)
    assert_matches_reference(batch, changes.relation, keys, data, starts, lsns, registry)
    return batch, changes


# --- every type ------------------------------------------------------------------------------
ALL_TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN price AS numeric(10,2);
CREATE TABLE all_types (
  id bigint PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8,
  n12 numeric(12,2), n38 numeric(38,10), nu numeric,
  tx text, vc varchar(10), bp char(5), nm name, uu uuid, ip inet, ci cidr, mac macaddr,
  mo money, x xml, js json, jb jsonb, by bytea,
  d date, ts timestamp, tstz timestamptz, tm time, tmz timetz, iv interval,
  ai int4[], at text[], an numeric(6,2)[], ad date[], ats timestamptz[], ab bool[],
  aby bytea[], a2 int4[], af float8[],
  r int4range, pt point, bx box, abx box[], tv tsvector, bits varbit, lsn pg_lsn,
  md mood, pr price, amd mood[]
)"""

ROWS = [
    """(1, true, -32768, 2147483647, -9223372036854775808, 4294967295, 1.1, 0.1,
        1234567890.12, 12345678901234567890.1234567890, 3.14159265358979323846264338327950288,
        'hello', 'varchar', 'ab', 'name', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, '<a>x</a>',
        '{"k": [1, 2]}', '{"k": [1, 2]}', '\\x00ff10',
        '2024-02-29', '2024-01-01 12:34:56.789', '2024-01-01 12:34:56.123456+05:30',
        '04:05:06.789', '04:05:06+02', '1 year 2 mons 3 days 04:05:06.5',
        '{1,2,NULL}', '{"a b","c,d","e\\"f","g\\\\h",NULL,"NULL",""}', '{1.50,-2.25}',
        '{2024-01-01,infinity}', '{"2024-01-01 00:00:00+00",NULL}', '{t,f}',
        '{"\\\\x0102"}', '{{1,2},{3,4}}', '{NaN,Infinity,-1.5}',
        '[1,10)', '(1.5,2)', '((0,0),(1,1))', '{((0,0),(1,1));((2,2),(3,3))}',
        'a fat cat', B'1011', '16/B374D848',
        'happy', 19.99, '{sad,happy}')""",
    """(2, false, 0, 0, 0, 0, 'NaN', '-Infinity',
        'NaN', -0.0000000001, 'NaN',
        '', '', '', '', '00000000-0000-0000-0000-000000000000', '::1', '::/0',
        'ff:ff:ff:ff:ff:ff', -1, '', 'null', '"ünï 😀"', '\\x',
        '0044-03-15 BC', '0001-01-01 00:00:00 BC', '-infinity',
        '24:00:00', '00:00:00-12', '-1 days +02:00:00',
        '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
        'empty', '(0,0)', '((0,0),(0,0))', '{}', '', B'', '0/0',
        'sad', 0, '{}')""",
    """(3, NULL, NULL, NULL, NULL, NULL, 'Infinity', 5e-324,
        -9999999999.99, NULL, 'Infinity',
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        'infinity', 'infinity', '12345-06-07 08:09:10.5+00',
        NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL)""",
]


def test_every_type_decodes_from_a_real_stream(pg_db: Database) -> None:
    pg_db.execute(ALL_TYPES_DDL)
    setup_slot(pg_db, "all_types")
    for row in ROWS:
        pg_db.execute(f"INSERT INTO all_types VALUES {row}")
    registry = TypeRegistry()
    stats = DecodeStats()
    batch, changes = decode(pg_db, "all_types", ["id"], registry, stats)
    rel = changes.relation

    # Type knowledge: a Y message names the enum; the catalog says what it and the domain are.
    with pg_db.connect() as conn:
        registry.load_catalog(conn, [c.type_oid for c in rel.columns])
    typed = decode_changes(rel, ["id"], *changes.arrays(), types=registry)
    assert typed.schema.field("pr").type == pa.decimal128(10, 2)
    assert typed.schema.field("md").type == pa.string()
    assert typed.schema.field("amd").type == pa.list_(pa.string())
    assert typed.column("pr").to_pylist() == [Decimal("19.99"), Decimal("0.00"), None]
    assert typed.column("amd").to_pylist() == [["sad", "happy"], [], None]
    assert batch.schema.field("pr").type == pa.string()  # without the catalog: exact text

    # Every column equals what PostgreSQL itself prints for the value (the output function,
    # via a raw text-format SELECT in the same session settings), parsed by the reference.
    with pg_db.connect() as conn:
        conn.execute(SESSION)
        names = ", ".join(c.name for c in rel.columns)
        res = conn.pgconn.exec_(f"SELECT {names} FROM all_types ORDER BY id".encode())
        texts = [[None if (v := res.get_value(r, c)) is None else bytes(v).decode()
                  for c in range(res.nfields)] for r in range(res.ntuples)]
    for i, col in enumerate(rel.columns):
        plan = resolve(col.type_oid, col.type_modifier, registry)
        expected = [None if r[i] is None else ref_parse(r[i], plan) for r in texts]
        got = storage(typed.column(i))
        assert [_nan_safe(v) for v in got] == [_nan_safe(v) for v in expected], col.name

    # Spot checks against hand-written values (the truth, not the reference).
    def col(name: str) -> list[Any]:
        return storage(typed.column(name))

    assert col("b") == [True, False, None]
    assert col("i8") == [-(2**63), 0, None]
    assert col("o") == [4294967295, 0, None]
    assert col("f4")[0] == float(np.float32(1.1)) and col("f4")[2] == float("inf")
    assert col("f8")[0] == 0.1 and col("f8")[1] == float("-inf") and col("f8")[2] == 5e-324
    assert col("n12") == [Decimal("1234567890.12"), None, Decimal("-9999999999.99")]
    assert col("n38") == [Decimal("12345678901234567890.1234567890"),
                          Decimal("-0.0000000001"), None]
    assert col("nu") == ["3.14159265358979323846264338327950288", "NaN", "Infinity"]
    assert col("bp") == ["ab   ", "     ", None]
    assert col("by") == [b"\x00\xff\x10", b"", None]
    assert col("d") == [19782, -735160, 2932896]
    assert col("ts") == [1704112496789000, -62167219200000000, US_MAX]  # 1 BC = year 0
    assert col("tstz")[0] == 1704092696123456  # 12:34:56.123456+05:30 → 07:04:56.123456 UTC
    assert col("tstz")[1] == US_MIN
    # 12345-06-07 08:09:10.5 UTC: days(2345-06-07) + 25 Gregorian 400-year cycles.
    twelve_k = (dt.date(2345, 6, 7) - dt.date(1970, 1, 1)).days + 25 * 146097
    assert col("tstz")[2] == twelve_k * 86_400_000_000 + 29_350_500_000
    assert col("tm") == ["04:05:06.789", "24:00:00", None]
    assert col("iv") == ["1 year 2 mons 3 days 04:05:06.5", "-1 days +02:00:00", None]
    assert col("ai") == [[1, 2, None], [], None]
    assert col("at") == [["a b", "c,d", 'e"f', "g\\h", None, "NULL", ""], [], None]
    assert col("an") == [[Decimal("1.50"), Decimal("-2.25")], [], None]
    assert col("ad") == [[19723, 2932896], [], None]
    assert col("ats") == [[1704067200000000, None], [], None]
    assert col("aby") == [[b"\x01\x02"], [], None]
    assert col("a2") == [[1, 2, 3, 4], [], None]
    assert col("abx") == [["(1,1),(0,0)", "(3,3),(2,2)"], [], None]
    assert col("md") == ["happy", "sad", None]
    assert col("__dbmazz_op") == [0, 0, 0]
    assert col("__dbmazz_lsn") == changes.lsns
    assert len(set(changes.lsns)) == 3  # three transactions, three commit LSNs

    assert stats.fallbacks["n12"] == {"numeric_nan": 1}
    assert stats.fallbacks["d"] == {"date_infinity": 1}
    assert stats.fallbacks["ts"] == {"timestamp_infinity": 1}
    assert stats.fallbacks["tstz"] == {"timestamp_infinity": 1}
    assert stats.fallbacks["a2"] == {"array_flattened": 1}
    assert stats.fallbacks["ad[]"] == {"date_infinity": 1}


def _nan_safe(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [_nan_safe(v) for v in value]
    return value


# --- change semantics ------------------------------------------------------------------------
def big_text() -> str:
    return secrets.token_hex(12000)  # incompressible, > TOAST threshold: stored out of line


@pytest.mark.parametrize("identity", ["default", "full"])
def test_toast_updates_keys_and_deletes(pg_db: Database, identity: str) -> None:
    pg_db.execute("CREATE TABLE toasty (id int PRIMARY KEY, small text, doc text)")
    pg_db.execute("ALTER TABLE toasty ALTER COLUMN doc SET STORAGE EXTERNAL")
    pg_db.execute(f"ALTER TABLE toasty REPLICA IDENTITY {identity.upper()}")
    setup_slot(pg_db, "toasty")
    doc = big_text()
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO toasty VALUES (1, 'a', %s)", (doc,))
        conn.execute("UPDATE toasty SET small = 'b' WHERE id = 1")  # doc unchanged
        conn.execute("UPDATE toasty SET id = 2 WHERE id = 1")  # key change, doc unchanged
        with conn.transaction():
            conn.execute("INSERT INTO toasty VALUES (3, 'c', NULL)")
            conn.execute("UPDATE toasty SET doc = 'short' WHERE id = 3")
            conn.execute("DELETE FROM toasty WHERE id = 2")
    batch, changes = decode(pg_db, "toasty", ["id"])
    assert changes.relation.replica_identity == identity[0]
    assert batch.column("__dbmazz_op").to_pylist() == [0, 1, 1, 0, 1, 2]
    assert batch.column("id").to_pylist() == [1, 1, 2, 3, 3, 2]
    lsns = batch.column("__dbmazz_lsn").to_pylist()
    assert lsns[3] == lsns[4] == lsns[5] and len(set(lsns)) == 4
    assert batch.column("__dbmazz_seq").to_pylist() == list(range(6))
    if identity == "full":
        # The old row carries the value: filled in, not marked unchanged.
        assert batch.column("doc").to_pylist() == [doc, doc, doc, None, "short", doc]
        assert unchanged_mask(batch, 2).tolist() == [False] * 6
        assert batch.column("small").to_pylist() == ["a", "b", "b", "c", "c", "b"]
        assert batch.column("__dbmazz_old_id").to_pylist() == [None, 1, 1, None, 3, None]
    else:
        assert batch.column("doc").to_pylist() == [doc, None, None, None, "short", None]
        assert unchanged_mask(batch, 2).tolist() == [False, True, True, False, False, False]
        assert batch.column("small").to_pylist() == ["a", "b", "b", "c", "c", None]
        assert batch.column("__dbmazz_old_id").to_pylist() == [None, None, 1, None, None, None]


def test_wide_table_with_unchanged_toast_beyond_column_64(pg_db: Database) -> None:
    cols = ", ".join(f"c{i} int" for i in range(1, 70))
    pg_db.execute(f"CREATE TABLE wide (id int PRIMARY KEY, {cols}, doc text)")
    pg_db.execute("ALTER TABLE wide ALTER COLUMN doc SET STORAGE EXTERNAL")
    setup_slot(pg_db, "wide")
    doc = big_text()
    with pg_db.connect() as conn:
        values = ", ".join(str(i) for i in range(1, 70))
        conn.execute(f"INSERT INTO wide VALUES (1, {values}, %s)", (doc,))
        conn.execute("UPDATE wide SET c69 = -1 WHERE id = 1")
    batch, _ = decode(pg_db, "wide", ["id"])
    assert batch.num_columns == 71 + 4 + 1
    assert batch.schema.field("__dbmazz_unchanged").type == pa.binary(9)
    assert unchanged_mask(batch, 70).tolist() == [False, True]
    assert not any(unchanged_mask(batch, i)[1] for i in range(70))
    assert batch.column("c69").to_pylist() == [69, -1]
    assert batch.column("doc").to_pylist() == [doc, None]


def test_many_rows_in_one_batch(pg_db: Database) -> None:
    pg_db.execute("CREATE TABLE events (id bigint PRIMARY KEY, qty int, note text,"
                  " created_at timestamptz, amount numeric(12,2), payload jsonb)")
    setup_slot(pg_db, "events")
    pg_db.execute(
        "INSERT INTO events SELECT g, g % 1000 - 500, repeat('n', g % 50),"
        " '2024-01-01'::timestamptz + g * interval '1 second', g / 100.0,"
        " jsonb_build_object('g', g) FROM generate_series(1, 5000) g")
    pg_db.execute("UPDATE events SET qty = qty + 1 WHERE id % 3 = 0")
    pg_db.execute("DELETE FROM events WHERE id % 5 = 0")
    batch, _ = decode(pg_db, "events", ["id"])
    ops = np.asarray(batch.column("__dbmazz_op"))
    assert (ops == 0).sum() == 5000 and (ops == 1).sum() == 1666 and (ops == 2).sum() == 1000
    assert batch.column("amount").to_pylist()[:2] == [Decimal("0.01"), Decimal("0.02")]
    assert storage(batch.column("created_at"))[0] == 1704067201000000


def test_load_catalog_describes_user_types(pg_db: Database) -> None:
    pg_db.execute("CREATE TYPE color AS ENUM ('red'); CREATE DOMAIN pos AS numeric(5,1);"
                  " CREATE DOMAIN pos2 AS pos")
    with pg_db.connect() as conn:
        oids = dict(conn.execute(
            "SELECT typname, oid::int FROM pg_type WHERE typname IN"
            " ('color', '_color', 'pos', 'pos2')").fetchall())
        registry = TypeRegistry()
        registry.load_catalog(conn, [oids["pos2"], oids["_color"]])
    assert registry.get(oids["color"]) is not None  # pulled in as the array's element
    assert resolve(oids["pos2"], -1, registry).arrow_type == pa.decimal128(5, 1)
    assert resolve(oids["_color"], -1, registry).arrow_type == pa.list_(pa.string())


def test_session_settings_matter(pg_db: Database) -> None:
    """Without the session settings the texts differ — why the replication connection sets
    them (guards the assumption the parsers are built on)."""
    with pg_db.connect() as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        text = conn.execute("SELECT '2024-01-31'::date::text").fetchone()
    assert text == ("31/01/2024",)
    with psycopg.connect(pg_db.dsn) as conn:
        conn.execute(SESSION)
        assert conn.execute("SELECT '2024-01-31'::date::text").fetchone() == ("2024-01-31",)
