"""Modules imported on first use, so a run loads only what its path needs.

polars alone adds ~30 MB of resident memory at import, and the common paths (inserts with
distinct keys, CSV/JSON bodies of plain columns) never touch it. A module-level name bound
to :func:`lazy_module` imports the real module at its first attribute access; type checkers
see the real import (``if TYPE_CHECKING: import polars as pl``). Thread-safe: the import
goes through :func:`importlib.import_module` and its module locks.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for module ``name`` that imports it at the first attribute access."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name

    def __getattr__(self, attr: str) -> Any:
        # Only called for names not found on the proxy: the first access of each.
        module: ModuleType = importlib.import_module(self._lazy_name)
        value = getattr(module, attr)
        setattr(self, attr, value)  # later accesses are plain attribute reads
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._lazy_name!r}>"


def lazy_module(name: str) -> Any:
    """A proxy for module ``name`` (see the module docstring)."""
    return LazyModule(name)
