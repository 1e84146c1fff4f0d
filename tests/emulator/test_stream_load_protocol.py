"""Stream Load as real clients see it: 307, 100-continue, auth after redirect, bodies."""

from __future__ import annotations

import gzip
import json
import threading

import pycurl
import pytest

from dbmazz.testing.starrocks import StarRocksEmulator
from tests.emulator.helpers import (
    BASIC_DDL,
    curl,
    load_url,
    make_table,
    request,
    status_lines,
    stream_load,
    txn,
)


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    return starrocks


def _curl_load(sr: StarRocksEmulator, *opts: str, data: bytes, label: str = "l1"
               ) -> tuple[list[str], dict[str, object]]:
    done = curl(
        *opts, "-u", "root:", "-H", "Expect:100-continue", "-H", f"label:{label}",
        "-H", "column_separator:,", "-T", "-", load_url(sr, "d", "t"), data=data,
    )
    assert done.returncode == 0, done.stderr
    return status_lines(done.stderr), json.loads(done.stdout)


def test_curl_location_trusted_sees_307_then_100_then_200(sr: StarRocksEmulator) -> None:
    lines, reply = _curl_load(sr, "--location-trusted", data=b"1,a,3\n2,b,4\n")
    assert [line.split()[1] for line in lines] == ["307", "100", "200"]
    assert reply["Status"] == "Success"
    assert reply["NumberLoadedRows"] == 2
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 3}, {"id": 2, "name": "b", "score": 4},
    ]


def test_curl_location_loses_auth_like_a_real_cluster(sr: StarRocksEmulator) -> None:
    lines, reply = _curl_load(sr, "--location", data=b"1,a,3\n")
    # The BE refuses before 100 Continue, so the body is never sent.
    assert [line.split()[1] for line in lines] == ["307", "200"]
    assert reply["Status"] == "Fail"
    assert reply["Message"] == "no valid Basic authorization"
    assert sr.rows("d", "t") == []


def test_rejection_before_100_continue_label_exists(sr: StarRocksEmulator) -> None:
    _curl_load(sr, "--location-trusted", data=b"1,a,3\n", label="same")
    lines, reply = _curl_load(sr, "--location-trusted", data=b"9,z,9\n", label="same")
    assert [line.split()[1] for line in lines] == ["307", "200"]
    assert reply["Status"] == "Label Already Exists"
    assert reply["ExistingJobStatus"] == "FINISHED"
    assert reply["Message"] == "Label [same] has already been used."
    assert reply["TxnId"] == -1
    assert [r["id"] for r in sr.rows("d", "t")] == [1]


def test_response_key_order_and_pretty_printing(sr: StarRocksEmulator) -> None:
    response = request(load_url(sr, "d", "t"), body=b"1\ta\t1\n2\tb\n",
                       headers={"label": "k", "max_filter_ratio": "0.9"})
    keys = list(response.json)
    assert keys == [
        "TxnId", "Label", "Status", "Message", "NumberTotalRows", "NumberLoadedRows",
        "NumberFilteredRows", "NumberUnselectedRows", "LoadBytes", "LoadTimeMs",
        "BeginTxnTimeMs", "StreamLoadPlanTimeMs", "ReadDataTimeMs", "WriteDataTimeMs",
        "CommitAndPublishTimeMs", "ErrorURL",
    ]
    assert response.text.startswith('{\n    "TxnId": ')
    assert response.json["Message"] == "OK"
    assert response.json["LoadBytes"] == len(b"1\ta\t1\n2\tb\n")


def test_label_already_exists_key_order(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n", label="k")
    reply = stream_load(sr, "d", "t", "1\ta\t1\n", label="k")
    assert list(reply)[:5] == ["TxnId", "Label", "Status", "ExistingJobStatus", "Message"]


@pytest.mark.parametrize("chunked", [False, True])
def test_chunked_and_content_length_bodies(sr: StarRocksEmulator, chunked: bool) -> None:
    body = "".join(f"{i}\tn{i}\t{i}\n" for i in range(500)).encode()
    response = request(load_url(sr, "d", "t"), body=body, chunked=chunked)
    assert response.json["NumberLoadedRows"] == 500
    assert response.json["LoadBytes"] == len(body)
    assert len(sr.rows("d", "t")) == 500


def test_gzip_body(sr: StarRocksEmulator) -> None:
    body = gzip.compress(b"1\ta\t1\n2\tb\t2\n")
    reply = stream_load(sr, "d", "t", body, format="gzip")
    assert reply["NumberLoadedRows"] == 2
    reply = stream_load(sr, "d", "t", gzip.compress(b'[{"id": 3}]'), format="json",
                        strip_outer_array="true", compression="gzip")
    assert reply["NumberLoadedRows"] == 1


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"format": "parquet"}, "unknown data format, format=parquet"),
        ({"timeout": "abc"}, "Invalid timeout format"),
        ({"label": "bad label!"}, "Label format error"),
        ({"label": "x" * 129}, "Label format error"),
        ({"partial_update": "yes"}, "Invalid partial update flag format. Must be bool type"),
        ({"strict_mode": "maybe"}, "Invalid strict mode format. Must be bool type"),
        ({"partitions": "p1", "temporary_partitions": "p2"},
         "Can not specify both partitions and temporary partitions"),
        ({"compression": "gzip", "Content-Encoding": "gzip"}, "can not be set at the same time"),
    ],
)
def test_header_errors(sr: StarRocksEmulator, headers: dict[str, str], message: str) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t1\n", **headers)
    assert reply["Status"] == "Fail"
    assert message in reply["Message"]


