"""StarRocksSink against the StarRocks emulator: loads, deletes, labels, merge condition,
setup and schema changes. Results are read back over the emulator's MySQL port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from dbmazz.contract import AUDIT_COLUMNS, OP_DELETE, OP_INSERT, OP_UPDATE
from dbmazz.errors import SetupError, SinkError
from dbmazz.pipeline.batch import (
    ColumnSpec,
    SchemaDelta,
    SplitPart,
    TableBatch,
    TableSchema,
    UpsertGroup,
)
from dbmazz.sink.starrocks import RetryPolicy, StarRocksSettings, StarRocksSink
from dbmazz.sink.starrocks.labels import make_label
from dbmazz.testing.starrocks import ManualClock, StarRocksEmulator

DB = "cdc"
SLOT = "test_slot"
SYNCED = datetime(2024, 5, 1, 12, 0, 0)


def col(name: str, t: pa.DataType, pg: str = "", typmod: int = -1) -> ColumnSpec:
    return ColumnSpec(name, t, 0, typmod, pg)


ITEMS = TableSchema(
    "public",
    "items",
    (
        col("id", pa.int64(), "int8"),
        col("name", pa.string(), "text"),
        col("qty", pa.int32(), "int4"),
        col("price", pa.decimal128(10, 2), "numeric"),
    ),
    ("id",),
    "items",
)


def rows_table(
    schema: TableSchema,
    rows: Sequence[dict[str, Any]],
    version: int,
    *,
    op: int = OP_INSERT,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Rows with the given columns (all by default) plus audit columns."""
    names = list(columns) if columns is not None else list(schema.column_names)
    data: dict[str, pa.Array] = {
        n: pa.array([r.get(n) for r in rows], schema.column(n).arrow_type) for n in names
    }
    n = len(rows)
    audit = {
        "dbmazz_op_type": [op] * n,
        "dbmazz_is_deleted": [op == OP_DELETE] * n,
        "dbmazz_synced_at": [SYNCED] * n,
        "dbmazz_cdc_version": [version] * n,
    }
    for name, t in AUDIT_COLUMNS:
        data[name] = pa.array(audit[name], t)
    return pa.table(data)


def upsert(
    schema: TableSchema,
    rows: Sequence[dict[str, Any]],
    version: int,
    *,
    columns: Sequence[str] | None = None,
    op: int = OP_INSERT,
) -> UpsertGroup:
    return UpsertGroup(
        rows_table(schema, rows, version, op=op, columns=columns), columns is not None
    )


def deletes(schema: TableSchema, keys: Sequence[dict[str, Any]], version: int) -> pa.Table:
    return rows_table(schema, keys, version, op=OP_DELETE, columns=schema.key_columns)


def batch(
    schema: TableSchema,
    groups: Sequence[UpsertGroup] = (),
    dels: pa.Table | None = None,
    *,
    lsn: int | tuple[int, int],
    truncate: bool = False,
    split: SplitPart | None = None,
) -> TableBatch:
    first, last = lsn if isinstance(lsn, tuple) else (lsn, lsn)
    return TableBatch(
        schema, list(groups), dels, truncate=truncate, first_lsn=first, last_lsn=last, split=split
    )


SinkFactory = Callable[..., StarRocksSink]


@pytest.fixture
def make_sink(starrocks: StarRocksEmulator) -> Iterator[SinkFactory]:
    """Sinks on the emulator; waits between retries are recorded, never slept (with a
    manual emulator clock they move that clock instead)."""
    made: list[StarRocksSink] = []
    clock = starrocks.clock

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if isinstance(clock, ManualClock):
            clock.advance(seconds)

    waits: list[float] = []

    def factory(**overrides: Any) -> StarRocksSink:
        options: dict[str, Any] = {
            "fe_url": starrocks.url,
            "database": DB,
            "mysql_port": starrocks.mysql_port,
            "slot_name": SLOT,
            "retry": RetryPolicy(max_attempts=6, max_elapsed=None, base_delay=0.01),
            **overrides,
        }
        sink = StarRocksSink(StarRocksSettings(**options), sleep=sleep)
        sink.waits = waits  # type: ignore[attr-defined]
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def select(sr: StarRocksEmulator, table: str, columns: str = "*", order: str = "id") -> list[tuple]:
    return sr.execute(f"SELECT {columns} FROM `{DB}`.`{table}` ORDER BY {order}")


