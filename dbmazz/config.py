"""Configuration: environment variables, a ``.env`` file, and CLI flag overrides.

Every field is read from the upper-case environment variable of the same name (DESIGN.md
§7). Invalid input fails at start with one message per problem naming the variable and the
accepted values (:class:`dbmazz.errors.ConfigError`). Secrets (passwords, tokens, the
password inside ``SOURCE_URL``) are :class:`pydantic.SecretStr` and never printed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dbmazz.errors import ConfigError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIB = 1 << 20


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` → ``postgresql://u:***@h/db``; conninfo too."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            parts = parts._replace(netloc=netloc)
        query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit(parts._replace(query=query))
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", url)


def _split_outside_quotes(value: str) -> list[str]:
    """``'a, "b,c".d'`` → ``['a', ' "b,c".d']``: commas inside double quotes (a quoted name,
    ``""`` for a quote in it) are part of the name."""
    parts: list[str] = []
    start, quoted = 0, False
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(value[start:i])
            start = i + 1
    if quoted:
        raise ValueError(f"has an unclosed double quote in {value[start:].strip()!r}; "
                         'quote a name as "My Table" and a quote in it as ""')
    parts.append(value[start:])
    return parts


class Config(BaseSettings):
    """All settings of a dbmazz process. Field ``x_y`` is environment variable ``X_Y``."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- source -------------------------------------------------------------------------
    source_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL connection URL (postgresql://user:password@host:port/db).",
    )
    primary_url: SecretStr | None = Field(
        default=None,
        description="When SOURCE_URL is a hot standby (PostgreSQL 16+): the primary's URL. "
        "Setup (publication, replica identity), checkpoints, heartbeats and snapshot progress "
        "are written there; the slot and the stream stay on the standby.",
    )
    slot_name: str = Field(default="dbmazz_slot", description="Logical replication slot name.")
    publication_name: str = Field(default="dbmazz_pub", description="Publication name.")
    slot_failover: bool = Field(
        default=False,
        description="Create the slot as a failover slot (PostgreSQL 17+), synchronized to "
        "standbys with sync_replication_slots=on so it survives a failover; an existing slot "
        "is switched to failover by setup.",
    )
    tables: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tables to replicate, comma-separated: 'schema.table' or 'table' (public).",
    )
    replica_identity: Literal["full", "default", "keep"] = Field(
        default="full",
        description="REPLICA IDENTITY set on source tables (full gives old values for TOAST).",
    )
    replication_reader: Literal["auto", "socket", "libpq"] = Field(
        default="auto",
        description="How the replication stream is read: socket (the socket itself, many "
        "messages per read: the reader takes ~2.5x less CPU; over TLS dbmazz's own TLS "
        "connection, status reader `tls`, refused with the reason where it cannot reproduce "
        "libpq's connection), libpq (one message per libpq call), auto (socket, or over TLS "
        "the own TLS connection with a fallback to libpq, reason logged, where it cannot "
        "reproduce libpq's; libpq on GSS encryption). libpq for a GSS-encrypted "
        "connection that auto cannot recognize. See operations.md, TLS.",
    )

    pgoutput_protocol: Literal["auto", "1", "2", "3", "4"] = Field(
        default="auto",
        description="pgoutput protocol version: auto (the highest the server speaks: 2 on "
        "PostgreSQL 14, 3 on 15, 4 on 16+) or 1-4. 2 and higher stream large transactions "
        "while they run (spooled until they commit; 4 as streaming = parallel); 1 receives "
        "them whole at commit.",
    )

    # --- sink ---------------------------------------------------------------------------
    sink: Literal["starrocks", "duckdb"] | None = Field(
        default=None,
        description="Target: starrocks or duckdb (default: starrocks when STARROCKS_URL is set).",
    )
    starrocks_url: str | None = Field(default=None, description="StarRocks FE HTTP URL.")
    starrocks_mysql_port: int = Field(default=9030, ge=1, le=65535, description="FE MySQL port.")
    starrocks_db: str = Field(default="dbmazz", description="StarRocks database.")
    starrocks_user: str = Field(default="root", description="StarRocks user.")
    starrocks_password: SecretStr = Field(default=SecretStr(""), description="StarRocks password.")
    starrocks_unconstrained_numeric: Literal["decimal", "string"] = Field(
        default="decimal",
        description="Target type of a `numeric` column without precision: decimal "
        "(DECIMAL(38,9): NaN, ±Infinity, more than 29 integer digits or 9 decimals do not "
        "fit) or string (VARCHAR: the exact text, always).",
    )
    duckdb_path: str = Field(default="dbmazz.duckdb", description="DuckDB database file.")
    table_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Target renames: 'schema.table:target,...'.",
    )
    setup: Literal["auto", "skip"] = Field(
        default="auto",
        description="auto: create and change the target's tables as the source needs; skip: "
        "the target's tables must exist already (checked, never created or altered). The "
        "source's replica identity, publication and slot are prepared either way "
        "(REPLICA_IDENTITY=keep leaves the identity alone).",
    )
    setup_lock_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Setup changes each table's REPLICA IDENTITY in its own transaction and "
        "waits at most this long for the table's lock; contention is retried with backoff.",
    )
    create_tables: bool = Field(default=True, description="Create missing target tables.")
    load_format: Literal["json", "csv"] = Field(
        default="csv",
        description="Stream Load format. CSV is lighter on both ends; a batch whose text "
        "could be misread as CSV goes as JSON.",
    )
    delete_mode: Literal["soft", "hard"] = Field(default="soft", description="Delete handling.")
    dropped_columns: Literal["keep", "fill_null"] = Field(
        default="fill_null",
        description="Columns dropped at the source: keep old values or fill NULL.",
    )
    rejected_rows: Literal["stop", "table"] = Field(
        default="stop",
        description="Rows the target rejects (StarRocks strict mode: out of range, too long, "
        "bad JSON; DuckDB conversion or constraint errors): `stop` fails the load and stops "
        "the pipeline with the rejected row in the error (nothing lost); `table` records them "
        "in the target table `dbmazz_rejected`, applies the rest and moves on "
        "(see docs/operations.md).",
    )

    # --- batching -----------------------------------------------------------------------
    flush_rows: int = Field(default=50_000, gt=0, description="Flush a batch at this many rows.")
    flush_bytes: int = Field(default=32 * _MIB, gt=0, description="Flush at this many bytes.")
    flush_interval_ms: int = Field(
        default=1000, gt=0, description="Flush at least this often (the rest of a backlog "
        "read at full batches goes as soon as the source has nothing more).")
    max_inflight_bytes: int = Field(
        default=64 * _MIB, gt=0, description="Stop reading above this many in-flight bytes "
        "(a quarter of it also bounds the memory of a streamed transaction held until its "
        "commit; the rest spills to a temporary file)."
    )
    heartbeat_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="Write a heartbeat into the source WAL after this many seconds without "
        "a newly loaded change, so the slot advances while the tables are idle (0 = off).",
    )

    # --- snapshot -----------------------------------------------------------------------
    snapshot: Literal["never", "initial", "initial_only"] = Field(
        default="initial",
        description="Initial snapshot of existing rows: initial (then stream), initial_only "
        "(then exit), never.",
    )
    snapshot_workers: int = Field(default=2, ge=1, le=64, description="Snapshot connections.")

    # --- verify -------------------------------------------------------------------------
    verify_max_rows_per_s: int = Field(
        default=200_000,
        ge=0,
        description="`dbmazz verify`: source rows read per second at most (0 = unlimited).",
    )
    verify_statement_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="`dbmazz verify`: statement timeout of its source reads (0 = none).",
    )
    verify_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="`dbmazz verify`: how long to wait for a running engine to load every "
        "change before the verify's snapshot.",
    )

    # --- service ------------------------------------------------------------------------
    grpc_host: str = Field(default="127.0.0.1", description="gRPC bind address.")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 = off).")
    grpc_token: SecretStr | None = Field(default=None, description="Bearer token for gRPC.")
    grpc_tls_cert: str | None = Field(default=None, description="TLS certificate (PEM) path.")
    grpc_tls_key: str | None = Field(default=None, description="TLS private key (PEM) path.")
    grpc_allow_insecure: bool = Field(
        default=False,
        description="Serve gRPC on a non-loopback GRPC_HOST without GRPC_TOKEN and TLS (e.g. "
        "in a container whose port is published deliberately).",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus port (0 = off).")
    unhealthy_after_s: float = Field(
        default=120.0,
        gt=0,
        description="Health turns NOT_SERVING once loads into the target have been failing "
        "(and retrying) for this many seconds; it turns SERVING again after a load succeeds.",
    )
    slot_wal_warn_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Warn (log, Status, Prometheus dbmazz_slot_warning, top) when the slot "
        "retains this many bytes of WAL, or is closer than this to invalidation by "
        "max_slot_wal_keep_size (0 = off).",
    )
    on_error: Literal["exit", "serve"] = Field(
        default="exit",
        description="After a fatal error: exit (non-zero exit code, the error as the last "
        "line) or serve (keep the gRPC control plane up with health NOT_SERVING and the "
        "error in Status, logging it every minute, until `dbmazz stop` or SIGTERM).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log format.")

    @field_validator("source_url", "primary_url")
    @classmethod
    def _check_source_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = _without_replication_param(value.get_secret_value().strip())
        if "://" in url:
            parts = urlsplit(url)
            if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
                raise ValueError(
                    "must be postgresql://user:password@host:port/database "
                    f"(got {redact_url(url)!r})"
                )
        elif "=" not in url:
            raise ValueError("must be a postgresql:// URL or a 'host=... dbname=...' conninfo")
        return SecretStr(url)

    @field_validator("starrocks_url")
    @classmethod
    def _check_starrocks_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"must be http://host:8030 (the FE HTTP address), got {redact_url(value)!r}")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"has an invalid port: {redact_url(value)!r}") from exc
        if parts.username or parts.password:
            raise ValueError(
                f"must not carry credentials (got {redact_url(value)!r}); set STARROCKS_USER "
                "and STARROCKS_PASSWORD instead")
        return value.rstrip("/")

    @field_validator("tables", mode="before")
    @classmethod
    def _split_tables(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in _split_outside_quotes(value) if t.strip()]
        return value

    @field_validator("table_map", mode="before")
    @classmethod
    def _parse_table_map(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        mapping: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in _split_outside_quotes(value))):
            source, sep, target = item.rpartition(":")
            if not sep or not source or not target:
                raise ValueError(f"entry {item!r} is not 'schema.table:target'")
            mapping[source.strip()] = target.strip()
        return mapping

    @field_validator("slot_name")
    @classmethod
    def _check_slot(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                "must be lower-case letters, digits and underscores (max 63), as PostgreSQL "
                f"requires for slot names; got {value!r}"
            )
        return value

    @field_validator("sink", mode="before")
    @classmethod
    def _empty_sink(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve_sink(self) -> Config:
        if self.sink is None:
            self.sink = "starrocks" if self.starrocks_url else "duckdb"
        if self.sink == "starrocks" and not self.starrocks_url:
            raise ValueError("STARROCKS_URL is required when SINK=starrocks")
        return self

    # --- helpers ------------------------------------------------------------------------
    @property
    def source_dsn(self) -> str:
        """The real connection string (contains the password: never log it)."""
        if self.source_url is None:
            raise ConfigError(["SOURCE_URL: required; set it to postgresql://user:pass@host/db"])
        return self.source_url.get_secret_value()

    @property
    def primary_dsn(self) -> str:
        """Where dbmazz writes (setup, checkpoints, heartbeats): PRIMARY_URL, else the
        source itself (contains the password: never log it)."""
        if self.primary_url is not None:
            return self.primary_url.get_secret_value()
        return self.source_dsn

    @property
    def source_url_redacted(self) -> str:
        return redact_url(self.source_url.get_secret_value()) if self.source_url else "(unset)"

    def require_source(self) -> None:
        """Fail unless SOURCE_URL is set (commands that talk to PostgreSQL call this)."""
        self.source_dsn  # noqa: B018 - raises ConfigError when missing

    def public_dict(self) -> dict[str, Any]:
        """Settings with secrets redacted, for status output and logs."""
        data = self.model_dump()
        data["source_url"] = self.source_url_redacted
        data["primary_url"] = (redact_url(self.primary_url.get_secret_value())
                               if self.primary_url else None)
        for key in ("starrocks_password", "grpc_token"):
            secret = getattr(self, key)
            data[key] = "***" if secret is not None and secret.get_secret_value() else None
        return data

    def __repr__(self) -> str:
        return f"Config({self.public_dict()!r})"

    __str__ = __repr__

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env_file: str | None = ".env"
    ) -> Config:
        """Build a Config from env/.env plus explicit overrides (CLI flags win).

        Variables of the original dbmazz (:data:`LEGACY_ALIASES`) are accepted where the
        current name is not set, each with a one-line deprecation notice on stderr.
        Raises :class:`ConfigError` listing every problem, each naming the variable.
        """
        clean = {k: v for k, v in (overrides or {}).items() if v is not None}
        clean = {**_legacy_overrides(env_file, clean), **clean}
        try:
            return cls(_env_file=env_file, **clean)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None


