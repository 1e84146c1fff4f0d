"""The StarRocks emulator is an optional extra: the runtime works without its dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMULATOR_ONLY = ("mysql_mimic", "sqlglot")

# Runs first in the child: the emulator-only modules are absent, as where `pip install
# dbmazz` installed no extra (a None entry in sys.modules makes every import of them fail).
_BLOCK = textwrap.dedent(f"""
    import sys
    for name in {EMULATOR_ONLY!r}:
        sys.modules[name] = None
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_runtime_dependencies_hold_no_emulator_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("[")[0].strip().replace("-", "_")
             for dep in project["dependencies"]}
    assert not names & set(EMULATOR_ONLY)
    extra = {dep.split(">")[0].replace("-", "_") for dep in
             project["optional-dependencies"]["emulator"]}
    assert extra == set(EMULATOR_ONLY)


def test_import_and_help_work_without_the_emulator_dependencies() -> None:
    done = _run_blocked("""
        import importlib, pkgutil, sys
        import dbmazz
        from dbmazz.cli import main

        # Every runtime module imports (the emulator's package is the only exception).
        for info in pkgutil.walk_packages(dbmazz.__path__, "dbmazz."):
            if not info.name.startswith("dbmazz.testing.starrocks"):
                importlib.import_module(info.name)
        assert dbmazz.Engine and dbmazz.connect and dbmazz.read_capture
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert sys.modules["mysql_mimic"] is None and sys.modules["sqlglot"] is None
    """)
    assert done.returncode == 0, done.stderr
    assert "usage: dbmazz" in done.stdout


def test_demo_with_starrocks_names_the_missing_extra() -> None:
    done = _run_blocked("""
        from dbmazz.demo import run_demo
        from dbmazz.errors import DbmazzError
        try:
            run_demo(duration_s=0, sink="starrocks")
        except DbmazzError as exc:
            print(exc)
        else:
            raise SystemExit("the demo started without the emulator")
    """)
    assert done.returncode == 0, done.stderr
    assert "mysql_mimic, sqlglot" in done.stdout
    assert "pip install 'dbmazz[emulator]'" in done.stdout
