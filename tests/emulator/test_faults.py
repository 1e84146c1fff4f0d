"""Fault injection: each documented failure, scheduled for N requests or by table/label."""

from __future__ import annotations

import pytest

from dbmazz.testing.starrocks import FaultKind, StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, load_url, make_table, request, stream_load, txn


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    make_table(starrocks, BASIC_DDL.replace("CREATE TABLE t", "CREATE TABLE u"))
    return starrocks


def test_publish_timeout(sr: StarRocksEmulator) -> None:
    sr.faults.publish_timeout()
    reply = stream_load(sr, "d", "t", "1\ta\t1\n", label="p")
    assert reply["Status"] == "Publish Timeout"
    # Committed, not yet visible (protocol reference §2.3): the label is taken (FINISHED),
    # the rows are not there for queries until the publish completes.
    assert sr.label_state("d", "p") == "COMMITTED"
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="p")["ExistingJobStatus"] == "FINISHED"
    assert sr.rows("d", "t") == []
    assert sr.execute("SELECT count(*) FROM d.t") == [(0,)]
    assert sr.publish_pending() == 1
    assert sr.label_state("d", "p") == "VISIBLE"
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 1}]


def test_a_later_load_publishes_the_timed_out_one_first(sr: StarRocksEmulator) -> None:
    """A tablet's versions become visible in order: the later load applies over the earlier."""
    sr.faults.publish_timeout()
    assert stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t2\n", label="p1")["Status"] == \
        "Publish Timeout"
    headers = {"partial_update": "true", "columns": "id,score"}
    assert stream_load(sr, "d", "t", "1\t5\n", label="p2", **headers)["Status"] == \
        "Success"
    assert sr.label_state("d", "p1") == "VISIBLE"
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 5},
                                 {"id": 2, "name": "b", "score": 2}]
    assert sr.publish_pending() == 0


def test_too_many_versions(sr: StarRocksEmulator) -> None:
    sr.faults.too_many_versions(times=2, version_count=1001, limit=1000)
    for label in ("v1", "v2"):
        reply = stream_load(sr, "d", "t", "1\ta\t1\n", label=label)
        assert reply["Status"] == "Fail"
        assert "because of too many versions, current/limit: 1001/1000. You can reduce the " \
               "loading job concurrency, or increase loading data batch size." in reply["Message"]
        assert reply["Message"].startswith("Failed to load data into tablet ")
        assert sr.label_state("d", label) == "ABORTED"
    assert sr.rows("d", "t") == []
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="v1")["Status"] == "Success"


def test_running_txn_limit(sr: StarRocksEmulator) -> None:
    sr.faults.running_txn_limit(table="t")
    assert stream_load(sr, "d", "u", "1\ta\t1\n")["Status"] == "Success"
    reply = stream_load(sr, "d", "t", "1\ta\t1\n")
    assert reply["Status"] == "Fail"
    assert reply["Message"].startswith("current running txns on db ")
    assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"


def test_fe_500(sr: StarRocksEmulator) -> None:
    sr.faults.fe_error(message="something broke")
    response = request(load_url(sr, "d", "t"), body=b"1\ta\t1\n")
    assert response.status == 500
    assert response.json == {"status": "FAILED", "code": "1", "msg": "something broke",
                             "message": "something broke"}


def test_no_backend_alive(sr: StarRocksEmulator) -> None:
    sr.faults.no_backend()
    assert stream_load(sr, "d", "t", "1\ta\t1\n") == {
        "Status": "FAILED", "Message": "class com.starrocks.common.DdlException: No backend alive.",
    }


def test_stale_load_state(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n", label="s")
    sr.faults.stale_load_state(label="s", state="PREPARE", times=2)
    url = f"{sr.url}/api/d/get_load_state?label=s"
    states = [request(url, method="GET").json["state"] for _ in range(3)]
    assert states == ["PREPARE", "PREPARE", "VISIBLE"]


def test_fault_matches_only_its_label(sr: StarRocksEmulator) -> None:
    sr.faults.too_many_versions(label="hit", times=None)
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="miss")["Status"] == "Success"
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="hit")["Status"] == "Fail"
    assert stream_load(sr, "d", "t", "2\tb\t2\n", label="hit")["Status"] == "Fail"
    assert len(sr.faults.pending()) == 1
    assert sr.faults.pending()[0].fired == 2
    sr.faults.clear()
    assert stream_load(sr, "d", "t", "2\tb\t2\n", label="hit")["Status"] == "Success"


def test_faults_fire_in_order_and_are_consumed(sr: StarRocksEmulator) -> None:
    first = sr.faults.add(FaultKind.FE_ERROR, status=503, message="first")
    sr.faults.add("fe_error", status=502, message="second")
    assert request(load_url(sr, "d", "t"), body=b"").status == 503
    assert first.fired == 1
    assert request(load_url(sr, "d", "t"), body=b"").status == 502
    assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"


def test_delay_on_fe_is_consumed(sr: StarRocksEmulator) -> None:
    sr.faults.delay(0.01, where="fe")
    assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"
    assert sr.faults.pending() == []


def test_txn_faults(sr: StarRocksEmulator) -> None:
    sr.faults.too_many_versions(label="tx")
    txn(sr, "begin", "tx")
    txn(sr, "load", "tx", body="1\ta\t1\n")
    reply = txn(sr, "commit", "tx")
    assert reply["Status"] == "SERVICE_UNAVAILABLE"
    assert "too many versions" in reply["Message"]
    assert sr.label_state("d", "tx") == "ABORTED"
    sr.faults.running_txn_limit()
    assert txn(sr, "begin", "ty")["Message"].startswith("current running txns on db")
