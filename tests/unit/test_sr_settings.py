"""StarRocks sink settings from a Config, without leaking the password."""

from __future__ import annotations

import pytest

from dbmazz.config import Config
from dbmazz.sink.starrocks import StarRocksSettings, StarRocksSink


def test_from_config() -> None:
    config = Config.load(
        {
            "starrocks_url": "http://fe.example:8030/",
            "starrocks_mysql_port": 19030,
            "starrocks_db": "Analytics",
            "starrocks_user": "loader",
            "starrocks_password": "p@ss:word",
            "slot_name": "s1",
            "load_format": "csv",
            "delete_mode": "hard",
            "setup": "skip",
            "create_tables": False,
            "starrocks_unconstrained_numeric": "string",
        },
        env_file=None,
    )
    s = StarRocksSettings.from_config(config, txn_timeout_s=60)
    assert s.type_options.unconstrained_numeric == "string"
    assert (s.fe_url, s.database, s.user, s.password) == (
        "http://fe.example:8030",
        "Analytics",
        "loader",
        "p@ss:word",
    )
    assert s.mysql_address == ("fe.example", 19030)
    assert (s.slot_name, s.load_format, s.delete_mode, s.setup, s.create_tables) == (
        "s1",
        "csv",
        "hard",
        "skip",
        False,
    )
    assert s.txn_timeout_s == 60
    sink = StarRocksSink.from_config(config)
    try:
        for text in (repr(s), str(s), repr(sink)):
            assert "p@ss" not in text
    finally:
        sink.close()


def test_credentials_in_the_url_are_dropped() -> None:
    s = StarRocksSettings("http://u:secret@fe:8030", password="x")
    assert s.fe_url == "http://fe:8030" and "secret" not in repr(s)


def test_bad_url() -> None:
    with pytest.raises(ValueError, match="fe_url"):
        StarRocksSettings("fe:8030")
