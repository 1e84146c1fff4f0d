"""Everything the StarRocks sink and its setup need, from a Config or given explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from dbmazz.retry import RetryPolicy
from dbmazz.sink.starrocks.ddl import NumericMode, TypeOptions

if TYPE_CHECKING:
    from dbmazz.config import Config


@dataclass(frozen=True)
class StarRocksSettings:
    #: FE HTTP address, e.g. ``http://fe:8030``; its host also serves MySQL.
    fe_url: str
    database: str = "dbmazz"
    user: str = "root"
    password: str = field(default="", repr=False)
    mysql_port: int = 9030
    #: Defaults to the host of ``fe_url``.
    mysql_host: str | None = None
    #: Part of every label, so two pipelines loading one database never collide.
    slot_name: str = "dbmazz_slot"
    load_format: Literal["json", "csv"] = "csv"
    delete_mode: Literal["soft", "hard"] = "soft"
    #: Columns dropped at the source: "fill_null" writes NULL into them from then on.
    dropped_columns: Literal["keep", "fill_null"] = "fill_null"
    setup: Literal["auto", "skip"] = "auto"
    create_tables: bool = True
    table_properties: Mapping[str, str] = field(default_factory=lambda: {"replication_num": "1"})
    unconstrained_numeric: NumericMode = "decimal"
    connect_timeout: float = 10.0
    #: Whole-request limit for one HTTP exchange (a load of one batch).
    request_timeout: float = 600.0
    #: ``timeout`` of transaction-interface loads (seconds): how long a split source
    #: transaction may stay open in StarRocks between its first and last part.
    txn_timeout_s: int = 3600
    alter_timeout: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Characters of a load's error log kept in error messages.
    error_log_limit: int = 4000
    #: "table": rows StarRocks rejects go to ``dbmazz_rejected`` (:mod:`.rejected`).
    rejected_rows: Literal["stop", "table"] = "stop"

    def __post_init__(self) -> None:
        parts = urlsplit(self.fe_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"fe_url must be http://host:port, got {self.fe_url!r}")
        if parts.username or parts.password:
            # Credentials travel only as Basic auth, never inside URLs that end up in logs.
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            object.__setattr__(self, "fe_url", parts._replace(netloc=netloc).geturl())
        object.__setattr__(self, "fe_url", self.fe_url.rstrip("/"))

    @property
    def fe_host(self) -> str:
        return urlsplit(self.fe_url).hostname or "127.0.0.1"

    @property
    def mysql_address(self) -> tuple[str, int]:
        return (self.mysql_host or self.fe_host, self.mysql_port)

    @property
    def type_options(self) -> TypeOptions:
        return TypeOptions(unconstrained_numeric=self.unconstrained_numeric)

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> StarRocksSettings:
        if not config.starrocks_url:
            raise ValueError("STARROCKS_URL is not set")
        values: dict[str, object] = {
            "fe_url": config.starrocks_url,
            "database": config.starrocks_db,
            "user": config.starrocks_user,
            "password": config.starrocks_password.get_secret_value(),
            "mysql_port": config.starrocks_mysql_port,
            "slot_name": config.slot_name,
            "load_format": config.load_format,
            "delete_mode": config.delete_mode,
            "dropped_columns": config.dropped_columns,
            "setup": config.setup,
            "create_tables": config.create_tables,
            "rejected_rows": config.rejected_rows,
            "unconstrained_numeric": config.starrocks_unconstrained_numeric,
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