def test_label_regex_accepts_dash_and_underscore(sr: StarRocksEmulator) -> None:
    label = "dbmazz-slot_1-t-" + "a" * 100
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label=label[:128])["Status"] == "Success"


def test_header_values_are_read_as_utf8(sr: StarRocksEmulator) -> None:
    # The client sends UTF-8 bytes; http.server decodes them as latin-1, StarRocks as UTF-8.
    make_table(sr, "CREATE TABLE `ünï` (id INT NOT NULL, `cølümn ✓` INT, `naïve` VARCHAR(10))"
                   " PRIMARY KEY (id)")
    reply = stream_load(sr, "d", "ünï", "1,7,é\n2,8,a\n", column_separator=",",
                        columns="id,`cølümn ✓`,`naïve`", where="`naïve` = 'é'")
    assert (reply["Status"], reply["NumberUnselectedRows"]) == ("Success", 1), reply
    assert sr.rows("d", "ünï") == [{"id": 1, "cølümn ✓": 7, "naïve": "é"}]
    # The transaction API names its table in a header.
    for op, body in [("begin", None), ("load", "3,9,x\n"), ("commit", None)]:
        reply = txn(sr, op, "u1", table="ünï", body=body, column_separator=",",
                    columns="id,`cølümn ✓`,`naïve`")
        assert reply["Status"] in ("OK", "Success"), reply
    assert sr.rows("d", "ünï")[-1] == {"id": 3, "cølümn ✓": 9, "naïve": "x"}


def test_non_ascii_label_is_refused_and_reported_as_sent(sr: StarRocksEmulator) -> None:
    # FeNameFormat's \w is Java's, ASCII only.
    reply = stream_load(sr, "d", "t", "1\ta\t1\n", label="läbel")
    assert reply["Status"] == "Fail"
    assert reply["Message"].endswith("label: läbel"), reply


def test_missing_label_gets_a_uuid(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t1\n")
    assert len(reply["Label"]) == 36
    assert sr.label_state("d", reply["Label"]) == "VISIBLE"


def test_unknown_table_and_database(sr: StarRocksEmulator) -> None:
    assert stream_load(sr, "d", "nope", "1")["Message"] == 'unknown table "d.nope"'
    assert stream_load(sr, "zz", "t", "1")["Message"] == "unknown database, database=zz"


def test_direct_to_be_with_wrong_password(sr: StarRocksEmulator) -> None:
    url = f"http://127.0.0.1:{sr.be_http_ports[0]}/api/d/t/_stream_load"
    reply = request(url, body=b"1\ta\t1\n", password="bad").json
    assert reply["Message"] == "Access denied for root@127.0.0.1"


def test_be_unknown_path_is_404_text(sr: StarRocksEmulator) -> None:
    response = request(f"http://127.0.0.1:{sr.be_http_ports[0]}/api/nothing", method="GET")
    assert (response.status, response.body) == (404, b"Not Found")


def test_error_log_is_served(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t1\n2\tb\n", max_filter_ratio="0.5")
    assert reply["Status"] == "Success"
    log = request(str(reply["ErrorURL"]), method="GET", user=None)
    assert log.status == 200
    assert log.text == (
        "Error: Value count does not match column count. Expect 3, but got 2. Row: 2\tb\n"
    )


def test_connection_reset_mid_body_aborts_the_load(sr: StarRocksEmulator) -> None:
    sr.faults.connection_reset(after_bytes=4, table="t")
    with pytest.raises(pycurl.error) as err:
        request(load_url(sr, "d", "t"), body=b"1\ta\t1\n" * 1000, headers={"label": "r"})
    assert err.value.args[0] in (pycurl.E_RECV_ERROR, pycurl.E_SEND_ERROR,
                                 pycurl.E_GOT_NOTHING)
    assert sr.label_state("d", "r") == "ABORTED"
    # An aborted label can be used again.
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="r")["Status"] == "Success"


def test_be_unreachable_after_redirect(sr: StarRocksEmulator) -> None:
    sr.faults.be_unreachable()
    with pytest.raises(pycurl.error) as err:
        request(load_url(sr, "d", "t"), body=b"1\ta\t1\n")
    assert err.value.args[0] == pycurl.E_COULDNT_CONNECT
    assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"


def test_slow_be_reply(sr: StarRocksEmulator) -> None:
    sr.faults.delay(30, where="be", table="t")
    done = curl("--max-time", "1", "--location-trusted", "-u", "root:", "-H",
                "Expect:100-continue", "-T", "-", load_url(sr, "d", "t"), data=b"1\ta\t1\n")
    assert done.returncode == 28  # curl: operation timed out
    assert sr.faults.pending() == []


def test_concurrent_loads_with_distinct_labels(sr: StarRocksEmulator) -> None:
    results: list[str] = []

    def load(i: int) -> None:
        results.append(stream_load(sr, "d", "t", f"{i}\tn\t{i}\n", label=f"c{i}")["Status"])

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Success"] * 8
    assert len(sr.rows("d", "t")) == 8