#: Variables of the original dbmazz accepted as deprecated aliases:
#: legacy name → (setting, how its value becomes the setting's, what to write instead).
LEGACY_ALIASES: dict[str, tuple[str, Callable[[str], str] | None, str]] = {
    "DATABASE_URL": ("source_url", None, "SOURCE_URL"),
    "SOURCE_SLOT_NAME": ("slot_name", None, "SLOT_NAME"),
    "SOURCE_PUBLICATION_NAME": ("publication_name", None, "PUBLICATION_NAME"),
    "SINK_TYPE": ("sink", None, "SINK"),
    "SINK_URL": ("starrocks_url", None, "STARROCKS_URL"),
    "SINK_PORT": ("starrocks_mysql_port", None, "STARROCKS_MYSQL_PORT"),
    "SINK_DATABASE": ("starrocks_db", None, "STARROCKS_DB"),
    "SINK_USER": ("starrocks_user", None, "STARROCKS_USER"),
    "SINK_PASSWORD": ("starrocks_password", None, "STARROCKS_PASSWORD"),
    "FLUSH_SIZE": ("flush_rows", None, "FLUSH_ROWS"),
    "SNAPSHOT_PARALLEL_WORKERS": ("snapshot_workers", None, "SNAPSHOT_WORKERS"),
    "DO_SNAPSHOT": ("snapshot", lambda v: "initial" if _truthy(v) else "never",
                    "SNAPSHOT=initial (true) or SNAPSHOT=never (false)"),
    "INITIAL_SNAPSHOT_ONLY": ("snapshot", lambda v: "initial_only" if _truthy(v) else "",
                              "SNAPSHOT=initial_only"),
}
_noticed: set[str] = set()


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _legacy_overrides(env_file: str | None, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given only under an original-dbmazz name. The current name (environment,
    ``.env`` or flag) always wins; each alias used prints its notice once per process."""
    import os
    import sys

    values: dict[str, str] = {}
    if env_file and os.path.isfile(env_file):
        from dotenv import dotenv_values

        values.update({k.upper(): v for k, v in dotenv_values(env_file).items()
                       if v is not None})
    values.update({k.upper(): v for k, v in os.environ.items()})
    out: dict[str, Any] = {}
    # INITIAL_SNAPSHOT_ONLY after DO_SNAPSHOT: "only" is the stronger statement.
    for legacy, (field_name, convert, instead) in LEGACY_ALIASES.items():
        if legacy not in values or field_name in explicit or field_name.upper() in values:
            continue
        value = convert(values[legacy]) if convert else values[legacy]
        if value == "":
            continue
        out[field_name] = value
        if legacy not in _noticed:
            _noticed.add(legacy)
            print(f"dbmazz: notice: {legacy} is deprecated (a setting of the original "
                  f"dbmazz); use {instead} instead", file=sys.stderr)
    return out


def _without_replication_param(url: str) -> str:
    """The original dbmazz wanted ``?replication=database`` in its URL; dbmazz opens its
    replication connections itself, and ordinary connections must not carry it."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&")
                     if p and not p.lower().startswith("replication="))
    return urlunsplit(parts._replace(query=query))


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"] if not str(part).isdigit()]
        variable = loc[0].upper() if loc else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            message = f"must be one of {expected}; got {error.get('input')!r}"
        elif error["type"] in ("int_parsing", "int_type"):
            message = f"must be a whole number; got {error.get('input')!r}"
        elif error["type"] in ("greater_than", "greater_than_equal", "less_than_equal"):
            message = f"{message}; got {error.get('input')!r}"
        elif error["type"] == "bool_parsing":
            message = f"must be true or false; got {error.get('input')!r}"
        problems.append(f"{variable}: {message}" if variable else message)
    return problems


