"""Security: credentials never leak (logs, status, metrics, exceptions); the control plane
stays on loopback unless protected by a token and TLS.

Identifier quoting is covered end to end by
``test_bad_input.py::test_names_that_need_quoting_replicate_end_to_end`` (hostile table,
column and publication names on both targets).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from dbmazz.api.runtime import check_exposure, start_control_plane
from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.service import EngineService, error_snapshot
from dbmazz.errors import ConfigError, DbmazzError
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import mark
from tests.reliability.helpers import checkpoint, poll

MARK = "XYZZY"  # every secret below contains it: one grep finds any of them
PG_SECRET = "PgS3cret-XYZZY-pg"
SR_SECRET = "SrS3cret-XYZZY-sr"
TOKEN = "TokS3cret-XYZZY-tok"
WRONG = "Wr0ng-XYZZY-guess"
SLOT = "dbmazz_sec"


@dataclass
class Setup:
    db: Database
    sr: StarRocksEmulator
    role: str
    tmp: Path

    def dsn(self, password: str = PG_SECRET, port: int | None = None) -> str:
        server = self.db.server
        return (f"postgresql://{self.role}:{password}@{server.host}:{port or server.port}/"
                f"{self.db.name}")

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SOURCE_URL": self.dsn(), "TABLES": "public.t",
                "SLOT_NAME": SLOT, "PUBLICATION_NAME": SLOT, "SINK": "starrocks",
                "STARROCKS_URL": self.sr.url, "STARROCKS_MYSQL_PORT": str(self.sr.mysql_port),
                "STARROCKS_PASSWORD": SR_SECRET, "STARROCKS_DB": "sec", "GRPC_PORT": "0",
                "LOG_LEVEL": "DEBUG", "FLUSH_INTERVAL_MS": "100", "SNAPSHOT": "never",
                **extra}


@pytest.fixture
def setup(pg_db: Database, tmp_path: Path) -> Iterator[Setup]:
    role = f"leaky_{pg_db.name}"
    pg_db.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(PG_SECRET)))
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    with StarRocksEmulator(password=SR_SECRET) as sr:
        yield Setup(pg_db, sr, role, tmp_path)
    with contextlib.suppress(Exception):
        pg_db.server.drop_database(pg_db.name)  # releases the role's slot
    with contextlib.suppress(Exception):
        pg_db.server.execute(f'DROP ROLE IF EXISTS "{role}"')


def _run(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-m", "dbmazz", *args], env=env,
                            capture_output=True, text=True, timeout=timeout)
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def _no_secret(what: str, text: str) -> None:
    assert MARK not in text, f"a credential leaked into {what}:\n{text[-3000:]}"


def test_credentials_never_appear_in_output_status_metrics_or_errors(setup: Setup) -> None:
    seen: dict[str, str] = {}
    # 1. A healthy run at DEBUG: logs, `dbmazz status --json`, Prometheus text.
    grpc_port, metrics_port = free_port(), free_port()
    env = setup.env(GRPC_PORT=str(grpc_port), METRICS_PORT=str(metrics_port),
                    GRPC_TOKEN=TOKEN)
    log = setup.tmp / "run.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=env,
                                stdout=stderr, stderr=stderr)
    try:
        poll(lambda: setup.db.query("SELECT count(*) FROM pg_replication_slots "
                                    "WHERE slot_name = %s AND active", (SLOT,)) == [(1,)],
             "dbmazz to stream", abort=lambda: None if proc.poll() is None else log.read_text())
        setup.db.execute("INSERT INTO public.t VALUES (1, 'a'), (2, 'b')")
        marker = mark(setup.db)
        poll(lambda: checkpoint(setup.db, SLOT) > marker, "the rows to load",
             abort=lambda: None if proc.poll() is None else log.read_text())
        seen["status --json"] = _run(env, "status", "--json", "--address",
                                     f"127.0.0.1:{grpc_port}")
        assert '"state": "RUNNING"' in seen["status --json"], seen["status --json"]
        seen["status"] = _run(env, "status", "--address", f"127.0.0.1:{grpc_port}")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=30) as reply:
            seen["metrics"] = reply.read().decode()
        assert "dbmazz_confirmed_lsn" in seen["metrics"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    seen["healthy run log"] = log.read_text()
    assert proc.returncode == 0, seen["healthy run log"]
    # 2. Failing runs: every credential wrong in turn, or put where it does not belong.
    closed = free_port()
    for name, extra in {
        "wrong PostgreSQL password": {"SOURCE_URL": setup.dsn(WRONG)},
        "PostgreSQL unreachable": {"SOURCE_URL": setup.dsn(port=closed)},
        "conninfo with password": {"SOURCE_URL": f"host=127.0.0.1 port={closed} "
                                                 f"dbname=x user=u password={PG_SECRET}"},
        "malformed URL with password": {"SOURCE_URL": f"mysql://u:{PG_SECRET}@h/db"},
        "wrong StarRocks password": {"STARROCKS_PASSWORD": WRONG},
        "StarRocks URL with credentials": {
            "STARROCKS_URL": f"http://root:{SR_SECRET}@127.0.0.1:{setup.sr.fe_http_port}"},
        "exposed gRPC": {"GRPC_PORT": str(free_port()), "GRPC_HOST": "0.0.0.0",
                         "GRPC_TOKEN": TOKEN},
    }.items():
        seen[name] = _run(setup.env(**extra), "run")
        assert not seen[name].startswith("exit 0"), seen[name]
    # 3. The exceptions themselves (what an embedding program or a traceback shows).
    base: dict[str, Any] = {"tables": "public.t", "slot_name": SLOT, "publication_name": SLOT,
                            "sink": "starrocks", "starrocks_url": setup.sr.url,
                            "starrocks_mysql_port": setup.sr.mysql_port, "grpc_port": 0}
    for name, overrides in {
        "exception: wrong PostgreSQL password": {"source_url": setup.dsn(WRONG),
                                                 "starrocks_password": SR_SECRET},
        "exception: wrong StarRocks password": {"source_url": setup.dsn(),
                                                "starrocks_password": WRONG},
    }.items():
        config = Config.load({**base, **overrides}, env_file=None)
        seen[f"{name} (config repr)"] = repr(config) + str(config.public_dict())
        with pytest.raises(DbmazzError) as info:
            build_live_engine(config)
        exc = info.value
        snapshot = error_snapshot(exc)
        seen[name] = "\n".join([str(exc), repr(exc), repr(exc.args), exc.message,
                                exc.hint or "", snapshot.text])
    for what, text in seen.items():
        _no_secret(what, text)
    # The failures were reported (not silently swallowed) with their causes.
    assert "rejected the credentials" in seen["wrong PostgreSQL password"]
    assert "Access denied" in seen["wrong StarRocks password"]
    assert "must not carry credentials" in seen["StarRocks URL with credentials"]
    assert "GRPC_TLS_CERT and GRPC_TLS_KEY" in seen["exposed gRPC"]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp shows them) listening on ``port``."""
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].rsplit(":", 1)
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.append(address)
    return found


