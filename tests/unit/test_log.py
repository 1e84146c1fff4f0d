"""Log output: readable text by default, one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging

import pytest

from dbmazz.log import configure_logging


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("dbmazz.test").info("loaded %d rows", 5, extra={"table": "public.t"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["msg"] == "loaded 5 rows" and record["table"] == "public.t"
    assert record["level"] == "info" and record["logger"] == "dbmazz.test"


def test_text_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "text")
    logging.getLogger("dbmazz.test").info("hidden")
    logging.getLogger("dbmazz.test").warning("shown")
    err = capsys.readouterr().err
    assert "shown" in err and "hidden" not in err and "WARNING" in err
