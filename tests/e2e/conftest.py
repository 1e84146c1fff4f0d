"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from dbmazz.engine.core import Engine


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines a test starts (append them): stopped and waited for after it. A failure
    they end with was already reported by the test."""
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)