def reachable_address(host: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to ``host:port`` (a wildcard
    bind is reached on the loopback address)."""
    host = host.strip()
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ControlPlaneSettings(BaseSettings):
    """The engine's control-plane settings as its clients read them: the same variables
    (and the same field definitions) as :class:`Config`, from the environment and ``.env``,
    without the rest of the engine's settings (a client must not fail on those)."""

    # The same fields (defaults, descriptions, bounds) as Config: one definition of each.
    model_config = Config.model_config

    grpc_host: str = Config.model_fields["grpc_host"]  # type: ignore[assignment]
    grpc_port: int = Config.model_fields["grpc_port"]  # type: ignore[assignment]
    grpc_token: SecretStr | None = Config.model_fields["grpc_token"]  # type: ignore[assignment]
    grpc_tls_cert: str | None = Config.model_fields["grpc_tls_cert"]  # type: ignore[assignment]

    @classmethod
    def load(cls, env_file: str | None = ".env") -> ControlPlaneSettings:
        try:
            return cls(_env_file=env_file)  # type: ignore[call-arg]
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @property
    def address(self) -> str:
        """``GRPC_HOST:GRPC_PORT`` as reachable from here; ConfigError when gRPC is off."""
        if not self.grpc_port:
            raise ConfigError(["GRPC_PORT: 0 means the engine serves no control plane; set "
                               "GRPC_PORT to the engine's port or pass --address host:port"])
        return reachable_address(self.grpc_host, self.grpc_port)

    @property
    def token(self) -> str | None:
        return self.grpc_token.get_secret_value() or None if self.grpc_token else None
