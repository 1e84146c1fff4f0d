"""What the emulator needs beyond dbmazz's runtime: the ``emulator`` extra.

mysql-mimic (the MySQL protocol) and sqlglot (StarRocks DDL and queries) are test-only, so
``pip install dbmazz`` does not install them. This module imports neither: it is safe to
import to ask whether the emulator can run.
"""

from __future__ import annotations

import importlib.util

from dbmazz.errors import DbmazzError

#: Modules the emulator imports that the runtime does not install.
MODULES = ("mysql_mimic", "sqlglot")
INSTALL_HINT = "pip install 'dbmazz[emulator]' (a clone: make install)"


class EmulatorMissing(DbmazzError, ImportError):
    """The StarRocks emulator's optional dependencies are not installed."""


def missing_modules() -> list[str]:
    return [name for name in MODULES if importlib.util.find_spec(name) is None]


def require_emulator() -> None:
    """Raise :class:`EmulatorMissing` naming the missing modules and how to install them."""
    missing = missing_modules()
    if missing:
        raise EmulatorMissing(
            f"the StarRocks emulator needs {', '.join(missing)}, which dbmazz does not "
            "install by default (test-only dependencies)",
            INSTALL_HINT,
        )
