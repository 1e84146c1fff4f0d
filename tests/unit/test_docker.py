"""docker/: the Dockerfile's HEALTHCHECK runs a real module that answers from a running
engine, and docker/compose.yml wires PostgreSQL, StarRocks and dbmazz with settings dbmazz
accepts. (No Docker engine runs in the test environment; see docs/docker.md.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dbmazz.api.healthcheck import ERROR_METADATA_KEY, default_address
from dbmazz.api.server import ERROR_METADATA_KEY as SERVER_ERROR_KEY
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.service import EngineService
from tests.scripted import eventually, scripted_engine

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def healthcheck_command() -> list[str]:
    """The exec-form CMD of the Dockerfile's HEALTHCHECK instruction."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", line)
    assert match, f"HEALTHCHECK must use the exec form: {line}"
    command = json.loads(match.group(1))
    assert isinstance(command, list)
    return [str(part) for part in command]


def run_healthcheck(port: int | None, *extra: str) -> subprocess.CompletedProcess[str]:
    command = healthcheck_command()
    assert command[:3] == ["python", "-m", "dbmazz.api.healthcheck"]
    env = {**os.environ, "GRPC_HOST": "0.0.0.0", "GRPC_PORT": str(port or 1)}
    return subprocess.run([sys.executable, *command[1:], *extra], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[EngineService, GrpcServer]]:
    engine, _, _ = scripted_engine(tmp_path)
    service = EngineService(builder=lambda: engine)
    server = GrpcServer(service, port=0)
    server.start()
    service.start()
    try:
        yield service, server
    finally:
        service.stop(timeout=30)
        server.stop(grace=0)


def test_healthcheck_exits_0_while_the_engine_serves(
        served: tuple[EngineService, GrpcServer]) -> None:
    service, server = served
    eventually(lambda: service.serving, "the engine to serve", 60)
    result = run_healthcheck(server.port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_healthcheck_exits_1_with_the_error_when_the_engine_failed(tmp_path: Path) -> None:
    engine, script, _ = scripted_engine(tmp_path, broken=True)
    service = EngineService(builder=lambda: engine)
    server = GrpcServer(service, port=0)
    server.start()
    service.start()
    try:
        eventually(lambda: service.serving, "the engine to serve", 60)
        script.insert(2)
        eventually(lambda: service.failed, "the load failure to stop the engine", 60)
        result = run_healthcheck(server.port)
    finally:
        service.stop(timeout=30)
        server.stop(grace=0)
    assert result.returncode == 1
    assert result.stderr.startswith("NOT_SERVING: ")
    assert "disk full" in result.stderr and "free space" in result.stderr


def test_healthcheck_exits_2_when_nothing_listens() -> None:
    from dbmazz.testing.postgres import free_port

    result = run_healthcheck(free_port(), "--timeout", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("UNREACHABLE: 127.0.0.1:")


def test_healthcheck_address_and_error_key() -> None:
    assert ERROR_METADATA_KEY == SERVER_ERROR_KEY
    assert default_address({}) == "127.0.0.1:50051"
    assert default_address({"GRPC_HOST": "0.0.0.0", "GRPC_PORT": "6000"}) == "127.0.0.1:6000"
    assert default_address({"GRPC_HOST": "10.1.2.3"}) == "10.1.2.3:50051"


# ------------------------------------------------------------------ compose.yml

def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith(("[", '"')):
        return json.loads(text)
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def parse_yaml_subset(text: str) -> Any:
    """Block mappings, block sequences of scalars, flow sequences in JSON syntax and
    quoted or plain scalars: the YAML that docker/compose.yml is written in (PyYAML is not
    a dependency). Anything else fails loudly."""
    lines = [(len(raw) - len(raw.lstrip(" ")), raw.strip())
             for raw in (_strip_comment(r).rstrip() for r in text.splitlines()) if raw.strip()]

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                items.append(_scalar(lines[i][1][2:]))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent:
            key, sep, rest = lines[i][1].partition(":")
            assert sep and not key.startswith("- "), f"unsupported YAML: {lines[i][1]}"
            key = str(_scalar(key))
            if rest.strip():
                mapping[key] = _scalar(rest)
                i += 1
            elif i + 1 < len(lines) and lines[i + 1][0] > indent:
                mapping[key], i = block(i + 1, lines[i + 1][0])
            elif i + 1 < len(lines) and lines[i + 1][0] == indent and \
                    lines[i + 1][1].startswith("- "):
                mapping[key], i = block(i + 1, indent)
            else:
                mapping[key] = None
                i += 1
        return mapping, i

    value, end = block(0, 0)
    assert end == len(lines), f"unparsed YAML from: {lines[end][1]}"
    return value


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_wires_postgres_starrocks_and_dbmazz() -> None:
    compose = parse_yaml_subset((DOCKER / "compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "starrocks", "dbmazz"}

    postgres = services["postgres"]
    assert "wal_level=logical" in postgres["command"]
    init = [v for v in postgres["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro")]
    assert init and (DOCKER / init[0].split(":")[0]).is_dir()
    assert services["starrocks"]["image"].startswith("starrocks/allin1-ubuntu:")

    dbmazz = services["dbmazz"]
    assert (DOCKER.parent / dbmazz["build"]["context"].replace("..", ".") /
            dbmazz["build"]["dockerfile"]).is_file()
    assert dbmazz["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert dbmazz["depends_on"]["starrocks"]["condition"] == "service_healthy"
    # Every variable is a dbmazz setting, and together they are a valid configuration.
    env = {k: _interpolate(str(v)) for k, v in dbmazz["environment"].items()}
    known = {name.upper() for name in Config.model_fields}
    assert set(env) <= known, set(env) - known
    config = Config.load({k.lower(): v for k, v in env.items()}, env_file=None)
    assert config.sink == "starrocks" and config.grpc_port == 50051
    assert config.tables and config.source_url is not None
    # Published ports stay on loopback.
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def compose_commands() -> list[list[str]]:
    """The Compose implementations installed here: v2 (a docker CLI plugin) and v1."""
    found = []
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


@pytest.mark.skipif(not compose_commands(), reason="no Docker Compose installed")
def test_compose_file_is_valid_for_every_installed_compose() -> None:
    """`compose config` resolves the file (schema, interpolation, build paths) without a
    Docker engine."""
    for command in compose_commands():
        result = subprocess.run([*command, "-f", str(DOCKER / "compose.yml"), "config"],
                                capture_output=True, text=True, cwd=DOCKER.parent)
        assert result.returncode == 0, (command, result.stderr)
        assert "dbmazz" in result.stdout and "service_healthy" in result.stdout


def test_yaml_subset_parser_reads_what_it_claims() -> None:
    parsed = parse_yaml_subset(
        "a: 1\nb:\n  - x\n  - 'y z'\nc:\n  d: \"q # not a comment\"  # comment\n"
        "  e: [\"f\", \"g\"]\nh:\n- i\n")
    assert parsed == {"a": "1", "b": ["x", "y z"], "c": {"d": "q # not a comment",
                                                         "e": ["f", "g"]}, "h": ["i"]}
