"""Client commands find the engine the way `dbmazz run` serves: GRPC_HOST/GRPC_PORT (and
GRPC_TOKEN) from the environment or `.env`, `--address` overriding."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dbmazz
from dbmazz.api.client import DEFAULT_ADDRESS, EngineUnreachable
from dbmazz.config import Config, ControlPlaneSettings
from dbmazz.errors import ConfigError
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import free_port
from tests.scripted import eventually

DEFAULT_PORT = int(DEFAULT_ADDRESS.rsplit(":", 1)[1])

TOKEN = "client-address-token"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in Config.model_fields}


@pytest.fixture
def engine_dir(pg_db: Database, tmp_path: Path) -> Iterator[tuple[Path, int, Database]]:
    """`dbmazz run` configured only by a `.env` file in its working directory."""
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    port = free_port()
    while port == DEFAULT_PORT:  # the test expects nothing to answer at the default port
        port = free_port()
    (tmp_path / ".env").write_text(
        f"SOURCE_URL={pg_db.dsn}\nTABLES=public.t\nSINK=duckdb\n"
        f"DUCKDB_PATH={tmp_path / 't.duckdb'}\nSLOT_NAME=dbmazz_addr\n"
        f"PUBLICATION_NAME=dbmazz_addr\nGRPC_PORT={port}\nGRPC_TOKEN={TOKEN}\n"
        "HEARTBEAT_INTERVAL_S=0\n")
    log = tmp_path / "run.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], cwd=tmp_path,
                                env=_clean_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield tmp_path, port, pg_db
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _dbmazz(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbmazz", *args], cwd=cwd,
                          env={**_clean_env(), **env}, capture_output=True, text=True,
                          timeout=120)


def test_clients_use_env_and_dotenv_and_address_overrides(
        engine_dir: tuple[Path, int, Database], tmp_path_factory: pytest.TempPathFactory
) -> None:
    home, port, db = engine_dir
    elsewhere = tmp_path_factory.mktemp("elsewhere")

    def running() -> bool:
        result = _dbmazz("status", "--json", cwd=home)
        return result.returncode == 0 and '"state": "RUNNING"' in result.stdout
    eventually(running, "the engine, found through .env", 120)

    # From .env (the same file `run` read): every client command.
    for command in (["pause"], ["resume"], ["top", "--once"], ["status"]):
        result = _dbmazz(*command, cwd=home)
        assert result.returncode == 0, (command, result.stderr)
    assert f"127.0.0.1:{port}" in _dbmazz("status", cwd=home).stdout
    result = _dbmazz("snapshot", "--table", "public.t", cwd=home)
    assert result.returncode == 0, result.stderr
    # From the environment, elsewhere (no .env there).
    env = {"GRPC_PORT": str(port), "GRPC_TOKEN": TOKEN}
    assert _dbmazz("status", cwd=elsewhere, **env).returncode == 0
    # Without the settings nothing answers at the default port; --address overrides all.
    wrong = {"GRPC_PORT": str(free_port()), "GRPC_TOKEN": TOKEN}
    missed = _dbmazz("status", cwd=elsewhere, **wrong)
    assert missed.returncode == 1 and f"no dbmazz engine at 127.0.0.1:{wrong['GRPC_PORT']}" \
        in missed.stderr, missed.stderr
    assert _dbmazz("status", "--address", f"127.0.0.1:{port}", cwd=elsewhere,
                   **wrong).returncode == 0
    off = _dbmazz("status", cwd=elsewhere, GRPC_PORT="0")
    assert off.returncode == 2 and "GRPC_PORT: 0 means the engine serves no control plane" \
        in off.stderr, off.stderr
    # dbmazz.connect() reads the same settings.
    cwd = os.getcwd()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.lower().startswith("grpc_")}
    try:
        os.chdir(home)
        with dbmazz.connect() as client:
            assert client.address == f"127.0.0.1:{port}"
            assert client.status().slot == "dbmazz_addr"
        os.chdir(elsewhere)
        with dbmazz.connect() as client, pytest.raises(EngineUnreachable):
            client.status()  # 127.0.0.1:50051: no engine there
        os.environ["GRPC_PORT"] = str(port)
        os.environ["GRPC_TOKEN"] = TOKEN
        with dbmazz.connect() as client:
            assert client.status().slot == "dbmazz_addr"
    finally:
        os.chdir(cwd)
        for key in ("GRPC_PORT", "GRPC_TOKEN"):
            os.environ.pop(key, None)
        os.environ.update(saved)
    assert _dbmazz("drain", cwd=home).returncode == 0
    _ = db


def test_control_plane_settings_share_configs_fields(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.lower().startswith("grpc_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("GRPC_HOST=0.0.0.0\nGRPC_PORT=6001\n")
    settings = ControlPlaneSettings.load()
    config = Config.load()
    assert (settings.grpc_host, settings.grpc_port) == (config.grpc_host, config.grpc_port)
    assert settings.address == "127.0.0.1:6001"
    monkeypatch.setenv("GRPC_PORT", "6002")  # the environment wins over .env, as for run
    assert ControlPlaneSettings.load().address == "127.0.0.1:6002" == \
        f"127.0.0.1:{Config.load().grpc_port}"
    monkeypatch.setenv("GRPC_PORT", "70000")
    with pytest.raises(ConfigError, match="GRPC_PORT"):
        ControlPlaneSettings.load()
