"""A private, throwaway PostgreSQL cluster for tests, benchmarks and the demo.

The cluster is created with ``initdb`` in a temporary directory, listens on a free port on
127.0.0.1 only, runs with ``wal_level=logical`` and enough replication slots and senders for
parallel tests, and is removed when the context exits (also when the body raised). When the
current user is root, the server runs as an unprivileged account (``postgres`` or ``nobody``)
because PostgreSQL refuses to run as root.

Set ``DBMAZZ_TEST_PG_DSN`` to run tests against an existing server instead; it must have
``wal_level=logical`` and a role that may create databases and replicate.

``PG_BINDIR`` selects the server binaries (e.g. a build from
:mod:`dbmazz.testing.pgbinaries` for the version matrix). ``temporary_cluster(tls=True)``
starts the server with a throwaway CA and a server certificate for ``localhost`` /
``127.0.0.1`` (``sslmode=verify-full`` works with ``sslrootcert=cluster.tls.ca_file``);
:func:`temporary_standby` adds a hot standby of a cluster (for logical decoding from a
standby, PostgreSQL 16+).

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
    _major: int | None = field(default=None, init=False, repr=False, compare=False)

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

    def version_num(self) -> int:
        """``server_version_num`` (e.g. 170004)."""
        with self.connect() as conn:
            return int(conn.info.server_version)

    @property
    def major(self) -> int:
        """The server's major version (14, 15, ...); asked once."""
        if self._major is None:
            self._major = self.version_num() // 10000
        return self._major

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
                    except psycopg.errors.UndefinedObject:
                        break  # a temporary slot, gone with its terminated session
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class PostgresCluster(PostgresServer):
    """A private cluster made by ``initdb``; owns its data directory and process."""

    bindir: Path = field(default_factory=Path)
    datadir: Path = field(default_factory=Path)
    account: tuple[int, int] | None = None
    #: The certificates when started with ``tls=True``.
    tls: TlsFiles | None = None

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


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and the server certificate it signed (for localhost/127.0.0.1)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path, account: tuple[int, int] | None = None) -> TlsFiles:
    """A CA and a server certificate for ``localhost`` and ``127.0.0.1`` (openssl CLI).

    The key is readable by the server's account only, as PostgreSQL demands.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PostgresStartError(
            "openssl is needed to make the test certificates; install it "
            "(Debian: `apt-get install -y openssl`)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "basicConstraints = CA:FALSE\n"
        "keyUsage = digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
    )
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=dbmazz test CA", "-keyout", str(ca_key), "-out", str(ca_cert)],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)],
    ]
    for step in steps:
        result = subprocess.run([openssl, *step], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PostgresStartError(f"openssl {step[0]} failed: {result.stderr.strip()}")
    os.chmod(key, 0o600)
    for path in (ca_cert, cert):
        os.chmod(path, 0o644)
    if account is not None:
        os.chown(key, *account)
    return TlsFiles(ca_file=ca_cert, cert_file=cert, key_file=key)


def _write_conf(datadir: Path, conf: Mapping[str, str]) -> None:
    """Append settings to postgresql.conf (a later line wins over an earlier one)."""
    with open(datadir / "postgresql.conf", "a") as f:
        for key, value in conf.items():
            if not (value.startswith("'") or value.replace(".", "").isdigit()):
                value = f"'{value}'"
            f.write(f"{key} = {value}\n")


def _start_on_free_port(
    bindir: Path, datadir: Path, account: tuple[int, int] | None, tls: TlsFiles | None
) -> PostgresCluster:
    for attempt in range(5):
        cluster = PostgresCluster(
            host="127.0.0.1",
            port=free_port(),
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            bindir=bindir,
            datadir=datadir,
            account=account,
            tls=tls,
        )
        try:
            cluster.start()
            return cluster
        except PostgresStartError:
            # Another process may have taken the port between probe and bind.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def temporary_cluster(
    settings: Mapping[str, str] | None = None,
    bindir: Path | None = None,
    *,
    tls: bool = False,
) -> Iterator[PostgresCluster]:
    """Create, start and finally remove a private logical-replication-ready cluster.

    ``tls``: serve SSL with a throwaway CA's certificate (``cluster.tls``); plain
    connections are still accepted, so a test can compare both.
    """
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
        tls_files: TlsFiles | None = None
        if tls:
            tls_files = make_tls_files(workdir / "tls", account)
            conf.update(
                ssl="on",
                ssl_cert_file=f"'{tls_files.cert_file}'",
                ssl_key_file=f"'{tls_files.key_file}'",
                ssl_ca_file=f"'{tls_files.ca_file}'",
            )
        _write_conf(datadir, conf)
        cluster = _start_on_free_port(bindir, datadir, account, tls_files)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


STANDBY_SLOT = "dbmazz_test_standby"


@contextlib.contextmanager
def temporary_standby(primary: PostgresCluster) -> Iterator[PostgresCluster]:
    """A hot standby of ``primary`` (streaming replication through a physical slot).

    The standby is a copy of the primary's data directory taken while the primary is
    briefly stopped (a cold base backup: the npm server builds of the version matrix ship
    no ``pg_basebackup``, and a cold copy needs no tool of the primary's exact version),
    configured as ``pg_basebackup -R`` would: ``standby.signal`` and ``primary_conninfo``.
    It runs with ``hot_standby=on`` and ``hot_standby_feedback=on``; the primary must have
    ``wal_level=logical`` for logical decoding on the standby (PostgreSQL 16+).
    Returns once the standby streams from the primary.
    """
    with primary.connect() as conn:
        conn.execute(
            "SELECT pg_create_physical_replication_slot(%s, true) "
            "WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
            (STANDBY_SLOT, STANDBY_SLOT),
        )
    workdir = Path(tempfile.mkdtemp(prefix="dbmazz-pg-standby-"))
    os.chmod(workdir, 0o755)
    datadir = workdir / "data"
    standby: PostgresCluster | None = None
    try:
        primary.stop("fast")
        try:
            shutil.copytree(
                primary.datadir, datadir, symlinks=True,
                ignore=shutil.ignore_patterns("postmaster.pid", "postmaster.opts",
                                              "server.log"),
            )
        finally:
            primary.start()
        os.chmod(datadir, 0o700)
        # The slot the primary keeps for this standby is not the standby's own.
        shutil.rmtree(datadir / "pg_replslot", ignore_errors=True)
        (datadir / "pg_replslot").mkdir()
        (datadir / "standby.signal").touch()
        conninfo = (
            f"host={primary.host} port={primary.port} user={primary.user} "
            f"password={primary.password} application_name=dbmazz_standby"
        )
        _write_conf(datadir, {
            "unix_socket_directories": f"'{datadir}'",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "primary_conninfo": f"'{conninfo}'",
            "primary_slot_name": f"'{STANDBY_SLOT}'",
        })
        _chown_tree(workdir, primary.account)
        standby = _start_on_free_port(primary.bindir, datadir, primary.account, primary.tls)
        deadline = time.monotonic() + 60
        with primary.connect() as conn:
            while not conn.execute(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'dbmazz_standby' "
                "AND state = 'streaming'"
            ).fetchall():
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"the standby did not start streaming within 60 s:\n{standby.log_tail()}"
                    )
                time.sleep(0.05)
        yield standby
    finally:
        if standby is not None:
            standby.stop("immediate")
        with contextlib.suppress(psycopg.Error), primary.connect() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NULL",
                (STANDBY_SLOT,),
            )
        shutil.rmtree(workdir, ignore_errors=True)


def wait_for_replay(
    primary: PostgresServer, standby: PostgresServer, timeout_s: float = 30
) -> None:
    """Wait until the standby has replayed the primary's current WAL position."""
    with primary.connect() as conn:
        (target,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone() or (None,)
    deadline = time.monotonic() + timeout_s
    with standby.connect() as conn:
        while True:
            (done,) = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)
            ).fetchone() or (False,)
            if done:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not replay up to {target} in {timeout_s} s")
            time.sleep(0.02)


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
