"""Naming things on the server: a DSN as messages may show it (never the password), slot
names PostgreSQL accepts, and SQL quoting for the replication protocol's simple queries
(which take no parameters)."""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from dbmazz.errors import SourceError

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for messages: never the password, never the raw string."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable connection string>"
    host = str(info.get("host") or info.get("hostaddr") or "localhost")
    port = str(info.get("port") or "5432")
    user = str(info.get("user") or "")
    db = str(info.get("dbname") or user)
    text = f"{user + '@' if user else ''}{host}:{port}/{db}"
    for piece in _password_pieces(dsn):
        text = text.replace(piece, "***")
    return text


def _password_pieces(dsn: str) -> list[str]:
    """The pieces of a URL's password, as the person who wrote the URL meant it (up to the
    last ``@``), cut where libpq may cut: an unencoded ``/`` or ``@`` in a password makes
    libpq read part of it as the host, port or database, which a message would show."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not scheme.startswith("postgres"):
        return []
    userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
    if ":" not in userinfo:
        return []
    password = userinfo.split(":", 1)[1]
    if not re.search(r"[/@?#]", password):
        return []  # libpq reads it whole as the password: nothing of it reaches a field
    return sorted((p for p in re.split(r"[/@:?#]", password) if p), key=len, reverse=True)


def validate_slot_name(slot: str) -> None:
    if not _SLOT_NAME.match(slot):
        raise SourceError(
            f"invalid replication slot name {slot!r}",
            "PostgreSQL slot names use only lower-case letters, digits and underscores "
            "(at most 63 characters)",
        )


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'