FORMATS = pytest.mark.parametrize("fmt", ["json", "csv"])


# -- loads ---------------------------------------------------------------------------------


@FORMATS
def test_inserts_then_updates(
    starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str
) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([ITEMS])
    first = [
        {"id": 1, "name": "apple", "qty": 3, "price": Decimal("1.50")},
        {"id": 2, "name": "", "qty": None, "price": Decimal("-0.01")},
        {"id": 3, "name": None, "qty": 0, "price": None},
    ]
    result = sink.write(batch(ITEMS, [upsert(ITEMS, first, 100)], lsn=100))
    assert result.rows == 3 and result.bytes > 0
    assert result.label == make_label(SLOT, "items", 100, 100, "u0")
    changed = [{"id": 2, "name": 'pear, "ripe"\tnew\nline', "qty": 7, "price": Decimal("2.00")}]
    sink.write(batch(ITEMS, [upsert(ITEMS, changed, 200, op=OP_UPDATE)], lsn=200))
    assert select(starrocks, "items") == [
        (1, "apple", 3, Decimal("1.50"), 0, 0, SYNCED, 100),
        (2, 'pear, "ripe"\tnew\nline', 7, Decimal("2.00"), 1, 0, SYNCED, 200),
        (3, None, 0, None, 0, 0, SYNCED, 100),
    ]


@FORMATS
def test_partial_update_keeps_unsent_columns(
    starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str
) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([ITEMS])
    sink.write(
        batch(
            ITEMS,
            [
                upsert(
                    ITEMS, [{"id": 1, "name": "big toast", "qty": 1, "price": Decimal("9.99")}], 10
                )
            ],
            lsn=10,
        )
    )
    # An UPDATE whose 'name' was an unchanged TOAST value: the pipeline leaves it out.
    partial = upsert(
        ITEMS,
        [{"id": 1, "qty": None, "price": Decimal("5.00")}],
        20,
        columns=["id", "qty", "price"],
        op=OP_UPDATE,
    )
    sink.write(batch(ITEMS, [partial], lsn=20))
    assert select(starrocks, "items") == [(1, "big toast", None, Decimal("5.00"), 1, 0, SYNCED, 20)]


@FORMATS
def test_soft_delete_marks_the_row_and_keeps_its_values(
    starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str
) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([ITEMS])
    base = [
        {"id": 1, "name": "a", "qty": 1, "price": Decimal("1.00")},
        {"id": 2, "name": "b", "qty": 2, "price": Decimal("2.00")},
    ]
    sink.write(batch(ITEMS, [upsert(ITEMS, base, 10)], lsn=10))
    sink.write(batch(ITEMS, dels=deletes(ITEMS, [{"id": 2}, {"id": 9}], 20), lsn=20))
    assert select(starrocks, "items") == [
        (1, "a", 1, Decimal("1.00"), 0, 0, SYNCED, 10),
        (2, "b", 2, Decimal("2.00"), 2, 1, SYNCED, 20),
        # A delete of a key the target never saw leaves a tombstone.
        (9, None, None, None, 2, 1, SYNCED, 20),
    ]


@FORMATS
def test_hard_delete_removes_rows(
    starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str
) -> None:
    sink = make_sink(load_format=fmt, delete_mode="hard")
    sink.setup([ITEMS])
    base = [{"id": i, "name": f"n{i}", "qty": i, "price": None} for i in (1, 2, 3)]
    sink.write(batch(ITEMS, [upsert(ITEMS, base, 10)], lsn=10))
    new = upsert(ITEMS, [{"id": 4, "name": "n4", "qty": 4, "price": None}], 20)
    result = sink.write(batch(ITEMS, [new], deletes(ITEMS, [{"id": 1}, {"id": 3}], 20), lsn=20))
    assert result.label.endswith("-u0," + make_label(SLOT, "items", 20, 20, "d"))
    assert select(starrocks, "items", "id, name") == [(2, "n2"), (4, "n4")]


