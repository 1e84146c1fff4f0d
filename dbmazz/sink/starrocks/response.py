"""Reading StarRocks HTTP replies and deciding what they mean for a retry.

Keys are matched case-insensitively and unknown keys ignored (2.x and 3.x differ); the
status is normalised so the FE's "FAILED", the BE's "Fail" and TStatusCode names such as
"LABEL_ALREADY_EXISTS" compare alike. Only stable substrings of messages are relied on
(protocol reference §2.3 and §7).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dbmazz.sink.starrocks.http import HttpResponse


class Outcome(enum.Enum):
    OK = "ok"
    LABEL_EXISTS = "label_exists"
    RETRY = "retry"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Reply:
    http_status: int
    fields: Mapping[str, Any]
    text: str

    def get(self, key: str) -> Any:
        return self.fields.get(key.lower())

    @property
    def status(self) -> str:
        raw = str(self.get("status") or "")
        return raw.replace("_", " ").strip().lower()

    @property
    def message(self) -> str:
        # BE replies say "Message"; FE RestBaseResult has "msg" too, and "message": "OK".
        message, msg = self.get("message"), self.get("msg")
        if message and str(message) != "OK":
            return str(message)
        return str(msg or message or "")

    @property
    def existing_job_status(self) -> str:
        return str(self.get("existingjobstatus") or "").upper()

    @property
    def error_url(self) -> str | None:
        value = self.get("errorurl")
        return str(value) if value else None

    @property
    def state(self) -> str:
        """``state`` of a get_load_state reply (some versions name it ``data``)."""
        return str(self.get("state") or self.get("data") or "").upper()

    def number(self, key: str) -> int:
        try:
            return int(self.get(key) or 0)
        except (TypeError, ValueError):
            return 0

    def summary(self) -> str:
        status = self.get("status") or f"HTTP {self.http_status}"
        return f"{status}: {self.message or self.text[:300]}"


def parse_reply(response: HttpResponse) -> Reply:
    text = response.body.decode("utf-8", "replace")
    fields: dict[str, Any] = {}
    try:
        parsed = json.loads(text) if text.strip() else {}
    except ValueError:
        parsed = {}
    if isinstance(parsed, dict):
        fields = {str(k).lower(): v for k, v in parsed.items()}
    return Reply(response.status, fields, text)


#: ``Reply.status`` of a load committed whose publish did not finish in time: durable, not
#: yet visible to queries (protocol reference §2.3).
PUBLISH_TIMEOUT = "publish timeout"
SUCCESS = frozenset({"success", "ok", PUBLISH_TIMEOUT})

#: StarRocks' message when strict mode filtered rows; its source says it never changes.
TOO_MANY_FILTERED = "too many filtered rows"

# Never helped by a retry: the data, the credentials or the request itself is wrong.
FATAL_MESSAGES = (
    TOO_MANY_FILTERED,
    "access denied",
    "no valid basic authorization",
    "need auth information",
    "unknown column",
    "column not found",
    "not found column",
    "unknown table",
    "unknown database",
    "does not exist",
    "unknown data format",
    "only primary key table support partial update",
    "primary key size exceed",
    "invalid partial update",
    "invalid strict mode",
    "invalid timeout format",
    "failed to parse",
    "value count does not match",
    "no 100-continue header",
    "emulator does not support",
    "merge_condition",
    "merge condition",
)

# Transient by nature: overload, version pile-ups, in-flight publishes, dead backends.
RETRY_MESSAGES = (
    "too many versions",
    "current running txns",
    "cuncurrent limit",
    "concurrent limit",
    "publish in progress",
    "txn in processing",
    "please try again later",
    "no backend alive",
    "service unavailable",
    "timeout",
    "is busy",
)


def classify(reply: Reply) -> tuple[Outcome, str]:
    """What to do about a reply, and the reason in words (for logs and errors)."""
    code = reply.http_status
    if code in (401, 403):
        return Outcome.FATAL, f"authentication or privilege refused (HTTP {code}): {reply.message}"
    if code >= 500 or code == 429:
        return Outcome.RETRY, f"HTTP {code}: {reply.message or reply.text[:200]}"
    if code != 200:
        return Outcome.FATAL, f"HTTP {code}: {reply.message or reply.text[:200]}"
    if not reply.fields:
        return Outcome.RETRY, f"unreadable reply: {reply.text[:200]!r}"
    status = reply.status
    message = reply.message.lower()
    if status in SUCCESS:
        return Outcome.OK, reply.summary()
    if status == "label already exists" or "has already been used" in message:
        return Outcome.LABEL_EXISTS, reply.summary()
    if status == "txn in processing":
        return Outcome.RETRY, reply.summary()
    if any(p in message for p in FATAL_MESSAGES):
        return Outcome.FATAL, reply.summary()
    if any(p in message for p in RETRY_MESSAGES):
        return Outcome.RETRY, reply.summary()
    # Unknown failures are retried: labels make a re-sent load harmless, and a cluster
    # hiccup is far more common than a new permanent error text.
    return Outcome.RETRY, reply.summary()


def is_auth_failure(reply: Reply) -> bool:
    message = reply.message.lower()
    return (
        reply.http_status in (401, 403)
        or "access denied" in message
        or ("authorization" in message and "basic" in message)
    )
