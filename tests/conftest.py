from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ["dbmazz.testing.fixtures"]


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """cli.main() installs a handler on the (captured) stderr; put the old ones back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
