"""Reply bodies, with the key order and formatting of the real FE and BE.

BE replies are RapidJSON ``PrettyWriter`` output (4-space indent); FE replies are compact
Gson output, which omits null fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def pretty(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=4, ensure_ascii=False).encode("utf-8")


def compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in obj.items() if v is not None}, separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


def rest_result(message: str | None = None, **extra: Any) -> dict[str, Any]:
    """FE ``RestBaseResult``: OK when ``message`` is None, else FAILED with that message.

    Gson writes subclass fields (``extra``) before the base-class ones.
    """
    base = (
        {"status": "OK", "code": "0", "msg": "Success", "message": "OK"}
        if message is None
        else {"status": "FAILED", "code": "1", "msg": message, "message": message}
    )
    return {**extra, **base}


def fe_failed(message: str, exception: str = "com.starrocks.common.DdlException") -> dict[str, Any]:
    """What FE load actions send for an exception: ``{"Status":"FAILED",...}``."""
    return {"Status": "FAILED", "Message": f"class {exception}: {message}"}


@dataclass
class LoadTimes:
    load_ms: int = 0
    begin_txn_ms: int = 0
    plan_ms: int = 0
    read_data_ms: int = 0
    write_data_ms: int = 0
    commit_publish_ms: int = 0


@dataclass
class LoadCounters:
    total: int = 0
    loaded: int = 0
    filtered: int = 0
    unselected: int = 0
    load_bytes: int = 0


@dataclass
class StreamLoadResult:
    label: str
    txn_id: int = -1
    status: str = "Fail"
    message: str = ""
    existing_job_status: str | None = None
    counters: LoadCounters = field(default_factory=LoadCounters)
    times: LoadTimes = field(default_factory=LoadTimes)
    error_url: str | None = None

    def body(self) -> dict[str, Any]:
        """§2.3: TxnId, Label, Status, [ExistingJobStatus], Message, counters, times, [ErrorURL]."""
        out: dict[str, Any] = {"TxnId": self.txn_id, "Label": self.label, "Status": self.status}
        if self.existing_job_status is not None:
            out["ExistingJobStatus"] = self.existing_job_status
        c, t = self.counters, self.times
        out.update(
            {
                "Message": "OK" if self.status == "Success" else self.message,
                "NumberTotalRows": c.total,
                "NumberLoadedRows": c.loaded,
                "NumberFilteredRows": c.filtered,
                "NumberUnselectedRows": c.unselected,
                "LoadBytes": c.load_bytes,
                "LoadTimeMs": t.load_ms,
                "BeginTxnTimeMs": t.begin_txn_ms,
                "StreamLoadPlanTimeMs": t.plan_ms,
                "ReadDataTimeMs": t.read_data_ms,
                "WriteDataTimeMs": t.write_data_ms,
                "CommitAndPublishTimeMs": t.commit_publish_ms,
            }
        )
        if self.error_url:
            out["ErrorURL"] = self.error_url
        return out


def txn_reply(
    op: str,
    status: str,
    message: str = "",
    *,
    label: str = "",
    txn_id: int = -1,
    existing_job_status: str | None = None,
    counters: LoadCounters | None = None,
    times: LoadTimes | None = None,
    error_url: str | None = None,
) -> dict[str, Any]:
    """``StreamLoadContext::to_resp_json``: the transaction-interface reply for ``op``."""
    out: dict[str, Any] = {"Status": status}
    if status == "LABEL_ALREADY_EXISTS":
        out["ExistingJobStatus"] = existing_job_status or ""
    elif status == "TXN_IN_PROCESSING":
        out["Label"] = label
    out["Message"] = message
    if status == "OK":
        out["Label"] = label
        c, t = counters or LoadCounters(), times or LoadTimes()
        if op == "begin":
            out.update({"TxnId": txn_id, "BeginTxnTimeMs": t.begin_txn_ms})
        elif op in ("commit", "prepare"):
            out.update(
                {
                    "TxnId": txn_id,
                    "NumberTotalRows": c.total,
                    "NumberLoadedRows": c.loaded,
                    "NumberFilteredRows": c.filtered,
                    "NumberUnselectedRows": c.unselected,
                    "LoadBytes": c.load_bytes,
                    "LoadTimeMs": t.load_ms,
                    "StreamLoadPlanTimeMs": t.plan_ms,
                    "ReceivedDataTimeMs": t.read_data_ms,
                    "WriteDataTimeMs": t.write_data_ms,
                    "CommitAndPublishTimeMs": t.commit_publish_ms,
                }
            )
        elif op == "load":
            out.update(
                {
                    "TxnId": txn_id,
                    "LoadBytes": c.load_bytes,
                    "StreamLoadPlanTimeMs": t.plan_ms,
                    "ReceivedDataTimeMs": t.read_data_ms,
                }
            )
    if error_url:
        out["ErrorURL"] = error_url
    return out
