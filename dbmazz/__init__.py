"""dbmazz: PostgreSQL logical replication → Arrow micro-batches → StarRocks / DuckDB.

Public API::

    from dbmazz import Config, Engine, read_capture
    client = dbmazz.connect("localhost:50051")   # a running engine (gRPC)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbmazz._version import __version__
from dbmazz.config import Config

if TYPE_CHECKING:
    from dbmazz.api.client import connect
    from dbmazz.engine.core import Engine
    from dbmazz.source.capture import read_capture

__all__ = ["Config", "Engine", "__version__", "connect", "read_capture"]


def __getattr__(name: str) -> Any:
    # Heavy modules load on first use, so `import dbmazz` stays cheap for the CLI.
    if name == "Engine":
        from dbmazz.engine.core import Engine

        return Engine
    if name == "connect":
        from dbmazz.api.client import connect

        return connect
    if name == "read_capture":
        from dbmazz.source.capture import read_capture

        return read_capture
    raise AttributeError(name)
