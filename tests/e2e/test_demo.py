"""`dbmazz demo` end to end, as `make demo` runs it: private PostgreSQL, traffic, the live
dashboard over gRPC, then the source-vs-target count check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("sink", ["duckdb", "starrocks"])
def test_demo_replicates_and_counts_match(sink: str) -> None:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("DEMO_SINK", None)
    result = subprocess.run(
        [sys.executable, "-m", "dbmazz", "demo", "--duration", "8", "--sink", sink],
        capture_output=True, text=True, timeout=300, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "counts match" in result.stdout, output[-4000:]
    assert "counts differ" not in result.stdout
    # The dashboard is `dbmazz top`'s, fed by the engine's gRPC server.
    assert "dbmazz top" in result.stdout
    for table in ("shop.customers", "shop.products", "shop.orders", "shop.order_items"):
        assert table in result.stdout
