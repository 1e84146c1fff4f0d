"""The source database: one place that opens PostgreSQL connections and classifies their
failures.

Every module that talks to the source connects through :class:`SourceDatabase` with a
purpose (it becomes the connection's ``application_name``, ``dbmazz-<purpose>``, so
``pg_stat_activity`` says what each connection is for, unless SOURCE_URL names one), and a
failure to connect comes back the same way everywhere: :func:`~dbmazz.source.connection.
connect_error` (wrong credentials, pg_hba, a missing database: not retryable; anything
else: :class:`~dbmazz.errors.SourceConnectionError`, retried).
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbmazz.errors import SourceError
from dbmazz.source.connection import connect_error, replication_conninfo
from dbmazz.source.names import describe_dsn


class SourceDatabase:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        #: The server as errors name it (host, port, database; never the password).
        self.target = describe_dsn(dsn)

    def connect(self, purpose: str, *, replication: bool = False,
                connect_timeout: int | None = None) -> psycopg.Connection:
        """An autocommit connection for ``purpose``; ``replication``: a logical replication
        connection (replication commands and SQL); ``connect_timeout`` (seconds) bounds
        the attempt where the caller must not hang (SOURCE_URL's own otherwise)."""
        options: dict[str, str | int] = {}
        if connect_timeout is not None:
            options["connect_timeout"] = connect_timeout
        try:
            if not conninfo_to_dict(self.dsn).get("application_name"):
                options["application_name"] = f"dbmazz-{purpose}"
            conninfo = replication_conninfo(self.dsn) if replication else self.dsn
            return psycopg.connect(make_conninfo(conninfo, **options), autocommit=True)
        except psycopg.OperationalError as exc:
            raise connect_error(str(exc), self.target) from None
        except psycopg.ProgrammingError as exc:
            raise SourceError(f"invalid PostgreSQL connection string for {self.target}: {exc}",
                              "check SOURCE_URL") from None
