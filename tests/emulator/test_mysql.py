"""The MySQL port with pymysql: DDL, SHOW, information_schema, ALTER jobs, SELECT."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pymysql
import pytest

from dbmazz.testing.starrocks import ManualClock, StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, make_table, mysql, sql, stream_load

FLINK_DDL = (
    "CREATE TABLE IF NOT EXISTS `d`.`orders` (`id` BIGINT NOT NULL, `k2` VARCHAR(20) NOT NULL,"
    " `v` VARCHAR(300) NULL DEFAULT \"x\" COMMENT \"c\", `ok` BOOLEAN NULL, `tiny` TINYINT,"
    " `big` LARGEINT, `amount` DECIMAL(38,9), `doc` JSON, `tags` ARRAY<VARCHAR(10)>,"
    " `raw` VARBINARY, `at` DATETIME, `day` DATE, `s` STRING, `f` FLOAT, `db` DOUBLE)"
    " PRIMARY KEY (`id`, `k2`) DISTRIBUTED BY HASH (`id`) BUCKETS 4"
    " PROPERTIES (\"replication_num\" = \"1\")"
)


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    return starrocks


def error_of(sr: StarRocksEmulator, statement: str, db: str | None = "d") -> tuple[int, str]:
    with pytest.raises(pymysql.MySQLError) as err:
        sql(sr, statement, db=db)
    code, message = err.value.args
    return int(code), str(message)


def test_select_1_and_version(sr: StarRocksEmulator) -> None:
    assert sql(sr, "SELECT 1") == [(1,)]
    assert sql(sr, "SELECT current_version()") == [("3.3.0-emulator",)]
    conn = mysql(sr)
    try:
        assert conn.get_server_info() == "5.1.0"
    finally:
        conn.close()


def test_authentication() -> None:
    with StarRocksEmulator(password="secret") as sr:
        assert mysql(sr, password="secret").ping() is None
        with pytest.raises(pymysql.err.OperationalError) as err:
            mysql(sr, password="wrong")
        assert err.value.args[0] == 1045
        with pytest.raises(pymysql.err.OperationalError):
            mysql(sr, user="nobody", password="secret")


def test_create_database(sr: StarRocksEmulator) -> None:
    sql(sr, "CREATE DATABASE IF NOT EXISTS d")
    code, message = error_of(sr, "CREATE DATABASE d")
    assert code == 1007
    assert "database exists" in message
    sql(sr, "CREATE DATABASE e")
    assert sql(sr, "SHOW DATABASES") == [("information_schema",), ("d",), ("e",)]
    sql(sr, "DROP DATABASE e")
    assert error_of(sr, "DROP DATABASE e")[0] == 1008
    sql(sr, "DROP DATABASE IF EXISTS e")


def test_flink_style_create_table(sr: StarRocksEmulator) -> None:
    sql(sr, FLINK_DDL)
    sql(sr, FLINK_DDL)  # IF NOT EXISTS
    assert error_of(sr, FLINK_DDL.replace(" IF NOT EXISTS", ""))[0] == 1050
    assert sql(sr, "SHOW TABLES", db="d") == [("orders",), ("t",)]
    columns = sql(
        sr,
        "SELECT COLUMN_NAME, DATA_TYPE, ORDINAL_POSITION, COLUMN_SIZE, DECIMAL_DIGITS,"
        " IS_NULLABLE, COLUMN_KEY, COLUMN_COMMENT FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA='d' AND TABLE_NAME='orders' ORDER BY ORDINAL_POSITION",
    )
    assert columns == [
        ("id", "bigint", 1, 19, 0, "NO", "PRI", ""),
        ("k2", "varchar", 2, 20, None, "NO", "PRI", ""),
        ("v", "varchar", 3, 300, None, "YES", "", "c"),
        ("ok", "tinyint", 4, None, None, "YES", "", ""),
        ("tiny", "tinyint", 5, 3, 0, "YES", "", ""),
        ("big", "bigint unsigned", 6, 39, 0, "YES", "", ""),
        ("amount", "decimal", 7, 38, 9, "YES", "", ""),
        ("doc", "json", 8, None, None, "YES", "", ""),
        ("tags", "array", 9, None, None, "YES", "", ""),
        ("raw", "varbinary", 10, 1048576, None, "YES", "", ""),
        ("at", "datetime", 11, None, None, "YES", "", ""),
        ("day", "date", 12, None, None, "YES", "", ""),
        ("s", "varchar", 13, 65533, None, "YES", "", ""),
        ("f", "float", 14, 12, None, "YES", "", ""),
        ("db", "double", 15, 22, None, "YES", "", ""),
    ]
    types = dict(sql(sr, "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS"
                         " WHERE TABLE_NAME = 'orders'"))
    assert (types["ok"], types["big"], types["id"], types["amount"], types["tags"]) == (
        "tinyint(1)", "bigint(20) unsigned", "bigint(20)", "decimal(38,9)",
        "array<varchar(10)>",
    )
    config = sql(sr, "SELECT TABLE_MODEL, PRIMARY_KEY, DISTRIBUTE_KEY, DISTRIBUTE_BUCKET"
                     " FROM information_schema.TABLES_CONFIG WHERE TABLE_NAME = 'orders'")
    assert config == [("PRIMARY_KEYS", "`id`, `k2`", "`id`", 4)]
    tables = sql(sr, "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, ENGINE FROM"
                     " information_schema.TABLES ORDER BY TABLE_NAME")
    assert tables == [("d", "orders", "BASE TABLE", "StarRocks"),
                      ("d", "t", "BASE TABLE", "StarRocks")]


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE x (v INT, id INT NOT NULL) PRIMARY KEY (id)",
         "Key columns should be a ordered prefix of the schema."),
        ("CREATE TABLE x (id INT NULL, v INT) PRIMARY KEY (id)", "cannot be nullable"),
        ("CREATE TABLE x (id FLOAT NOT NULL, v INT) PRIMARY KEY (id)",
         "Invalid data type of primary key column"),
        ("CREATE TABLE x (id DECIMAL(10,2) NOT NULL) PRIMARY KEY (id)",
         "Invalid data type of primary key column"),
        ("CREATE TABLE x (id INT NOT NULL, v DECIMAL(39,2)) PRIMARY KEY (id)", "precision"),
        ("CREATE TABLE x (id INT NOT NULL, v VARCHAR(2000000)) PRIMARY KEY (id)",
         "VARCHAR length"),
        ("CREATE TABLE x (id INT NOT NULL, v TIME) PRIMARY KEY (id)", "Unsupported data type"),
        ("CREATE TABLE x (id INT NOT NULL, ID INT) PRIMARY KEY (id)", "Duplicate column name"),
        ("CREATE TABLE x (id INT NOT NULL, v INT) PRIMARY KEY (id) DISTRIBUTED BY HASH(v)",
         "is not a primary key column"),
        ("CREATE TABLE x (id INT NOT NULL, __op INT) PRIMARY KEY (id)", "__op"),
        ("CREATE TABLE x (id INT, v INT) UNIQUE KEY (id)", "PRIMARY KEY and DUPLICATE KEY"),
        ("CREATE TABLE x (id INT NOT NULL, v INT DEFAULT 'abc') PRIMARY KEY (id)",
         "Invalid default value"),
    ],
)
def test_create_table_validation(sr: StarRocksEmulator, ddl: str, message: str) -> None:
    _, error = error_of(sr, ddl)
    assert message in error
    assert ("x",) not in sql(sr, "SHOW TABLES", db="d")


def test_key_column_without_null_spec_becomes_not_null(sr: StarRocksEmulator) -> None:
    sql(sr, "CREATE TABLE k (id INT, v INT) PRIMARY KEY (id)", db="d")
    assert sql(sr, "SELECT IS_NULLABLE FROM information_schema.COLUMNS WHERE TABLE_NAME='k'"
                   " AND COLUMN_NAME='id'") == [("NO",)]


def test_drop_table(sr: StarRocksEmulator) -> None:
    sql(sr, "DROP TABLE d.t")
    assert sql(sr, "SHOW TABLES FROM d") == []
    assert error_of(sr, "DROP TABLE d.t")[0] == 1051
    sql(sr, "DROP TABLE IF EXISTS d.t")
    assert "unknown table" in stream_load(sr, "d", "t", "1\ta\t1\n")["Message"]


def test_show_statements(sr: StarRocksEmulator) -> None:
    assert sql(sr, "SHOW FULL TABLES FROM d") == [("t", "BASE TABLE")]
    assert sql(sr, "SHOW TABLES FROM d LIKE 'x%'") == []
    assert sql(sr, "DESC t", db="d") == [
        ("id", "bigint(20)", "NO", "true", None, ""),
        ("name", "varchar(20)", "YES", "false", None, ""),
        ("score", "int(11)", "NO", "false", "7", ""),
    ]
    create = sql(sr, "SHOW CREATE TABLE d.t")[0][1]
    assert "PRIMARY KEY(`id`)" in create
    assert "`score` INT NOT NULL DEFAULT \"7\"" in create


def test_quoted_identifiers_with_spaces_and_unicode(sr: StarRocksEmulator) -> None:
    sql(sr, "CREATE DATABASE `my db`")
    sql(sr, "CREATE TABLE `my db`.`tablé x` (`clé id` INT NOT NULL, `a b` VARCHAR(10))"
            " PRIMARY KEY (`clé id`)")
    reply = stream_load(sr, "my db", "tablé x", '[{"clé id": 1, "A B": "v"}]', format="json",
                        strip_outer_array="true")
    assert reply["Status"] == "Success", reply
    assert sr.rows("my db", "tablé x") == [{"clé id": 1, "a b": "v"}]
    assert sql(sr, "SELECT `a b`, `clé id` FROM `my db`.`tablé x` WHERE `clé id` = 1") == [
        ("v", 1)
    ]
    assert sql(sr, "SHOW TABLES FROM `my db`") == [("tablé x",)]


def test_select_over_loaded_data(sr: StarRocksEmulator) -> None:
    sql(sr, FLINK_DDL)
    body = (
        '[{"id": 1, "k2": "a", "ok": true, "big": 170141183460469231731687303715884105727,'
        ' "amount": 12.5, "doc": {"x": 1}, "tags": ["p", "q"], "at": "2024-01-02 03:04:05.5",'
        ' "day": "2024-01-02"},'
        ' {"id": 2, "k2": "b", "ok": false, "amount": "0.000000001"}]'
    )
    assert stream_load(sr, "d", "orders", body, format="json",
                       strip_outer_array="true")["Status"] == "Success"
    rows = sql(sr, "SELECT id, ok, big, amount, doc, tags, at, day FROM orders ORDER BY id",
               db="d")
    assert rows == [
        (1, 1, 2**127 - 1, Decimal("12.500000000"), '{"x": 1}', '["p","q"]',
         dt.datetime(2024, 1, 2, 3, 4, 5, 500000), dt.date(2024, 1, 2)),
        (2, 0, None, Decimal("0.000000001"), None, None, None, None),
    ]
    stream_load(sr, "d", "t", "1\tx\t5\n2\ty\t6\n")
    joined = sql(sr, "SELECT o.k2, t.name, count(*) AS n, sum(t.score) FROM d.orders o"
                     " JOIN d.t t ON o.id = t.id GROUP BY o.k2, t.name ORDER BY o.k2")
    assert joined == [("a", "x", 1, Decimal(5)), ("b", "y", 1, Decimal(6))]


def test_select_decimal_38_and_varbinary_exactly(sr: StarRocksEmulator) -> None:
    sql(sr, "CREATE TABLE d.x (id INT NOT NULL, d DECIMAL(38,10), b VARBINARY) PRIMARY KEY (id)")
    big = "9999999999999999999999999999.9999999999"
    body = f"1,{big},{bytes(range(256)).hex()}\n2,-{big},\n3,0,\\N\n"
    reply = stream_load(sr, "d", "x", body, column_separator=",",
                        columns="id,d,h,b=to_binary(h,'hex')")
    assert reply["Status"] == "Success", reply
    # INSERT of a negative literal keeps all 38 digits as well.
    sql(sr, f"INSERT INTO d.x VALUES (4, -{big[:-1]}1, NULL)")
    assert sql(sr, "SELECT id, d, b FROM d.x ORDER BY id") == [
        (1, Decimal(big), bytes(range(256))),
        (2, Decimal(f"-{big}"), b""),
        (3, Decimal(0), None),
        (4, Decimal(f"-{big[:-1]}1"), None),
    ]
    # On the wire DECIMAL is plain text with every digit of the scale, as StarRocks sends it.
    conn = mysql(sr, "d")
    conn.decoders.pop(pymysql.constants.FIELD_TYPE.NEWDECIMAL)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT d, sum(d) OVER () FROM x WHERE id IN (1, 2, 3) ORDER BY id")
            assert cur.fetchall() == (
                (big, "0.0000000000"), (f"-{big}", "0.0000000000"),
                ("0.0000000000", "0.0000000000"),
            )
    finally:
        conn.close()


def test_insert_values_and_truncate(sr: StarRocksEmulator) -> None:
    sql(sr, "INSERT INTO t (id, name) VALUES (1, 'a'), (2, NULL)", db="d")
    sql(sr, "INSERT INTO d.t VALUES (2, 'b', -3)")
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 7}, {"id": 2, "name": "b", "score": -3},
    ]
    sql(sr, "TRUNCATE TABLE d.t")
    assert sr.rows("d", "t") == []


def test_errors(sr: StarRocksEmulator) -> None:
    assert error_of(sr, "SELECT * FROM nope")[0] == 1051
    assert "No database selected" in error_of(sr, "SELECT * FROM t", db=None)[1]
    assert "does not support" in error_of(sr, "GRANT ALL ON d.* TO root")[1]
    assert "syntax" in error_of(sr, "SELEC 1")[1].lower()
    with pytest.raises(pymysql.MySQLError):
        mysql(sr).select_db("nope")


# -- ALTER TABLE ----------------------------------------------------------------------------

SHOW_ALTER = "SHOW ALTER TABLE COLUMN FROM d WHERE TableName='t' ORDER BY JobId DESC LIMIT 1"


def last_job(sr: StarRocksEmulator) -> dict[str, object]:
    conn = mysql(sr)
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(SHOW_ALTER)
            rows = cur.fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    return dict(rows[0])


def test_fast_schema_evolution_finishes_at_once(sr: StarRocksEmulator) -> None:
    sql(sr, "ALTER TABLE t ADD COLUMN extra BIGINT NULL DEFAULT '3' AFTER id", db="d")
    job = last_job(sr)
    assert list(job)[:7] == ["JobId", "TableName", "CreateTime", "FinishTime",
                             "IndexName", "IndexId", "OriginIndexId"]
    assert {"TransactionId", "State", "Msg"} <= set(job)
    assert (job["TableName"], job["State"], job["Msg"]) == ("t", "FINISHED", "")
    assert job["FinishTime"] is not None
    names = [r[0] for r in sql(sr, "DESC d.t")]
    assert names == ["id", "extra", "name", "score"]


def test_alter_job_runs_for_the_configured_delay() -> None:
    clock = ManualClock()
    with StarRocksEmulator(clock=clock, alter_delay=10) as sr:
        make_table(sr, BASIC_DDL)
        stream_load(sr, "d", "t", "1\ta\t1\n")
        sql(sr, "ALTER TABLE d.t ADD COLUMN extra INT", db="d")
        job = last_job(sr)
        assert (job["State"], job["FinishTime"]) == ("RUNNING", None)
        _, message = error_of(sr, "ALTER TABLE d.t ADD COLUMN more INT")
        assert message == "Table[t]'s state is not NORMAL. Do not allow doing ALTER ops"
        # Loads keep working; the not-yet-added column is a temporary column, dropped.
        reply = stream_load(sr, "d", "t", '{"id": 2, "extra": 5}', format="json")
        assert reply["Status"] == "Success"
        clock.advance(10)
        assert last_job(sr)["State"] == "FINISHED"
        assert sr.rows("d", "t") == [
            {"id": 1, "name": "a", "score": 1, "extra": None},
            {"id": 2, "name": None, "score": 7, "extra": None},
        ]
        stream_load(sr, "d", "t", '{"id": 3, "extra": 5}', format="json")
        assert sr.rows("d", "t")[2]["extra"] == 5
        jobs = sql(sr, "SHOW ALTER TABLE COLUMN FROM d")
        assert len(jobs) == 1


@pytest.mark.parametrize("starrocks", [{"alter_delay": 0.2}], indirect=True)
def test_polling_an_alter_job_on_the_wall_clock(sr: StarRocksEmulator) -> None:
    sql(sr, "ALTER TABLE t DROP COLUMN name", db="d")
    deadline = time.monotonic() + 10
    while (state := last_job(sr)["State"]) != "FINISHED":
        assert state == "RUNNING"
        assert time.monotonic() < deadline, "alter job never finished"
        time.sleep(0.02)
    assert [r[0] for r in sql(sr, "DESC d.t")] == ["id", "score"]


def test_drop_and_modify_column(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\tabc\t1\n")
    sql(sr, "ALTER TABLE d.t MODIFY COLUMN name VARCHAR(100) NULL")
    sql(sr, "ALTER TABLE d.t DROP COLUMN score")
    assert sql(sr, "DESC d.t") == [
        ("id", "bigint(20)", "NO", "true", None, ""),
        ("name", "varchar(100)", "YES", "false", None, ""),
    ]
    assert sr.rows("d", "t") == [{"id": 1, "name": "abc"}]


def test_add_column_list_and_first(sr: StarRocksEmulator) -> None:
    sql(sr, "ALTER TABLE d.t ADD COLUMN (`a x` INT, b DECIMAL(5,1) DEFAULT '1.5')")
    assert [r[0] for r in sql(sr, "DESC d.t")] == ["id", "name", "score", "a x", "b"]
    stream_load(sr, "d", "t", '{"id": 1}', format="json")
    assert sr.rows("d", "t")[0]["b"] == Decimal("1.5")


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("ALTER TABLE d.t ADD COLUMN name INT", "already exists"),
        ("ALTER TABLE d.t DROP COLUMN nope", "does not exists"),
        ("ALTER TABLE d.t DROP COLUMN id", "key column"),
        ("ALTER TABLE d.t MODIFY COLUMN id INT", "key column"),
        ("ALTER TABLE d.nope ADD COLUMN x INT", "Unknown table"),
    ],
)
def test_alter_validation(sr: StarRocksEmulator, statement: str, message: str) -> None:
    assert message in error_of(sr, statement)[1]


def test_cancelled_alter_job(sr: StarRocksEmulator) -> None:
    sr.faults.cancel_alter(table="t", msg="boom")
    sql(sr, "ALTER TABLE d.t ADD COLUMN extra INT")
    job = last_job(sr)
    assert (job["State"], job["Msg"]) == ("CANCELLED", "boom")
    assert [r[0] for r in sql(sr, "DESC d.t")] == ["id", "name", "score"]
    sql(sr, "ALTER TABLE d.t ADD COLUMN extra INT")
    assert last_job(sr)["State"] == "FINISHED"
