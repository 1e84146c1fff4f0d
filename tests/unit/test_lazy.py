"""Lazy imports: a run loads polars only when a path uses it."""

from __future__ import annotations

import subprocess
import sys

from dbmazz.lazy import lazy_module


def test_building_the_engine_does_not_import_polars() -> None:
    code = (
        "import sys, dbmazz.engine.build, dbmazz.cli, dbmazz.sink.starrocks.serialize, "
        "dbmazz.engine.snapshot_sink; print('polars' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "False"


def test_a_lazy_module_imports_at_first_use_from_many_threads() -> None:
    code = (
        "import sys, threading\n"
        "from dbmazz.lazy import lazy_module\n"
        "pl = lazy_module('polars')\n"
        "assert 'polars' not in sys.modules\n"
        "out = []\n"
        "def use(): out.append(pl.DataFrame({'a': [1, 2]}).height)\n"
        "ts = [threading.Thread(target=use) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(out, 'polars' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[2, 2, 2, 2, 2, 2, 2, 2] True"


def test_a_lazy_module_is_the_module() -> None:
    lazy_json = lazy_module("json")
    assert lazy_json.dumps({"a": 1}) == '{"a": 1}'
    assert lazy_json.JSONDecodeError is __import__("json").JSONDecodeError
