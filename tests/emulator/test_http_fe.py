"""FE HTTP: auth, the Expect check, 307 round robin, get_load_state, routing, admin API."""

from __future__ import annotations

import json

import pytest

from dbmazz.testing.starrocks import StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, load_url, make_table, request, stream_load


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    return starrocks


def test_missing_auth_is_401_with_rest_result(sr: StarRocksEmulator) -> None:
    response = request(load_url(sr, "d", "t"), body=b"1\ta\t1\n", user=None, follow=False)
    assert response.status == 401
    assert any(h.lower().startswith("www-authenticate: basic") for h in response.headers)
    assert response.json == {
        "status": "FAILED", "code": "1", "msg": "Need auth information.",
        "message": "Need auth information.",
    }


def test_wrong_password_is_401_access_denied(sr: StarRocksEmulator) -> None:
    response = request(load_url(sr, "d", "t"), body=b"x", password="nope", follow=False)
    assert response.status == 401
    assert response.json["msg"] == "Access denied for root@127.0.0.1"
    assert response.json["status"] == "FAILED"


def test_stream_load_without_expect_is_refused(sr: StarRocksEmulator) -> None:
    response = request(load_url(sr, "d", "t"), body=b"1\ta\t1\n", follow=False, expect=False)
    assert response.status == 200
    assert response.json == {
        "Status": "FAILED",
        "Message": "class com.starrocks.common.DdlException: There is no 100-continue header",
    }
    assert any(h.lower().startswith("connection: close") for h in response.headers)
    assert sr.rows("d", "t") == []


def test_redirects_round_robin_over_bes(sr: StarRocksEmulator) -> None:
    locations = []
    for _ in range(4):
        response = request(load_url(sr, "d", "t"), body=b"", follow=False)
        assert response.status == 307
        location = next(h for h in response.headers if h.lower().startswith("location:"))
        locations.append(location.split(":", 1)[1].strip())
    ports = [int(loc.split(":")[2].split("/")[0]) for loc in locations]
    assert ports == [*sr.be_http_ports, *sr.be_http_ports]
    assert all(loc.endswith("/api/d/t/_stream_load") for loc in locations)


def test_redirect_keeps_path_and_query(sr: StarRocksEmulator) -> None:
    response = request(load_url(sr, "d", "t") + "?x=1", body=b"", follow=False)
    location = next(h for h in response.headers if h.lower().startswith("location:"))
    assert location.strip().endswith("/api/d/t/_stream_load?x=1")


def test_get_load_state(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n", label="l1")
    url = f"{sr.url}/api/d/get_load_state?label=l1"
    state = request(url, method="GET").json
    assert state == {"state": "VISIBLE", "status": "OK", "code": "0", "msg": "Success",
                     "message": "OK"}
    assert request(f"{sr.url}/api/d/get_load_state?label=nope", method="GET").json[
        "state"
    ] == "UNKNOWN"
    missing_db = request(f"{sr.url}/api/zz/get_load_state?label=l1", method="GET").json
    assert missing_db["status"] == "FAILED"
    assert missing_db["msg"] == "unknown database, database=zz"
    no_label = request(f"{sr.url}/api/d/get_load_state", method="GET").json
    assert no_label["msg"] == "No label selected."


def test_get_load_state_needs_auth(sr: StarRocksEmulator) -> None:
    response = request(f"{sr.url}/api/d/get_load_state?label=l", method="GET", user=None)
    assert response.status == 401


def test_transaction_ops_go_to_the_coordinator_chosen_at_begin(sr: StarRocksEmulator) -> None:
    def location(op: str, label: str) -> int:
        response = request(
            f"{sr.url}/api/transaction/{op}", method="POST", follow=False,
            headers={"label": label, "db": "d", "table": "t"},
        )
        assert response.status == 307
        loc = next(h for h in response.headers if h.lower().startswith("location:"))
        return int(loc.split(":")[3].split("/")[0])

    first = location("begin", "a")
    second = location("begin", "b")
    assert {first, second} == set(sr.be_http_ports)
    for op in ("load", "prepare", "commit", "load", "rollback"):
        assert location(op, "a") == first
        assert location(op, "b") == second


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"db": "d", "table": "t"}, "Empty label."),
        ({"label": "x", "table": "t"}, "No database selected."),
    ],
)
def test_transaction_header_checks(sr: StarRocksEmulator, headers: dict[str, str],
                                   message: str) -> None:
    response = request(f"{sr.url}/api/transaction/begin", method="POST", headers=headers,
                       follow=False)
    assert response.json == {"Status": "FAILED",
                             "Message": f"class com.starrocks.common.DdlException: {message}"}


def test_unknown_path_is_404(sr: StarRocksEmulator) -> None:
    response = request(f"{sr.url}/api/d/t/_nope", method="GET")
    assert response.status == 404
    assert response.body == b"Not Found"


def test_admin_api_faults_and_rows(sr: StarRocksEmulator) -> None:
    spec = json.dumps({"kind": "fe_error", "times": 1, "table": "t", "message": "boom"})
    added = request(f"{sr.url}/_emulator/faults", method="POST", body=spec.encode(),
                    user=None, expect=False)
    assert added.json["fault"]["kind"] == "fe_error"
    listed = request(f"{sr.url}/_emulator/faults", method="GET", user=None).json["faults"]
    assert [f["kind"] for f in listed] == ["fe_error"]
    failed = request(load_url(sr, "d", "t"), body=b"1\ta\t1\n")
    assert failed.status == 500
    assert failed.json["msg"] == "boom"
    assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"
    rows = request(f"{sr.url}/_emulator/rows?db=d&table=t", method="GET", user=None).json
    assert rows == {"rows": [{"id": 1, "name": "a", "score": 1}]}
    request(f"{sr.url}/_emulator/faults", method="POST", user=None, expect=False,
            body=json.dumps({"kind": "no_backend", "times": None}).encode())
    cleared = request(f"{sr.url}/_emulator/faults", method="DELETE", user=None)
    assert cleared.json == {"status": "OK"}
    assert sr.faults.pending() == []


def test_admin_api_rejects_bad_fault(sr: StarRocksEmulator) -> None:
    response = request(f"{sr.url}/_emulator/faults", method="POST", user=None, expect=False,
                       body=b'{"kind": "nonsense"}')
    assert response.status == 400
