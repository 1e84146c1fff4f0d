"""Configuration: defaults, overrides, secrets, and one clear message per bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbmazz.cli import build_parser, main
from dbmazz.config import Config, redact_url
from dbmazz.configdoc import render
from dbmazz.errors import ConfigError

SECRET = "s3cr3t-pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Config.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"FLUSH_ROWS": "many"}, "FLUSH_ROWS: must be a whole number; got 'many'"),
        ({"FLUSH_ROWS": "0"}, "FLUSH_ROWS: Input should be greater than 0; got '0'"),
        ({"SINK": "mysql"}, "SINK: must be one of 'starrocks' or 'duckdb'; got 'mysql'"),
        ({"TABLES": 'public.a, public."b'}, "TABLES: has an unclosed double quote in "
                                           "'public.\"b'"),
        ({"FLUSH_BYTES": "-5"}, "FLUSH_BYTES: Input should be greater than 0; got '-5'"),
        ({"MAX_INFLIGHT_BYTES": "-1"}, "MAX_INFLIGHT_BYTES: Input should be greater than 0"),
        ({"SOURCE_URL": "mysql://u@h/db"}, "SOURCE_URL: must be postgresql://"),
        ({"SOURCE_URL": "just-a-word"}, "SOURCE_URL: must be a postgresql:// URL"),
        ({"STARROCKS_URL": "ftp://fe:8030"}, "STARROCKS_URL: must be http://host:8030"),
        ({"STARROCKS_URL": "http://fe:port"}, "STARROCKS_URL: has an invalid port"),
        ({"SINK": "starrocks"}, "STARROCKS_URL is required when SINK=starrocks"),
        ({"LOAD_FORMAT": "xml"}, "LOAD_FORMAT: must be one of 'json' or 'csv'"),
        ({"DELETE_MODE": "purge"}, "DELETE_MODE: must be one of 'soft' or 'hard'"),
        ({"SNAPSHOT": "sometimes"}, "SNAPSHOT: must be one of"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT: Input should be less than or equal to 65535"),
        ({"CREATE_TABLES": "maybe"}, "CREATE_TABLES: must be true or false; got 'maybe'"),
        ({"SLOT_NAME": "Bad-Slot"}, "SLOT_NAME: must be lower-case letters"),
        ({"TABLE_MAP": "a.b"}, "TABLE_MAP: entry 'a.b' is not 'schema.table:target'"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: must be one of 'text' or 'json'"),
    ],
)
def test_bad_input_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], expected: str
) -> None:
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        Config.load()
    assert expected in info.value.message
    assert len(info.value.problems) == 1


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUSH_ROWS", "x")
    monkeypatch.setenv("SINK", "y")
    monkeypatch.setenv("FLUSH_BYTES", "-1")
    with pytest.raises(ConfigError) as info:
        Config.load()
    assert {p.split(":")[0] for p in info.value.problems} == {"FLUSH_ROWS", "SINK", "FLUSH_BYTES"}


def test_missing_source_url_is_named_when_needed() -> None:
    config = Config.load()
    with pytest.raises(ConfigError, match="SOURCE_URL: required"):
        config.require_source()


def test_defaults_and_sink_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.load().sink == "duckdb"
    monkeypatch.setenv("STARROCKS_URL", "http://fe:8030/")
    config = Config.load()
    assert config.sink == "starrocks" and config.starrocks_url == "http://fe:8030"


def test_lists_maps_and_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLES", "public.a, s.b")
    monkeypatch.setenv("TABLE_MAP", "s.b:b2,public.a:a2")
    monkeypatch.setenv("FLUSH_ROWS", "10")
    config = Config.load({"flush_rows": "20"})
    assert config.tables == ["public.a", "s.b"]
    assert config.table_map == {"s.b": "b2", "public.a": "a2"}
    assert config.flush_rows == 20


def test_tables_with_commas_inside_quoted_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # Split at every comma, 'public."a,b"' was public."a and b" — tables public.a and
    # public.b, replicated instead when they exist.
    monkeypatch.setenv("TABLES", 'public."a,b", "x"",y".z,  c')
    assert Config.load().tables == ['public."a,b"', '"x"",y".z', "c"]


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FLUSH_INTERVAL_MS=250\nDELETE_MODE=hard\n")
    config = Config.load()
    assert (config.flush_interval_ms, config.delete_mode) == (250, "hard")


def test_secrets_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_URL", f"postgresql://app:{SECRET}@db:5432/shop")
    monkeypatch.setenv("STARROCKS_PASSWORD", SECRET)
    monkeypatch.setenv("GRPC_TOKEN", SECRET)
    config = Config.load()
    for text in (repr(config), str(config), str(config.public_dict())):
        assert SECRET not in text
    assert config.source_dsn.endswith("@db:5432/shop") and SECRET in config.source_dsn
    assert config.source_url_redacted == "postgresql://app:***@db:5432/shop"


def test_bad_url_error_does_not_echo_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_URL", f"mysql://app:{SECRET}@db/x")
    with pytest.raises(ConfigError) as info:
        Config.load()
    assert SECRET not in str(info.value)


def test_redact_conninfo() -> None:
    assert redact_url(f"host=db password={SECRET} dbname=x") == "host=db password=*** dbname=x"
    assert SECRET not in redact_url(f"postgresql://h/db?password={SECRET}")


def test_configuration_reference_is_current() -> None:
    docs = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert docs.read_text() == render(), "run: python -m dbmazz.configdoc > docs/configuration.md"


def test_cli_lists_subcommands_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "setup", "snapshot", "capture", "replay", "status", "pause",
                    "resume", "drain", "stop", "top", "demo"):
        assert command in out
    run_help = build_parser().parse_args(["run", "--flush-rows", "5"])
    assert run_help.cfg_flush_rows == "5"


def test_cli_config_errors_exit_2(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUSH_ROWS", "lots")
    assert main(["run"]) == 2
    assert "FLUSH_ROWS: must be a whole number" in capsys.readouterr().err
