"""Reading StarRocks replies and the retry policy."""

from __future__ import annotations

import json
import random

import pytest

from dbmazz.retry import RetryPolicy
from dbmazz.sink.starrocks.http import HttpResponse
from dbmazz.sink.starrocks.response import Outcome, classify, parse_reply


def reply(body: object, status: int = 200) -> Outcome:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify(parse_reply(HttpResponse(status, raw, "http://x")))[0]


@pytest.mark.parametrize(
    "body",
    [
        {"Status": "Success", "Message": "OK"},
        {"status": "OK"},
        {"STATUS": "Publish Timeout", "Message": "transaction commit successfully, BUT ..."},
        {"Status": "PUBLISH_TIMEOUT"},
    ],
)
def test_success(body: dict[str, str]) -> None:
    assert reply(body) is Outcome.OK


def test_label_exists_in_both_spellings() -> None:
    assert reply({"Status": "Label Already Exists", "ExistingJobStatus": "FINISHED"}) is (
        Outcome.LABEL_EXISTS
    )
    assert reply({"Status": "LABEL_ALREADY_EXISTS"}) is Outcome.LABEL_EXISTS
    parsed = parse_reply(HttpResponse(200, b'{"status":"x","existingjobstatus":"running"}', "u"))
    assert parsed.existing_job_status == "RUNNING"


@pytest.mark.parametrize(
    "message",
    [
        "Failed to load data into tablet 10011, because of too many versions, current/limit: "
        "1001/1000. You can reduce the loading job concurrency",
        "current running txns on db 10001 is 1000, larger than limit 1000",
        "Stream Load exceed http cuncurrent limit 100, please try again later",
        "No backend alive.",
        "some brand new transient failure",
    ],
)
def test_retryable_failures(message: str) -> None:
    assert reply({"Status": "Fail", "Message": message}) is Outcome.RETRY


def test_transaction_in_processing_and_http_errors_are_retryable() -> None:
    assert reply({"Status": "TXN_IN_PROCESSING"}) is Outcome.RETRY
    assert reply({"status": "FAILED", "msg": "boom"}, status=500) is Outcome.RETRY
    assert reply(b"<html>bad gateway</html>", status=502) is Outcome.RETRY
    assert reply(b"not json at all") is Outcome.RETRY


@pytest.mark.parametrize(
    "message",
    [
        "too many filtered rows",
        "Access denied for root@127.0.0.1",
        "no valid Basic authorization",
        "Unknown column 'x' in the expression of y",
        'unknown table "db.t"',
        "Invalid partial update flag format. Must be bool type",
        "unknown data format, format=xml",
        "class com.starrocks.common.DdlException: There is no 100-continue header",
    ],
)
def test_fatal_failures(message: str) -> None:
    assert reply({"Status": "Fail", "Message": message}) is Outcome.FATAL


def test_auth_refusals_are_fatal() -> None:
    body = {"status": "FAILED", "code": "1", "msg": "Access denied for u@h", "message": "x"}
    assert reply(body, status=401) is Outcome.FATAL
    assert reply(b"Not Found", status=404) is Outcome.FATAL


def test_fe_message_prefers_text_over_ok() -> None:
    parsed = parse_reply(HttpResponse(200, b'{"msg":"Access denied","message":"OK"}', "u"))
    assert parsed.message == "Access denied"


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(8.0, 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert RetryPolicy(base_delay=0).delay(5) == 0


def test_bounds() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=10.0)
    assert policy.allows(2, 0.0) and not policy.allows(3, 0.0) and not policy.allows(1, 10.0)
    forever = RetryPolicy.forever()
    assert forever.unbounded and forever.allows(10**6, 10.0**9)
    assert not RetryPolicy.none().allows(1, 0.0)
