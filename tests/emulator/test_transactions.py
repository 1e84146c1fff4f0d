"""Transaction Stream Load (§4): begin/load/prepare/commit/rollback and the state machine."""

from __future__ import annotations

import pytest

from dbmazz.testing.starrocks import ManualClock, StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, make_table, request, stream_load, txn


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    return starrocks


def test_happy_path_and_reply_fields(sr: StarRocksEmulator) -> None:
    begin = txn(sr, "begin", "x1", timeout="600")
    assert list(begin) == ["Status", "Message", "Label", "TxnId", "BeginTxnTimeMs"]
    assert (begin["Status"], begin["Message"], begin["Label"]) == ("OK", "", "x1")
    assert sr.label_state("d", "x1") == "PREPARE"

    load = txn(sr, "load", "x1", body="1\ta\t1\n2\tb\t2\n")
    assert list(load) == ["Status", "Message", "Label", "TxnId", "LoadBytes",
                          "StreamLoadPlanTimeMs", "ReceivedDataTimeMs"]
    assert (load["TxnId"], load["LoadBytes"]) == (begin["TxnId"], 12)
    txn(sr, "load", "x1", body="3\tc\t3\n")
    assert sr.rows("d", "t") == []

    prepare = txn(sr, "prepare", "x1")
    assert prepare["Status"] == "OK"
    assert list(prepare) == [
        "Status", "Message", "Label", "TxnId", "NumberTotalRows", "NumberLoadedRows",
        "NumberFilteredRows", "NumberUnselectedRows", "LoadBytes", "LoadTimeMs",
        "StreamLoadPlanTimeMs", "ReceivedDataTimeMs", "WriteDataTimeMs",
        "CommitAndPublishTimeMs",
    ]
    assert (prepare["NumberTotalRows"], prepare["LoadBytes"]) == (3, 18)
    assert sr.label_state("d", "x1") == "PREPARED"
    assert sr.rows("d", "t") == []

    commit = txn(sr, "commit", "x1")
    assert (commit["Status"], commit["NumberLoadedRows"]) == ("OK", 3)
    assert sr.label_state("d", "x1") == "VISIBLE"
    assert [r["id"] for r in sr.rows("d", "t")] == [1, 2, 3]


def test_csv_chunks_are_concatenated(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "c")
    txn(sr, "load", "c", body="1\ta\t")
    txn(sr, "load", "c", body="1\n")
    assert txn(sr, "commit", "c")["NumberLoadedRows"] == 1
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 1}]


def test_json_loads_are_separate_documents(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "j")
    txn(sr, "load", "j", body='[{"id": 1}]', format="json", strip_outer_array="true")
    txn(sr, "load", "j", body='[{"id": 2}, {"id": 1, "__op": 1}]', format="json",
        strip_outer_array="true")
    assert txn(sr, "commit", "j")["NumberLoadedRows"] == 3
    assert [r["id"] for r in sr.rows("d", "t")] == [2]


def test_commit_without_prepare(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "np")
    txn(sr, "load", "np", body="1\ta\t1\n")
    assert txn(sr, "commit", "np")["Status"] == "OK"
    assert sr.label_state("d", "np") == "VISIBLE"


def test_commit_twice_is_already_commited(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "tw")
    txn(sr, "load", "tw", body="1\ta\t1\n")
    txn(sr, "commit", "tw")
    again = txn(sr, "commit", "tw")
    assert (again["Status"], again["Message"]) == ("OK", "Transaction already commited")
    assert len(sr.rows("d", "t")) == 1


def test_unknown_label(sr: StarRocksEmulator) -> None:
    assert txn(sr, "commit", "nope") == {
        "Status": "TXN_NOT_EXISTS", "Message": "transaction with label nope not exists",
    }
    load = txn(sr, "load", "nope", body="1\ta\t1\n")
    assert (load["Status"], load["Message"]) == (
        "TXN_NOT_EXISTS", "Transaction with label nope not exists"
    )
    assert txn(sr, "rollback", "nope")["Status"] == "TXN_NOT_EXISTS"


def test_load_after_prepare_is_an_error(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "p")
    txn(sr, "load", "p", body="1\ta\t1\n")
    txn(sr, "prepare", "p")
    assert txn(sr, "load", "p", body="2\tb\t2\n")["Status"] == "TXN_NOT_EXISTS"
    # ...and a second prepare finds no open transaction either.
    assert txn(sr, "prepare", "p")["Status"] == "TXN_NOT_EXISTS"
    txn(sr, "commit", "p")
    assert [r["id"] for r in sr.rows("d", "t")] == [1]


def test_rollback(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "rb")
    txn(sr, "load", "rb", body="1\ta\t1\n")
    txn(sr, "prepare", "rb")
    reply = txn(sr, "rollback", "rb")
    assert reply == {"Status": "OK", "Message": "", "Label": "rb"}
    assert sr.label_state("d", "rb") == "ABORTED"
    assert txn(sr, "commit", "rb")["Status"] == "TXN_NOT_EXISTS"
    assert sr.rows("d", "t") == []
    # ABORTED labels can begin again.
    assert txn(sr, "begin", "rb")["Status"] == "OK"