#: 127.0.0.1 as /proc/net/tcp and tcp6 (v4-mapped ::ffff:127.0.0.1) print it.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def test_control_plane_binds_loopback_by_default(tmp_path: Path) -> None:
    config = Config.load({"grpc_port": free_port(), "metrics_port": free_port(),
                          "sink": "duckdb"}, env_file=None)
    assert config.grpc_host == "127.0.0.1"
    service = EngineService(config)  # never started: only its control plane is
    plane = start_control_plane(service, config)
    try:
        for port in (config.grpc_port, config.metrics_port):
            addresses = _listening(port)
            assert addresses and set(addresses) <= LOOPBACK, addresses
    finally:
        plane.stop(grace=0)


@pytest.mark.parametrize(("host", "token", "tls", "refused"), [
    ("127.0.0.1", False, False, None),
    ("localhost", False, False, None),
    ("::1", False, False, None),
    ("0.0.0.0", False, False, "GRPC_TOKEN and GRPC_TLS_CERT and GRPC_TLS_KEY"),
    ("10.1.2.3", True, False, "GRPC_TLS_CERT and GRPC_TLS_KEY"),
    ("engine.internal", False, True, "GRPC_TOKEN"),
    ("::", True, True, None),
])
def test_an_exposed_control_plane_needs_a_token_and_tls(
        host: str, token: bool, tls: bool, refused: str | None) -> None:
    values: dict[str, Any] = {"grpc_host": host, "grpc_port": 50051, "sink": "duckdb"}
    if token:
        values["grpc_token"] = TOKEN
    if tls:
        values.update(grpc_tls_cert="cert.pem", grpc_tls_key="key.pem")
    config = Config.load(values, env_file=None)
    if refused is None:
        check_exposure(config)
        return
    with pytest.raises(ConfigError) as info:
        check_exposure(config)
    assert info.value.problems == [
        f"GRPC_HOST: {host} exposes the gRPC control plane beyond this machine; set "
        f"{refused} (a bearer token and TLS), or keep GRPC_HOST=127.0.0.1 "
        "(GRPC_ALLOW_INSECURE=true accepts the risk, e.g. in a container whose port is "
        "published only where it is safe)"]
    assert TOKEN not in str(info.value)
    # An explicit opt-out (the container image uses it) is honoured.
    check_exposure(Config.load({**values, "grpc_allow_insecure": True}, env_file=None))
