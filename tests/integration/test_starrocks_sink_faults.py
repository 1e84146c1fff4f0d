"""Fault injection: every retryable failure class is retried to success, every fatal one
stops with a SinkError naming table, label and cause (and never the password)."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from dbmazz.errors import SinkError
from dbmazz.sink.starrocks import RetryPolicy
from dbmazz.sink.starrocks.labels import make_label
from dbmazz.sink.starrocks.serialize import CSV_HEADERS
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.integration import test_starrocks_sink as base
from tests.integration.test_starrocks_sink import (
    DB,
    ITEMS,
    SLOT,
    SinkFactory,
    batch,
    select,
    upsert,
)

make_sink = base.make_sink  # the fixture, shared with the base module

ROWS = [
    {"id": 1, "name": "a", "qty": 1, "price": Decimal("1.00")},
    {"id": 2, "name": "b", "qty": 2, "price": None},
]
LABEL = make_label(SLOT, "items", 10, 10, "u0")


def load(sink_factory: SinkFactory, **overrides: object) -> object:
    sink = sink_factory(**overrides)
    sink.setup([ITEMS])
    return sink


def expect_loaded(starrocks: StarRocksEmulator) -> None:
    assert select(starrocks, "items", "id, name, qty") == [(1, "a", 1), (2, "b", 2)]


RETRYABLE = {
    "fe-5xx": lambda f: f.fe_error(status=500, message="Internal Server Error"),
    "fe-503": lambda f: f.fe_error(status=503, message="overloaded"),
    "too-many-versions": lambda f: f.too_many_versions(),
    "running-txn-cap": lambda f: f.running_txn_limit(),
    "no-backend": lambda f: f.no_backend(),
    "be-unreachable-after-307": lambda f: f.be_unreachable(),
    "reset-mid-body": lambda f: f.connection_reset(after_bytes=7),
    "reset-before-body": lambda f: f.connection_reset(after_bytes=0),
    "http-concurrency-limit": lambda f: f.fe_error(
        status=200, message="Stream Load exceed http cuncurrent limit 10, please try again later"
    ),
}


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize("kind", sorted(RETRYABLE))
def test_retryable_failures_are_retried(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
    kind: str,
    fmt: str,
) -> None:
    sink = make_sink(load_format=fmt)
    sink.setup([ITEMS])
    fault = RETRYABLE[kind](starrocks.faults)
    result = sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    assert fault.fired == 1
    assert len(sink.waits) == 1  # type: ignore[attr-defined] - one back-off, then success
    assert result.label == LABEL
    assert starrocks.label_state(DB, LABEL) == "VISIBLE"
    expect_loaded(starrocks)


def test_publish_timeout_is_success_without_retry(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    fault = starrocks.faults.publish_timeout()
    sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    assert fault.fired == 1 and sink.waits == []  # type: ignore[attr-defined]
    assert starrocks.label_state(DB, LABEL) == "COMMITTED"
    starrocks.publish_pending()
    expect_loaded(starrocks)


def test_running_label_is_awaited_until_it_settles(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    # Another (transaction) load holds the label in PREPARE: "Label Already Exists" +
    # RUNNING. The sink polls get_load_state; the holder gives up during the first wait.
    assert sink.client.txn_begin(DB, "items", LABEL, 60) == "new"
    waits = sink.waits  # type: ignore[attr-defined]

    def rollback_on_first_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            sink.client.txn_rollback(DB, "items", LABEL)

    sink._waiter._sleep = rollback_on_first_wait
    sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    assert len(waits) >= 1
    assert starrocks.label_state(DB, LABEL) == "VISIBLE"
    expect_loaded(starrocks)


def test_stale_load_state_is_polled_again(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    starrocks.faults.stale_load_state(times=2, state="PREPARE")
    assert sink.client.load_state(DB, LABEL) == "PREPARE"
    assert sink.client.load_state(DB, LABEL) == "PREPARE"
    assert sink.client.load_state(DB, LABEL) == "VISIBLE"


def test_persistent_failure_gives_up_as_retryable(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink(retry=RetryPolicy(max_attempts=4, max_elapsed=None, base_delay=0.01))
    sink.setup([ITEMS])
    fault = starrocks.faults.too_many_versions(times=None)
    with pytest.raises(SinkError) as info:
        sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    err = info.value
    assert err.retryable and err.table == "items" and err.label == LABEL
    assert "too many versions" in err.message and "4 attempts" in err.message
    assert fault.fired == 4
    assert select(starrocks, "items") == []


def test_forever_policy_keeps_retrying_until_cancelled(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink(retry=RetryPolicy.forever(base_delay=0.01, max_delay=0.01))
    sink.setup([ITEMS])
    starrocks.faults.be_unreachable(times=None)
    waits = sink.waits  # type: ignore[attr-defined]

    def cancel_after_many(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 25:
            sink.cancel()

    sink._waiter._sleep = cancel_after_many
    with pytest.raises(SinkError, match="cancelled") as info:
        sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    assert info.value.retryable and len(waits) == 25


def test_outage_then_recovery_with_forever_policy(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    sink = make_sink(retry=RetryPolicy.forever(base_delay=0.01, max_delay=0.01))
    sink.setup([ITEMS])
    fault = starrocks.faults.fe_error(times=None, status=502, message="Bad Gateway")
    waits = sink.waits  # type: ignore[attr-defined]

    def heal_later(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 12:
            starrocks.faults.remove(fault.id)

    sink._waiter._sleep = heal_later
    sink.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    assert len(waits) == 12
    expect_loaded(starrocks)


# -- fatal -------------------------------------------------------------------------------------

SECRET = "s3cret-PW-never-shown"
WRONG = "wr0ng-PW-never-shown"


@pytest.mark.parametrize("starrocks", [{"password": SECRET}], indirect=True)
def test_bad_password_is_fatal_and_never_printed(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = make_sink(password=SECRET)
    good.setup([ITEMS])
    bad = make_sink(password=WRONG)
    caplog.set_level(logging.DEBUG)
    # Stream Load: the FE answers 401.
    body = good.plan(
        batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10), good.catalog.describe("items")
    )[0]  # type: ignore[arg-type]
    with pytest.raises(SinkError) as info:
        bad.client.load(DB, "items", LABEL, body.body.data, body.headers)
    http_err = info.value
    assert not http_err.retryable and http_err.table == "items" and http_err.label == LABEL
    assert "Access denied" in http_err.message and "STARROCKS_PASSWORD" in (http_err.hint or "")
    # MySQL (the sink describes the table first): the FE refuses the login.
    with pytest.raises(SinkError) as info:
        bad.write(batch(ITEMS, [upsert(ITEMS, ROWS, 10)], lsn=10))
    mysql_err = info.value
    assert not mysql_err.retryable and "STARROCKS_PASSWORD" in (mysql_err.hint or "")
    assert bad.waits == []  # type: ignore[attr-defined] - no retry
    shown = " ".join(
        [
            str(http_err),
            repr(http_err),
            str(mysql_err),
            repr(bad),
            repr(bad.settings),
            repr(bad.client.transport),
            caplog.text,
        ]
    )
    assert SECRET not in shown and WRONG not in shown
    assert select(starrocks, "items") == []


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_too_many_filtered_rows_is_fatal_with_the_rejected_rows(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
    fmt: str,
) -> None:
    starrocks.execute(f"CREATE DATABASE `{DB}`")
    starrocks.execute(
        f"CREATE TABLE `{DB}`.`items` (`id` BIGINT NOT NULL, `name` STRING NOT NULL, "
        "`qty` INT NULL, `price` DECIMAL(10,2) NULL, `dbmazz_op_type` TINYINT NULL, "
        "`dbmazz_is_deleted` BOOLEAN NULL, `dbmazz_synced_at` DATETIME NULL, "
        "`dbmazz_cdc_version` BIGINT NULL) PRIMARY KEY (`id`) DISTRIBUTED BY HASH (`id`)"
    )
    sink = make_sink(setup="skip", load_format=fmt)
    sink.setup([ITEMS])
    rows = [*ROWS, {"id": 3, "name": None, "qty": 3, "price": None}]
    with pytest.raises(SinkError) as info:
        sink.write(batch(ITEMS, [upsert(ITEMS, rows, 10)], lsn=10))
    err = info.value
    assert not err.retryable and err.label == LABEL and err.table == "items"
    assert "too many filtered rows" in err.message
    assert "rejected rows (from ErrorURL)" in err.message
    assert "NULL value in non-nullable column 'name'" in err.message
    # The rejected row, readable: a CSV row's field separators are shown as " | ".
    rejected = 'Row: 3 | \\N | 3 | \\N | ' if fmt == "csv" else '"id":3'
    assert rejected in (err.message if fmt == "csv" else err.message.replace(" ", ""))
    assert "\x01" not in err.message
    assert sink.waits == []  # type: ignore[attr-defined]
    assert select(starrocks, "items") == []


def test_unknown_column_is_fatal(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    headers = {**CSV_HEADERS, "columns": "id,name,qty=nonexistent + 1"}
    with pytest.raises(SinkError, match="Unknown column 'nonexistent'") as info:
        sink.client.load(DB, "items", "dbmazz-manual-1", b"1\x01a\x02", headers)
    assert not info.value.retryable and info.value.label == "dbmazz-manual-1"
    assert sink.waits == []  # type: ignore[attr-defined]


def test_unknown_table_is_fatal(starrocks: StarRocksEmulator, make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.setup([ITEMS])
    with pytest.raises(SinkError, match="unknown table") as info:
        sink.client.load(DB, "nope", "dbmazz-manual-2", b"[]", {"format": "json"})
    assert not info.value.retryable


def test_loads_known_visible_are_forgotten_without_a_read(
    starrocks: StarRocksEmulator,
    make_sink: SinkFactory,
) -> None:
    """Loads whose publish timed out are remembered until a read of the table waits for
    them; a table never read drops the ones visible by then every 64 loads, so it does not
    gather labels for ever (each remembered label costs a get_load_state at the next read)."""
    sink = load(make_sink)
    starrocks.faults.publish_timeout(times=None)
    polls = starrocks.faults.stale_load_state(times=None, state="VISIBLE")  # counts polls
    body = b"1\x01a\x011\x01\\N\x02"
    headers = {**CSV_HEADERS, "columns": "id,name,qty,price"}
    for i in range(63):
        sink.client.load(DB, "items", f"pt{i}", body, headers)
    assert polls.fired == 0
    sink.client.load(DB, "items", "pt63", body, headers)
    assert polls.fired == 64  # every remembered load asked once, all visible: forgotten
    sink.client.await_published(DB, "items")
    assert polls.fired == 64
