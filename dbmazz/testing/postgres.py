"""A private, throwaway PostgreSQL cluster for tests, benchmarks and the demo.

The cluster is created with ``initdb`` in a temporary directory, listens on a free port on
127.0.0.1 only, runs with ``wal_level=logical`` and enough replication slots and senders for
parallel tests, and is removed when the context exits (also when the body raised). When the
current user is root, the server runs as an unprivileged account (``postgres`` or ``nobody``)
because PostgreSQL refuses to run as root.

Set ``DBMAZZ_TEST_PG_DSN`` to run tests against an existing server instead; it must have
``wal_level=logical`` and a role that may create databases and replicate.

This is a test tool, not a way to run PostgreSQL in production.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "dbmazz-test-secret"

DEFAULT_SETTINGS: dict[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    "max_connections": "200",
    # A throwaway cluster needs no durability against power loss; a SIGKILL of the server
    # still leaves a consistent cluster because the WAL is written before commit returns.
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "wal_sender_timeout": "60s",
    "log_min_messages": "warning",
    "logging_collector": "off",
}

_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them: "
    "Debian/Ubuntu `apt-get install -y postgresql`, macOS `brew install postgresql@16`, "
    "or set PG_BINDIR to the directory holding initdb; or point the tests at a running "
    "server with DBMAZZ_TEST_PG_DSN=postgresql://user:password@host:port/db."
)


class PostgresBinariesNotFound(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


class PostgresStartError(RuntimeError):
    """The throwaway cluster did not start; the message carries the server log tail."""


def find_bindir() -> Path:
    """Locate the directory holding ``initdb``/``pg_ctl``/``postgres``.

    Looked up in order: ``PG_BINDIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``
    (newest first), then ``PATH``.
    """
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
            candidates.append(Path(out))
    versioned = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in versioned)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresBinariesNotFound(_INSTALL_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as the current user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    raise PostgresStartError(
        "running as root and no unprivileged account (postgres or nobody) exists to run "
        "the PostgreSQL server; create one with `useradd postgres`"
    )


def _chown_tree(path: Path, account: tuple[int, int] | None) -> None:
    if account is None:
        return
    uid, gid = account
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


@dataclass
class PostgresServer:
    """A running PostgreSQL server reachable at ``host:port`` with a superuser DSN."""

    host: str
    port: int
    user: str
    password: str
    dbname: str = "postgres"

    def dsn(self, dbname: str | None = None, **params: str) -> str:
        """A libpq URL for ``dbname`` (default: the maintenance database)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        url = (
            f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{dbname or self.dbname}"
        )
        return f"{url}?{query}" if query else url

    def connect(self, dbname: str | None = None, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def execute(self, statement: str, dbname: str | None = None) -> None:
        with self.connect(dbname) as conn:
            conn.execute(statement)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a test database together with every replication slot it holds."""
        with self.connect() as conn:
            slots = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                (name,),
            ).fetchall()
            for slot_name, active_pid in slots:
                if active_pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                # The walsender may need a moment to release the slot after termination.
                for _ in range(100):
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                        break
                    except psycopg.errors.ObjectInUse:
                        time.sleep(0.05)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class PostgresCluster(PostgresServer):
    """A private cluster made by ``initdb``; owns its data directory and process."""

    bindir: Path = field(default_factory=Path)
    datadir: Path = field(default_factory=Path)
    account: tuple[int, int] | None = None

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run_as(self.account, list(args), check=check)

    def start(self) -> None:
        result = self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port}",
            check=False,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"pg_ctl start failed (exit {result.returncode}): {result.stderr.strip()}\n"
                f"server log:\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is pg_ctl's ``smart``, ``fast`` or ``immediate``."""
        self._run(
            str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir),
            check=False,
        )

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def reload(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "reload", "-D", str(self.datadir), check=False)

    def set_setting(self, name: str, value: str, restart: bool = False) -> None:
        """``ALTER SYSTEM SET``, then reload (or restart for postmaster-level settings)."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        if restart:
            self.restart()
        else:
            self.reload()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def _run_as(
    account: tuple[int, int] | None, args: list[str], *, check: bool
) -> subprocess.CompletedProcess[str]:
    """Run a server binary, as the unprivileged account when we are root."""
    if account is None:
        return subprocess.run(args, check=check, capture_output=True, text=True, cwd="/")
    return subprocess.run(
        args, check=check, capture_output=True, text=True, cwd="/",
        user=account[0], group=account[1], extra_groups=[],
    )


def _initdb(bindir: Path, datadir: Path, account: tuple[int, int] | None) -> None:
    pwfile = datadir.parent / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    _chown_tree(datadir.parent, account)
    result = _run_as(
        account,
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=False,
    )
    pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresStartError(f"initdb failed: {result.stderr.strip() or result.stdout}")


@contextlib.contextmanager
def temporary_cluster(
    settings: Mapping[str, str] | None = None, bindir: Path | None = None
) -> Iterator[PostgresCluster]:
    """Create, start and finally remove a private logical-replication-ready cluster."""
    bindir = bindir or find_bindir()
    account = _server_account()
    workdir = Path(tempfile.mkdtemp(prefix="dbmazz-pg-"))
    os.chmod(workdir, 0o755)
    datadir = workdir / "data"
    cluster: PostgresCluster | None = None
    try:
        _initdb(bindir, datadir, account)
        conf = {**DEFAULT_SETTINGS, **(settings or {})}
        conf.update(
            listen_addresses="'127.0.0.1'",
            unix_socket_directories=f"'{datadir}'",
        )
        with open(datadir / "postgresql.conf", "a") as f:
            for key, value in conf.items():
                if not (value.startswith("'") or value.replace(".", "").isdigit()):
                    value = f"'{value}'"
                f.write(f"{key} = {value}\n")
        for attempt in range(5):
            cluster = PostgresCluster(
                host="127.0.0.1",
                port=free_port(),
                user=SUPERUSER,
                password=SUPERUSER_PASSWORD,
                bindir=bindir,
                datadir=datadir,
                account=account,
            )
            try:
                cluster.start()
                break
            except PostgresStartError:
                # Another process may have taken the port between probe and bind.
                if attempt == 4:
                    raise
        assert cluster is not None
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def external_server(dsn: str) -> PostgresServer:
    """Describe a server given by ``DBMAZZ_TEST_PG_DSN`` as a :class:`PostgresServer`."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return PostgresServer(
        host=str(info.get("host", "127.0.0.1")),
        port=int(info.get("port", 5432) or 5432),
        user=str(info.get("user", "postgres")),
        password=str(info.get("password", "")),
        dbname=str(info.get("dbname", "postgres")),
    )
