"""libpq connections to the source and their failures.

The replication conninfo (``replication=database`` with deterministic session settings),
opening a replication connection with psycopg's libpq wrapper (:class:`psycopg.PGconn`;
psycopg has no high-level replication API), simple-protocol statements on it, and the one
classification of what goes wrong: failures to connect (:func:`connect_error`) and errors
the server reports (:func:`server_error`), by SQLSTATE first.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from dbmazz.errors import SlotInUseError, SlotLostError, SourceConnectionError, SourceError
from dbmazz.source.names import describe_dsn

#: Session settings that make text output of every type deterministic.
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "IntervalStyle": "postgres",
    # The default, but a database or role may set 'escape': bytea would decode as NULLs.
    "bytea_output": "hex",
}


def _escape_option(value: str) -> str:
    # libpq splits `options` on unescaped spaces; backslash escapes both.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def replication_conninfo(dsn: str, settings: Mapping[str, str] | None = None) -> str:
    """The DSN turned into a ``replication=database`` conninfo with deterministic session
    settings (merged after any ``options`` the DSN already carries)."""
    info = conninfo_to_dict(dsn)
    merged = {**SESSION_SETTINGS, **(settings or {})}
    ours = " ".join(f"-c {_escape_option(f'{k}={v}')}" for k, v in merged.items())
    existing = str(info.get("options") or "").strip()
    extra: dict[str, str] = {
        "replication": "database",
        "client_encoding": "UTF8",
        "options": f"{existing} {ours}".strip(),
    }
    if not info.get("connect_timeout"):
        extra["connect_timeout"] = "10"
    if not info.get("application_name"):
        extra["application_name"] = "dbmazz"
    return make_conninfo(dsn, **extra)


def connect_error(text: str, target: str) -> SourceError:
    """Classify a libpq connection failure (its text never contains the password)."""
    text = " ".join(text.split())
    low = text.lower()
    if "password authentication failed" in low or "authentication failed" in low:
        return SourceError(
            f"PostgreSQL at {target} rejected the credentials: {text}",
            "check the user and password of SOURCE_URL",
        )
    if "superuser or replication role" in low or "permission denied to start wal sender" in low:
        return SourceError(
            f"the role connecting to {target} may not open replication connections",
            "grant it with `ALTER ROLE <user> WITH REPLICATION` (run as a superuser)",
        )
    # "no pg_hba.conf entry" when no line matches; "pg_hba.conf rejects connection" when a
    # `reject` line does: both are the server's access rules, not a network failure.
    if "no pg_hba.conf entry" in low or "pg_hba.conf rejects" in low:
        return SourceError(
            f"PostgreSQL at {target} refuses the connection: {text}",
            "add a pg_hba.conf line allowing this user to connect to this database "
            "(logical replication matches the database name, not the `replication` keyword)"
            " and reload PostgreSQL",
        )
    # TLS verification (sslmode verify-ca/verify-full, or require with a root certificate
    # file): a setting to fix, not a network failure to retry.
    if "certificate verify failed" in low:
        return SourceError(
            f"PostgreSQL at {target} presented a certificate the trusted CA did not sign: "
            f"{text}",
            "set sslrootcert in SOURCE_URL to the CA certificate that signed the server's "
            "certificate (sslrootcert=system for a public CA), or sslmode=require to encrypt "
            "without verifying (with no root certificate file present)",
        )
    if "does not match host name" in low:
        return SourceError(
            f"PostgreSQL at {target} presented a certificate for another host name: {text}",
            "connect with a host name the certificate carries (the error names them; "
            "hostaddr= can give the address), or use sslmode=verify-ca to check only the CA",
        )
    if "root certificate file" in low and "does not exist" in low:
        return SourceError(
            f"cannot verify PostgreSQL at {target}: {text}",
            "set sslrootcert in SOURCE_URL to the CA certificate file (or sslrootcert=system)",
        )
    # libpq's own refusal (no SQLSTATE: the server never answered the startup).
    if "server does not support ssl" in low:
        return SourceError(
            f"PostgreSQL at {target} does not accept TLS connections, and SOURCE_URL requires "
            f"one: {text}",
            "enable TLS on the server (ssl = on with a certificate and key in postgresql.conf) "
            "or lower sslmode in SOURCE_URL (prefer or disable) on a trusted network",
        )
    if "database" in low and "does not exist" in low:
        return SourceError(f"{text} (at {target})", "check the database name in SOURCE_URL")
    return SourceConnectionError(
        f"cannot connect to PostgreSQL at {target}: {text}",
        "check the host and port of SOURCE_URL and that the server is running (a connection "
        "lost while streaming is retried with backoff)",
    )


def server_error(
    *, sqlstate: str | None, message: str, target: str, slot: str | None = None
) -> SourceError:
    """Classify an error the server reported on a replication connection.

    By SQLSTATE first; the message text only refines a SQLSTATE that does not say which
    object is meant (42704 ``undefined_object``: slot or publication; 55000: an invalidated
    slot among other prerequisite failures) or stands in when there is no SQLSTATE (a lost
    connection: libpq's text is all there is)."""
    text = " ".join(message.split())
    low = text.lower()
    state = sqlstate or ""
    slot_lost = "can no longer get changes from replication slot" in low or "invalidated" in low
    if state == "55006" or (not state and "replication slot" in low and "is active" in low):
        return SlotInUseError(
            f"replication slot {slot!r} on {target} is in use by another session: {text}",
            "stop the other consumer (see pg_stat_replication); after a crash the old "
            "session releases the slot within wal_sender_timeout",
        )
    if state == "42704" or (not state and "does not exist" in low):
        if "publication" in low:
            return SourceError(
                f"{text} (on {target})",
                "run `dbmazz setup` to create the publication, then restart",
            )
        if "replication slot" in low:
            return SlotLostError(
                f"replication slot {slot!r} does not exist on {target}",
                "if dbmazz never streamed from it, `dbmazz setup` creates it; if it did, the "
                "slot was dropped outside dbmazz and changes since the last checkpoint were "
                f"not captured: delete its row from dbmazz_checkpoints (slot_name = '{slot}') "
                "and run with SNAPSHOT=initial to start over (then `dbmazz verify --repair` "
                "removes target rows deleted at the source meanwhile)",
            )
    if state in ("55000", "") and slot_lost:
        return SlotLostError(
            f"replication slot {slot!r} on {target} was invalidated: {text}",
            "PostgreSQL removed WAL the slot still needed (usually max_slot_wal_keep_size "
            "was exceeded while dbmazz was behind or stopped). Changes were lost: drop the "
            "slot, run setup again and take a new snapshot (SNAPSHOT=initial); raise "
            "max_slot_wal_keep_size to avoid it",
        )
    if state[:2] in ("08", "57", "53") or not state:
        return SourceConnectionError(
            f"replication connection to {target} failed: {text}",
            "dbmazz reconnects and resumes from the last confirmed LSN",
        )
    return SourceError(f"replication on {target} failed: {text} (SQLSTATE {state})")


def fields_error(fields: Mapping[str, str], target: str, slot: str | None) -> SourceError:
    """An ErrorResponse read from the socket (its fields by code letter), classified."""
    return server_error(
        sqlstate=fields.get("C"),
        message=f"{fields.get('M', '')} {fields.get('D', '')}".strip(),
        target=target,
        slot=slot,
    )


def result_error(res: PGresult, target: str, slot: str | None) -> SourceError:
    """A failed libpq result, classified."""
    def field(code: pq.DiagnosticField) -> str:
        raw = res.error_field(code)
        return raw.decode("utf-8", "replace") if raw else ""

    message = field(pq.DiagnosticField.MESSAGE_PRIMARY) or res.error_message.decode(
        "utf-8", "replace"
    )
    detail = field(pq.DiagnosticField.MESSAGE_DETAIL)
    return server_error(
        sqlstate=field(pq.DiagnosticField.SQLSTATE) or None,
        message=f"{message} {detail}".strip(),
        target=target,
        slot=slot,
    )


def lost_error(exc: BaseException, target: str, slot: str) -> SourceError:
    """The replication connection broke (libpq's or the socket's error; libpq's text
    carries the server's last error, if it sent one before closing)."""
    return server_error(
        sqlstate=None,
        message=f"connection lost (slot {slot!r}): {exc}",
        target=target,
        slot=slot,
    )


def connect_replication(dsn: str, settings: Mapping[str, str] | None = None) -> PGconn:
    """A blocking libpq replication connection, or a classified error."""
    target = describe_dsn(dsn)
    try:
        conninfo = replication_conninfo(dsn, settings)
    except psycopg.ProgrammingError as exc:
        raise SourceError(f"invalid PostgreSQL connection string for {target}: {exc}") from None
    pgconn = pq.PGconn.connect(conninfo.encode())
    if pgconn.status != pq.ConnStatus.OK:
        text = pgconn.get_error_message()
        pgconn.finish()
        raise connect_error(text, target)
    return pgconn


def simple_query(
    pgconn: PGconn, query: str, *, target: str, slot: str | None = None
) -> list[tuple[str | None, ...]]:
    """Run one simple-protocol statement (the only kind a walsender accepts)."""
    try:
        res = pgconn.exec_(query.encode())
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"connection to {target} lost: {exc}") from None
    if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        raise result_error(res, target, slot)
    return [
        tuple(
            None if (v := res.get_value(r, c)) is None else v.decode()
            for c in range(res.nfields)
        )
        for r in range(res.ntuples)
    ]