def test_truncate_empties_the_table_before_the_rows(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    old = [{"id": i, "name": "old", "qty": i, "price": None} for i in (1, 2)]
    sink.write(batch(ITEMS, [upsert(ITEMS, old, 10)], lsn=10))
    fresh = upsert(ITEMS, [{"id": 5, "name": "new", "qty": 5, "price": None}], 20)
    truncating = batch(ITEMS, [fresh], lsn=20, truncate=True)
    sink.write(truncating)
    assert select(starrocks, "items", "id, name") == [(5, "new")]
    later = upsert(ITEMS, [{"id": 6, "name": "later", "qty": 6, "price": None}], 30)
    sink.write(batch(ITEMS, [later], lsn=30))
    # Replaying after a crash: the truncate must not run again and wipe row 6, whose load
    # would then be skipped as "Label Already Exists".
    replay = make_sink()
    replay.write(truncating)
    replay.write(batch(ITEMS, [later], lsn=30))
    assert select(starrocks, "items", "id, name") == [(5, "new"), (6, "later")]


def test_a_replay_cut_differently_does_not_bring_truncated_rows_back(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    rows = [{"id": i, "name": "before", "qty": i, "price": None} for i in (1, 2)]
    sink.write(batch(ITEMS, [upsert(ITEMS, rows, 10)], lsn=(10, 15)))
    truncating = TableBatch(ITEMS, truncate=True, first_lsn=20, last_lsn=20, batch_id="k1")
    sink.write(truncating)
    later = upsert(ITEMS, [{"id": 6, "name": "later", "qty": 6, "price": None}], 30)
    sink.write(batch(ITEMS, [later], lsn=30))
    # A crash before the checkpoint, and a replay whose first batch holds only part of
    # what the first run's did: its rows load again under a label of their own; the
    # truncate, already done, must still leave nothing older than itself.
    replay = make_sink()
    replay.setup([ITEMS])
    replay.write(batch(ITEMS, [upsert(ITEMS, rows[:1], 10)], lsn=10))
    assert select(starrocks, "items", "id, name") == [(1, "before"), (6, "later")]
    replay.write(truncating)
    replay.write(batch(ITEMS, [later], lsn=30))
    assert select(starrocks, "items", "id, name") == [(6, "later")]
    # Another replay still finds the table right.
    again = make_sink()
    again.setup([ITEMS])
    again.write(batch(ITEMS, [upsert(ITEMS, rows[1:], 10)], lsn=10))
    again.write(truncating)
    assert select(starrocks, "items", "id, name") == [(6, "later")]


def test_the_truncate_sweep_waits_for_a_reload_whose_publish_timed_out(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    """The sweep of a truncate found done reads the rows older than it: a row a replay
    loaded again whose publish timed out is not visible yet, and would stay behind."""
    sink = make_sink()
    sink.setup([ITEMS])
    row = {"id": 1, "name": "before", "qty": 1, "price": None}
    truncating = TableBatch(ITEMS, truncate=True, first_lsn=20, last_lsn=20, batch_id="k1")
    sink.write(truncating)
    replay = make_sink()  # a replay cut differently: the row loads again, under a new label
    replay.setup([ITEMS])
    starrocks.faults.publish_timeout()
    replay.write(batch(ITEMS, [upsert(ITEMS, [row], 10)], lsn=10))
    replay._waiter._sleep = lambda _: starrocks.publish_pending()  # published meanwhile
    replay.write(truncating)
    later = upsert(ITEMS, [{"id": 6, "name": "later", "qty": 6, "price": None}], 30)
    replay.write(batch(ITEMS, [later], lsn=30))
    starrocks.publish_pending()
    assert select(starrocks, "items", "id, name") == [(6, "later")]


def test_truncate_without_lsn_is_applied_every_time(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    # A batch that only truncates may come without an LSN range.
    sink = make_sink()
    sink.setup([ITEMS])
    for n in (1, 2):
        sink.write(batch(ITEMS, [upsert(ITEMS, [{"id": n, "name": "x"}], 10 * n)], lsn=10 * n))
        sink.write(TableBatch(ITEMS, truncate=True))
        assert select(starrocks, "items") == []


def test_replayed_label_is_success_and_not_applied_twice(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    first = batch(
        ITEMS,
        [upsert(ITEMS, [{"id": 1, "name": "first", "qty": 1, "price": None}], 50)],
        lsn=(40, 50),
    )
    sink.write(first)
    # Same version, different label: merge_condition lets it through, so only the label
    # can stop the replay below from bringing 'first' back.
    second = batch(
        ITEMS,
        [upsert(ITEMS, [{"id": 1, "name": "second", "qty": 2, "price": None}], 50)],
        lsn=(50, 50),
    )
    sink.write(second)
    result = make_sink().write(first)
    assert result.label == make_label(SLOT, "items", 40, 50, "u0")
    assert starrocks.label_state(DB, result.label) == "VISIBLE"
    assert select(starrocks, "items", "id, name, dbmazz_cdc_version") == [(1, "second", 50)]


def test_snapshot_chunks_sharing_an_lsn_are_told_apart_by_batch_id(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    for n in range(3):
        chunk = batch(ITEMS, [upsert(ITEMS, [{"id": n, "name": f"c{n}"}], 77)], lsn=77)
        chunk.batch_id = f"snap-{n}"
        assert sink.write(chunk).label == make_label(SLOT, "items", 77, 77, "u0", f"snap-{n}")
    assert select(starrocks, "items", "id, name") == [(0, "c0"), (1, "c1"), (2, "c2")]


def test_merge_condition_protects_newer_rows(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    sink.write(
        batch(
            ITEMS,
            [
                upsert(
                    ITEMS,
                    [
                        {"id": 1, "name": "new", "qty": 2, "price": None},
                        {"id": 2, "name": "new", "qty": 2, "price": None},
                    ],
                    200,
                )
            ],
            lsn=200,
        )
    )
    # Late loads carrying older versions: full row, partial row, soft delete.
    sink.write(
        batch(
            ITEMS,
            [upsert(ITEMS, [{"id": 1, "name": "old", "qty": 1, "price": None}], 100)],
            lsn=100,
        )
    )
    sink.write(
        batch(ITEMS, [upsert(ITEMS, [{"id": 1, "qty": 0}], 110, columns=["id", "qty"])], lsn=110)
    )
    sink.write(batch(ITEMS, dels=deletes(ITEMS, [{"id": 2}], 120), lsn=120))
    # A newer one still applies.
    sink.write(
        batch(ITEMS, [upsert(ITEMS, [{"id": 2, "qty": 3}], 300, columns=["id", "qty"])], lsn=300)
    )
    assert select(starrocks, "items", "id, name, qty, dbmazz_is_deleted, dbmazz_cdc_version") == [
        (1, "new", 2, 0, 200),
        (2, "new", 3, 0, 300),
    ]


def test_columns_only_the_target_has_keep_their_values(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    starrocks.execute(f"ALTER TABLE `{DB}`.`items` ADD COLUMN `note` STRING NULL")
    sink.setup([ITEMS])  # refreshes what the sink knows of the table
    sink.write(
        batch(ITEMS, [upsert(ITEMS, [{"id": 1, "name": "a", "qty": 1, "price": None}], 10)], lsn=10)
    )
    starrocks.execute(f"INSERT INTO `{DB}`.`items` (id, name, note) VALUES (2, 'b', 'kept')")
    sink.write(
        batch(
            ITEMS, [upsert(ITEMS, [{"id": 2, "name": "b2", "qty": 2, "price": None}], 20)], lsn=20
        )
    )
    assert select(starrocks, "items", "id, name, note") == [(1, "a", None), (2, "b2", "kept")]


@FORMATS
def test_every_type_round_trips(
    starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str
) -> None:
    schema = TableSchema(
        "public",
        "types",
        (
            col("id", pa.int32(), "int4"),
            col("b", pa.bool_(), "bool"),
            col("i2", pa.int16(), "int2"),
            col("i8", pa.int64(), "int8"),
            col("f4", pa.float32(), "float4"),
            col("f8", pa.float64(), "float8"),
            col("dec", pa.decimal128(38, 10), "numeric"),
            col("num", pa.string(), "numeric"),
            col("txt", pa.string(), "text"),
            col("vc", pa.string(), "varchar", 8 + 4),
            col("uid", pa.string(), "uuid"),
            col("js", pa.string(), "jsonb"),
            col("d", pa.date32(), "date"),
            col("ts", pa.timestamp("us"), "timestamp"),
            col("tz", pa.timestamp("us", "UTC"), "timestamptz"),
            col("tm", pa.string(), "time"),
            col("iv", pa.duration("us"), "interval"),
            col("arr", pa.list_(pa.int32()), "_int4"),
            col("tarr", pa.list_(pa.string()), "_text"),
        ),
        ("id",),
        "types",
    )
    sink = make_sink(load_format=fmt)
    sink.setup([schema])
    row = {
        "id": 1,
        "b": True,
        "i2": -32768,
        "i8": 2**63 - 1,
        "f4": 0.5,
        "f8": 1e-300,
        # 27 digits: the emulator computes with Python's default 28-digit context.
        "dec": Decimal("-12345678901234567.0123456789"),
        "num": "3.141592653",
        "txt": 'tab\t"quote",comma\nnewline \\N-ish',
        "vc": "ünïcødé",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "js": '{"k": [1, 2, {"n": null}], "s": "x\\ny"}',
        "d": date(2024, 2, 29),
        "ts": datetime(2024, 1, 2, 3, 4, 5, 678901),
        "tz": datetime(2024, 1, 2, 3, 4, 5, 1, tzinfo=timezone(timedelta(hours=5))),
        "tm": "23:59:59.999999",
        "iv": timedelta(days=2, microseconds=3),
        "arr": [1, None, 3],
        "tarr": ["a,b", 'c"d'],
    }
    empty = {"id": 2, "txt": "", "arr": [], "tarr": [""]}
    sink.write(batch(schema, [upsert(schema, [row, empty], 7)], lsn=7))
    stored = starrocks.rows(DB, "types")
    assert stored[0] == {
        **row,
        "tz": datetime(2024, 1, 1, 22, 4, 5, 1),
        "iv": 2 * 86_400_000_000 + 3,
        "js": '{"k": [1, 2, {"n": null}], "s": "x\\ny"}',
        "num": Decimal("3.141592653"),
        "dbmazz_op_type": 0,
        "dbmazz_is_deleted": False,
        "dbmazz_synced_at": SYNCED,
        "dbmazz_cdc_version": 7,
    }
    assert stored[1]["txt"] == "" and stored[1]["arr"] == [] and stored[1]["tarr"] == [""]
    assert stored[1]["b"] is None and stored[1]["js"] is None


def test_binary_loads_as_bytes(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    schema = TableSchema(
        "public",
        "blobs",
        (col("id", pa.int32(), "int4"), col("data", pa.binary(), "bytea")),
        ("id",),
        "blobs",
    )
    sink = make_sink()
    sink.setup([schema])
    payload = bytes(range(256))
    sink.write(
        batch(
            schema,
            [upsert(schema, [{"id": 1, "data": payload}, {"id": 2, "data": b""}], 1)],
            lsn=1,
        )
    )
    assert [r["data"] for r in starrocks.rows(DB, "blobs")] == [payload, b""]


def test_parallel_writes_to_different_tables(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    schemas = [TableSchema("public", f"t{i}", ITEMS.columns, ("id",), f"t{i}") for i in range(4)]
    sink.setup(schemas)
    errors: list[BaseException] = []

    def work(schema: TableSchema) -> None:
        try:
            for n in range(1, 6):
                rows = [
                    {"id": k, "name": f"{schema.name}-{n}", "qty": n, "price": None}
                    for k in range(20)
                ]
                sink.write(batch(schema, [upsert(schema, rows, n)], lsn=n))
        except BaseException as exc:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in schemas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for schema in schemas:
        assert select(
            starrocks, schema.target_name, "count(*), min(name), max(qty)", order="1"
        ) == [(20, f"{schema.name}-5", 5)]


# -- setup -----------------------------------------------------------------------------------


HOSTILE = TableSchema(
    "weird schema",
    "Mixed Case `tbl` 'q' \"dq\" ✓",
    (
        col("Key Col`", pa.int64(), "int8"),
        col("value 'x'", pa.string(), "text"),
        col('MiXeD "cOl", (x)', pa.int32(), "int4"),
        col("%s%%", pa.string(), "text"),
    ),
    ("Key Col`",),
    "Mixed Case `tbl` 'q' \"dq\" ✓",
)


@FORMATS
def test_hostile_names(starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([HOSTILE])
    row = {"Key Col`": 1, "value 'x'": "v", 'MiXeD "cOl", (x)': 5, "%s%%": "%d"}
    sink.write(batch(HOSTILE, [upsert(HOSTILE, [row], 3)], lsn=3))
    partial = upsert(HOSTILE, [{"Key Col`": 1, "%s%%": "p"}], 4, columns=["Key Col`", "%s%%"])
    sink.write(batch(HOSTILE, [partial], lsn=4))
    stored = starrocks.rows(DB, HOSTILE.target_name)
    assert [{k: r[k] for k in row} for r in stored] == [{**row, "%s%%": "p"}]


def test_unicode_column_names(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    schema = TableSchema(
        "public", "ünï", (col("id", pa.int32()), col("cølümn ✓", pa.int32())), ("id",), "ünï"
    )
    sink = make_sink()
    sink.setup([schema])
    sink.write(batch(schema, [upsert(schema, [{"id": 1, "cølümn ✓": 7}], 1)], lsn=1))
    stored = starrocks.rows(DB, "ünï")
    assert stored[0]["cølümn ✓"] == 7


def test_setup_creates_database_table_and_adds_missing_audit_columns(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    from dbmazz.sink.starrocks.setup import check_connection, setup_starrocks

    settings = StarRocksSettings(starrocks.url, database=DB, mysql_port=starrocks.mysql_port)
    assert check_connection(settings) == "3.3.0-emulator"
    report = setup_starrocks([ITEMS], settings)
    assert report.database_created and report.created == ("items",)
    again = setup_starrocks([ITEMS], settings)
    assert not again.database_created and again.verified == ("items",)
    # A user-made table without audit columns gains them.
    starrocks.execute(
        f"CREATE TABLE `{DB}`.`own` (`id` BIGINT NOT NULL, `name` STRING NULL) "
        "PRIMARY KEY (`id`) DISTRIBUTED BY HASH (`id`)"
    )
    own = TableSchema("public", "own", ITEMS.columns, ("id",), "own")
    report = setup_starrocks([own], settings)
    assert report.altered == {
        "own": (
            "qty",
            "price",
            "dbmazz_op_type",
            "dbmazz_is_deleted",
            "dbmazz_synced_at",
            "dbmazz_cdc_version",
        )
    }
    columns = starrocks.execute(
        "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
        f"WHERE TABLE_SCHEMA = '{DB}' AND TABLE_NAME = 'own' ORDER BY ORDINAL_POSITION"
    )
    assert [c[0] for c in columns] == [
        "id",
        "name",
        "qty",
        "price",
        "dbmazz_op_type",
        "dbmazz_is_deleted",
        "dbmazz_synced_at",
        "dbmazz_cdc_version",
    ]
    sink = make_sink()
    sink.setup([own])
    sink.write(
        batch(own, [upsert(own, [{"id": 1, "name": "x", "qty": 1, "price": None}], 5)], lsn=5)
    )
    assert select(starrocks, "own", "id, name, dbmazz_cdc_version") == [(1, "x", 5)]


def test_setup_skip_validates_without_ddl(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    starrocks.execute(f"CREATE DATABASE `{DB}`")
    starrocks.execute(
        f"CREATE TABLE `{DB}`.`items` (`id` BIGINT NOT NULL, `name` STRING NULL, "
        "`dbmazz_cdc_version` BIGINT NULL) PRIMARY KEY (`id`) DISTRIBUTED BY HASH (`id`)"
    )
    sink = make_sink(setup="skip")
    with pytest.raises(SetupError) as info:
        sink.setup([ITEMS])
    message = str(info.value)
    for name in ("qty", "price", "dbmazz_op_type", "dbmazz_is_deleted", "dbmazz_synced_at"):
        assert name in message
    assert "ALTER" not in " ".join(
        str(r) for r in starrocks.execute(f"SHOW ALTER TABLE COLUMN FROM `{DB}`")
    )
    assert [c[0] for c in starrocks.execute(f"DESC `{DB}`.`items`")] == [
        "id",
        "name",
        "dbmazz_cdc_version",
    ]
    with pytest.raises(SetupError, match="does not exist"):
        make_sink(setup="skip").setup(
            [TableSchema("public", "nope", ITEMS.columns, ("id",), "nope")]
        )


def test_setup_refusals(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    sink = make_sink(create_tables=False)
    with pytest.raises(SetupError, match="CREATE_TABLES"):
        sink.setup([ITEMS])
    twin = TableSchema("other", "items", ITEMS.columns, ("id",), "items")
    with pytest.raises(SetupError, match="TABLE_MAP"):
        make_sink().setup([ITEMS, twin])
    starrocks.execute(
        f"CREATE TABLE `{DB}`.`keyed` (`name` STRING NOT NULL, `id` BIGINT NULL) "
        "PRIMARY KEY (`name`) DISTRIBUTED BY HASH (`name`)"
    )
    with pytest.raises(SetupError, match="primary key"):
        make_sink().setup([TableSchema("public", "keyed", ITEMS.columns, ("id",), "keyed")])


def test_missing_target_column_is_a_clear_error(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    wider = TableSchema(
        "public", "items", (*ITEMS.columns, col("extra", pa.string(), "text")), ("id",), "items"
    )
    with pytest.raises(SinkError, match="extra") as info:
        sink.write(batch(wider, [upsert(wider, [{"id": 1, "extra": "e"}], 5)], lsn=5))
    assert not info.value.retryable and info.value.table == "items"
    assert select(starrocks, "items") == []
    # Added by hand later: the sink looks at the table again before giving up.
    starrocks.execute(f"ALTER TABLE `{DB}`.`items` ADD COLUMN `extra` STRING NULL")
    sink.write(batch(wider, [upsert(wider, [{"id": 1, "extra": "e"}], 5)], lsn=5))
    assert select(starrocks, "items", "id, extra") == [(1, "e")]


# -- schema changes ----------------------------------------------------------------------------


SLOW_ALTER = pytest.mark.parametrize(
    "starrocks", [{"alter_delay": 30.0, "clock": ManualClock()}], indirect=True
)


@SLOW_ALTER
def test_schema_delta_adds_column_and_waits_for_the_job(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    added = col("colour", pa.string(), "text")
    after = TableSchema("public", "items", (*ITEMS.columns, added), ("id",), "items")
    sink.apply_schema_delta(SchemaDelta(ITEMS, after, added=(added,)))
    # The job only finishes when the (manual) clock passes its delay: the sink's polls
    # moved it, so returning means it saw FINISHED.
    jobs = starrocks.execute(f"SHOW ALTER TABLE COLUMN FROM `{DB}` WHERE TableName = 'items'")
    assert len(jobs) == 1 and "FINISHED" in jobs[0]
    assert sum(sink.waits) >= 30.0  # type: ignore[attr-defined]
    sink.write(batch(after, [upsert(after, [{"id": 1, "colour": "red"}], 9)], lsn=9))
    assert select(starrocks, "items", "id, colour") == [(1, "red")]
    sink.apply_schema_delta(SchemaDelta(ITEMS, after, added=(added,)))  # idempotent


@pytest.mark.parametrize("starrocks", [{"alter_delay": 5.0, "clock": ManualClock()}], indirect=True)
def test_cancelled_schema_change_is_a_setup_error(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    starrocks.faults.cancel_alter(msg="disk full (injected)")
    added = col("colour", pa.string(), "text")
    after = TableSchema("public", "items", (*ITEMS.columns, added), ("id",), "items")
    with pytest.raises(SetupError, match=r"cancelled.*disk full \(injected\)"):
        sink.apply_schema_delta(SchemaDelta(ITEMS, after, added=(added,)))


def test_schema_delta_widens_safely_and_refuses_lossy_changes(
    starrocks: StarRocksEmulator, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    qty8 = col("qty", pa.int64(), "int8")
    wider = TableSchema(
        "public", "items", (*ITEMS.columns[:2], qty8, ITEMS.columns[3]), ("id",), "items"
    )
    sink.apply_schema_delta(SchemaDelta(ITEMS, wider, retyped=((ITEMS.column("qty"), qty8),)))
    types = dict(
        starrocks.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA = '{DB}' AND TABLE_NAME = 'items'"
        )
    )
    assert types["qty"].startswith("bigint")
    sink.write(batch(wider, [upsert(wider, [{"id": 1, "qty": 2**40}], 3)], lsn=3))
    assert select(starrocks, "items", "id, qty") == [(1, 2**40)]
    as_text = col("qty", pa.string(), "text")
    texty = TableSchema(
        "public", "items", (*ITEMS.columns[:2], as_text, ITEMS.columns[3]), ("id",), "items"
    )
    with pytest.raises(SetupError, match="cannot be converted"):
        sink.apply_schema_delta(SchemaDelta(wider, texty, retyped=((qty8, as_text),)))
