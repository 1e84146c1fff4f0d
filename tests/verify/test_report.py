"""The verify report as text (every kind of difference gets its own share of keys), and
the arguments a verify refuses."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from dbmazz.verify.report import KeyDiff, TableResult, VerifyReport, render
from dbmazz.verify.run import BadVerifyRequest, VerifyRequest


def text_of(report: VerifyReport, max_keys: int) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render(report, max_keys))
    return console.export_text()


def test_each_kind_lists_its_first_keys_and_counts_the_rest() -> None:
    diffs = ([KeyDiff("missing", {"id": i}) for i in range(15)]
             + [KeyDiff("changed", {"id": 100 + i}, ("v",)) for i in range(17)]
             + [KeyDiff("extra", {"id": 900})])
    table = TableResult("public.t", "t", missing=15, changed=17, extra=1, diffs=diffs)
    text = text_of(VerifyReport("0/1", "as-is", tables=[table]), max_keys=5)
    lines = text.splitlines()
    assert sum(line.startswith("public.t: missing (") for line in lines) == 5
    assert sum(line.startswith("public.t: changed (") for line in lines) == 5
    assert "public.t: extra (id=900)" in text
    assert "public.t: … 10 more missing" in text
    assert "public.t: … 12 more changed" in text
    assert "more extra" not in text
    assert lines[-1] == "DIFFERENT"


@pytest.mark.parametrize("request_", [VerifyRequest(max_keys=-1), VerifyRequest(ranges=0),
                                      VerifyRequest(sample=0.0)])
def test_arguments_that_cannot_work_are_refused(request_: VerifyRequest) -> None:
    with pytest.raises(BadVerifyRequest):
        request_.options()


def test_the_json_report_is_json_with_non_finite_float_keys() -> None:
    diffs = [KeyDiff("missing", {"f": float("nan")}), KeyDiff("extra", {"f": float("-inf")}),
             KeyDiff("changed", {"f": 1.5}, ("v",))]
    table = TableResult("public.t", "t", missing=1, extra=1, changed=1, diffs=diffs)
    text = json.dumps(VerifyReport("0/1", "as-is", tables=[table]).to_dict())
    # Was: NaN and -Infinity, which strict JSON readers refuse.
    out = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert [d["key"]["f"] for d in out["tables"][0]["diffs"]] == ["nan", "-inf", 1.5]
