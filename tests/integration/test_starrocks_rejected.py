"""StarRocksSink with REJECTED_ROWS=table against the emulator: a load refused for some
rows is bisected, the rest applied (full rows and partial updates, CSV and JSON bodies), the
rejected rows recorded once in dbmazz_rejected — a resent batch neither loads nor counts
them again — and with the default the load fails naming the row."""

from __future__ import annotations

import json

import pytest

from dbmazz.errors import SetupError, SinkError, SinkReplayRequired
from dbmazz.pipeline.batch import SplitPart
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.integration.test_starrocks_sink import (
    DB,
    ITEMS,
    SinkFactory,
    batch,
    deletes,
    make_sink,  # noqa: F401 (fixture)
    select,
    upsert,
)

NARROW = (f"CREATE TABLE `{DB}`.items (id BIGINT NOT NULL, name VARCHAR(3), qty INT, "
          "price DECIMAL(10,2), dbmazz_op_type TINYINT, dbmazz_is_deleted BOOLEAN, "
          "dbmazz_synced_at DATETIME, dbmazz_cdc_version BIGINT) PRIMARY KEY (id) "
          "DISTRIBUTED BY HASH (id)")


def _narrowed(sr: StarRocksEmulator) -> None:
    sr.execute(f"DROP TABLE `{DB}`.items")
    sr.execute(NARROW)


def _poisoned() -> object:
    full = [{"id": i, "name": "toolong" if i in (4, 9) else "abc", "qty": i, "price": None}
            for i in range(1, 11)]
    return batch(ITEMS, [upsert(ITEMS, full, 150),
                         upsert(ITEMS, [{"id": 11, "name": "wayyy too long"},
                                        {"id": 12, "name": "ok"}], 160, columns=["id", "name"])],
                 deletes(ITEMS, [{"id": 20}], 170), lsn=(100, 200))


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_rejected_rows_are_recorded_once_and_the_rest_loads(
        starrocks: StarRocksEmulator, make_sink: SinkFactory, fmt: str) -> None:  # noqa: F811
    sink = make_sink(rejected_rows="table", load_format=fmt)
    sink.setup([ITEMS])
    assert select(starrocks, "dbmazz_rejected", order="row_key") == []
    _narrowed(starrocks)
    poisoned = _poisoned()
    result = sink.write(poisoned)  # type: ignore[arg-type]
    assert result.rejected == 3
    # 4, 9, 11 rejected; 20 is the soft delete (DELETE_MODE=soft keeps the key).
    assert [r[0] for r in select(starrocks, "items", "id")] == [1, 2, 3, 5, 6, 7, 8, 10, 12, 20]
    records = select(starrocks, "dbmazz_rejected",
                     "row_key, cdc_version, column_name, row_json, error", "row_key")
    assert [(json.loads(r[0]), r[1], r[2]) for r in records] == [
        ({"id": 11}, 160, "name"), ({"id": 4}, 150, "name"), ({"id": 9}, 150, "name")]
    assert json.loads(records[0][3]) == {  # a partial update: the columns it carried
        "id": 11, "name": "wayyy too long", "dbmazz_op_type": 0, "dbmazz_is_deleted": False,
        "dbmazz_synced_at": "2024-05-01 12:00:00", "dbmazz_cdc_version": 160}
    assert all("too long" in r[4] for r in records)
    # The same batch again (a retry, a replay after a crash): nothing loaded or counted twice.
    again = sink.write(poisoned)  # type: ignore[arg-type]
    assert again.rejected == 0
    assert len(select(starrocks, "dbmazz_rejected", "row_key", "row_key")) == 3
    assert [r[0] for r in select(starrocks, "items", "id")] == [1, 2, 3, 5, 6, 7, 8, 10, 12, 20]


def test_default_stop_fails_the_load_with_the_row(
        starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:  # noqa: F811
    sink = make_sink()
    sink.setup([ITEMS])
    _narrowed(starrocks)
    with pytest.raises(SinkError) as info:
        sink.write(_poisoned())  # type: ignore[arg-type]
    assert "too many filtered rows" in info.value.message.lower()
    assert "toolong" in info.value.message
    assert not info.value.retryable
    assert select(starrocks, "items") == []  # the first load failed: none applied
    with pytest.raises(Exception, match="dbmazz_rejected"):
        select(starrocks, "dbmazz_rejected", order="row_key")


def test_setup_skip_needs_the_rejected_table(
        starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:  # noqa: F811
    make_sink().setup([ITEMS])  # the table, made as dbmazz would
    skipping = make_sink(rejected_rows="table", setup="skip")
    with pytest.raises(SetupError) as info:
        skipping.setup([ITEMS])
    assert info.value.message == (f"StarRocks table {DB}.dbmazz_rejected does not exist "
                                  "(REJECTED_ROWS=table records rejected rows there)")
    assert "CREATE TABLE IF NOT EXISTS" in info.value.hint and "SETUP=auto" in info.value.hint
    make_sink(rejected_rows="table").setup([ITEMS])  # SETUP=auto creates it
    skipping.setup([ITEMS])


def test_rejected_rows_of_a_split_transaction_resend_it_as_plain_loads(
        starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:  # noqa: F811
    """A load transaction cannot drop rows and go on: the part with a rejected row rolls
    the transaction back and asks for a resend, which loads its parts as plain loads."""
    sink = make_sink(rejected_rows="table")
    sink.setup([ITEMS])
    _narrowed(starrocks)
    tx = 500

    def part(index: int, ids: range, last: bool) -> object:
        rows = [{"id": i, "name": "toolong" if i == 7 else "abc", "qty": i} for i in ids]
        return batch(ITEMS, [upsert(ITEMS, rows, tx, columns=["id", "name", "qty"])],
                     lsn=tx, split=SplitPart(tx, index, last))

    sink.write(part(0, range(1, 5), False))  # type: ignore[arg-type]
    with pytest.raises(SinkReplayRequired) as info:
        sink.write(part(1, range(5, 10), True))  # type: ignore[arg-type]
    assert "resending the transaction as plain loads" in info.value.message
    assert select(starrocks, "items") == []  # nothing of the transaction is visible
    # The engine resends from the checkpoint: the transaction from its first part.
    first = sink.write(part(0, range(1, 5), False))  # type: ignore[arg-type]
    second = sink.write(part(1, range(5, 10), True))  # type: ignore[arg-type]
    assert (first.rejected, second.rejected) == (0, 1)
    assert [r[0] for r in select(starrocks, "items", "id")] == [1, 2, 3, 4, 5, 6, 8, 9]
    [(key, version)] = select(starrocks, "dbmazz_rejected", "row_key, cdc_version", "row_key")
    assert (json.loads(key), version) == ({"id": 7}, tx)
    # The next source transaction goes through the transaction interface again.
    later = batch(ITEMS, [upsert(ITEMS, [{"id": 1, "name": "new", "qty": 1}], 600,
                                 columns=["id", "name", "qty"])],
                  lsn=600, split=SplitPart(600, 0, True))
    assert sink.write(later).rejected == 0
    assert select(starrocks, "items", "name", "id")[0] == ("new",)
