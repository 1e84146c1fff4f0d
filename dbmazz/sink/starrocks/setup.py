"""Prepare a StarRocks target over the FE MySQL port. Idempotent.

Connectivity and version first, then the database (created when missing under
``setup="auto"``), then every target table: created from the source schema when
``create_tables`` (Primary Key table, key columns first, types per DESIGN.md §5), else
required to exist; missing source and audit columns are added and their schema-change jobs
awaited. With ``setup="skip"`` nothing is changed and tables are only validated against
information_schema, every missing column listed in one error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dbmazz.errors import SetupError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.retry import Waiter
from dbmazz.sink.starrocks.catalog import Catalog
from dbmazz.sink.starrocks.mysql import FeClient
from dbmazz.sink.starrocks.schema import check_target_names, prepare_tables
from dbmazz.sink.starrocks.settings import StarRocksSettings

if TYPE_CHECKING:
    from dbmazz.config import Config

log = logging.getLogger("dbmazz.setup")


@dataclass(frozen=True)
class TargetSetup:
    """What setup found and did."""

    version: str
    database: str
    database_created: bool = False
    created: tuple[str, ...] = ()
    #: target table → columns added by this run
    altered: dict[str, tuple[str, ...]] = field(default_factory=dict)
    verified: tuple[str, ...] = ()


def _settings(settings: StarRocksSettings | None, config: Config | None) -> StarRocksSettings:
    if settings is not None:
        return settings
    if config is None:
        raise ValueError("pass either settings or config")
    return StarRocksSettings.from_config(config)


def open_catalog(settings: StarRocksSettings, waiter: Waiter | None = None) -> Catalog:
    host, port = settings.mysql_address
    client = FeClient(
        host, port, settings.user, settings.password, connect_timeout=settings.connect_timeout
    )
    return Catalog(client, settings.database, waiter=waiter, alter_timeout=settings.alter_timeout)


def check_connection(
    settings: StarRocksSettings | None = None, *, config: Config | None = None
) -> str:
    """Connect to the FE MySQL port and return ``current_version()``."""
    catalog = open_catalog(_settings(settings, config))
    try:
        return catalog.version()
    finally:
        catalog.client.close()


def setup_starrocks(
    tables: Sequence[TableSchema],
    settings: StarRocksSettings | None = None,
    *,
    config: Config | None = None,
    waiter: Waiter | None = None,
) -> TargetSetup:
    """Make the target ready for ``tables`` (see the module docstring)."""
    resolved = _settings(settings, config)
    check_target_names(tables)
    catalog = open_catalog(resolved, waiter)
    try:
        version = catalog.version()
        created_db = False
        if resolved.setup == "auto":
            created_db = catalog.ensure_database()
        elif not catalog.database_exists():
            raise SetupError(
                f"StarRocks database {resolved.database!r} does not exist",
                "create it, or run with SETUP=auto",
            )
        report = prepare_tables(catalog, tables, resolved)
    finally:
        catalog.client.close()
    log.info(
        "StarRocks %s ready: database %s, %d tables created, %d altered, %d verified",
        version,
        resolved.database,
        len(report.created),
        len(report.altered),
        len(report.verified),
    )
    return TargetSetup(
        version=version,
        database=resolved.database,
        database_created=created_db,
        created=tuple(report.created),
        altered={k: tuple(v) for k, v in report.altered.items()},
        verified=tuple(report.verified),
    )