def test_begin_with_a_used_label(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "u")
    reply = txn(sr, "begin", "u")
    assert reply == {"Status": "LABEL_ALREADY_EXISTS", "ExistingJobStatus": "RUNNING",
                     "Message": "Label [u] has already been used."}
    stream_load(sr, "d", "t", "1\ta\t1\n", label="sl")
    assert txn(sr, "begin", "sl")["ExistingJobStatus"] == "FINISHED"
    # Stream Load collides with a running transaction label too.
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="u")["ExistingJobStatus"] == "RUNNING"


def test_db_and_table_mismatch(sr: StarRocksEmulator) -> None:
    make_table(sr, BASIC_DDL.replace("CREATE TABLE t", "CREATE TABLE t2"))
    txn(sr, "begin", "m")
    reply = txn(sr, "load", "m", table="t2", body="1\ta\t1\n")
    assert reply["Status"] == "INVALID_ARGUMENT"
    assert reply["Message"] == "Request table t2 not equal transaction table t"


def test_prepare_without_data_aborts(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "e")
    reply = txn(sr, "prepare", "e")
    assert reply["Status"] == "INTERNAL_ERROR"
    assert "hasn't send any data yet" in reply["Message"]
    assert sr.label_state("d", "e") == "ABORTED"


def test_bad_load_headers_abort_the_transaction(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "h")
    reply = txn(sr, "load", "h", body="1", format="xml")
    assert (reply["Status"], reply["Message"]) == ("INTERNAL_ERROR",
                                                   "unknown data format, format=xml")
    assert sr.label_state("d", "h") == "ABORTED"


def test_too_many_filtered_rows_at_prepare(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "f")
    txn(sr, "load", "f", body="1\ta\t1\n2\tb\n")
    reply = txn(sr, "prepare", "f")
    assert (reply["Status"], reply["Message"]) == ("INTERNAL_ERROR", "too many filtered rows")
    assert "ErrorURL" in reply
    assert sr.label_state("d", "f") == "ABORTED"


def test_txn_in_processing(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "busy")
    sr.faults.txn_in_processing(label="busy", op="load")
    reply = txn(sr, "load", "busy", body="1\ta\t1\n")
    assert reply == {"Status": "TXN_IN_PROCESSING", "Label": "busy",
                     "Message": "Transaction in processing, please retry later"}
    # Safe to retry: the transaction is untouched.
    assert txn(sr, "load", "busy", body="1\ta\t1\n")["Status"] == "OK"
    assert txn(sr, "commit", "busy")["Status"] == "OK"


def test_publish_timeout_on_commit(sr: StarRocksEmulator) -> None:
    txn(sr, "begin", "pt")
    txn(sr, "load", "pt", body="1\ta\t1\n")
    sr.faults.publish_timeout(label="pt")
    reply = txn(sr, "commit", "pt")
    assert reply["Status"] == "PUBLISH_TIMEOUT"
    assert sr.label_state("d", "pt") == "COMMITTED"
    assert sr.publish_pending() == 1
    assert sr.label_state("d", "pt") == "VISIBLE"


def test_timeouts_with_manual_clock() -> None:
    clock = ManualClock()
    with StarRocksEmulator(clock=clock) as sr:
        make_table(sr, BASIC_DDL)
        txn(sr, "begin", "t1", timeout="30")
        txn(sr, "begin", "t2")  # no timeout header: the FE falls back to 20 s
        txn(sr, "begin", "t3", timeout="600", idle_transaction_timeout="10")
        txn(sr, "load", "t1", body="1\ta\t1\n")
        clock.advance(21)
        assert sr.label_state("d", "t2") == "ABORTED"
        assert sr.label_state("d", "t3") == "ABORTED"
        assert sr.label_state("d", "t1") == "PREPARE"
        clock.advance(10)
        assert sr.label_state("d", "t1") == "ABORTED"
        assert txn(sr, "commit", "t1")["Status"] == "TXN_NOT_EXISTS"
        state = request(f"{sr.url}/api/d/get_load_state?label=t1", method="GET").json
        assert state["state"] == "ABORTED"
        assert state["reason"] == "transaction is aborted by timeout 30 seconds."


def test_prepared_timeout_with_manual_clock() -> None:
    clock = ManualClock()
    with StarRocksEmulator(clock=clock) as sr:
        make_table(sr, BASIC_DDL)
        txn(sr, "begin", "pp", timeout="600")
        txn(sr, "load", "pp", body="1\ta\t1\n")
        txn(sr, "prepare", "pp", prepared_timeout="100")
        clock.advance(101)
        assert sr.label_state("d", "pp") == "ABORTED"


def test_running_txn_cap() -> None:
    with StarRocksEmulator(max_running_txn_num_per_db=2) as sr:
        make_table(sr, BASIC_DDL)
        txn(sr, "begin", "a")
        txn(sr, "begin", "b")
        reply = txn(sr, "begin", "c")
        assert reply["Status"] == "INTERNAL_ERROR"
        assert reply["Message"].startswith("current running txns on db ")
        assert reply["Message"].endswith("is 2, larger than limit 2")
        assert "current running txns on db" in stream_load(sr, "d", "t", "1")["Message"]
        txn(sr, "rollback", "a")
        assert txn(sr, "begin", "c")["Status"] == "OK"
