"""Real clients for the emulator tests: pycurl, the curl binary, pymysql."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pycurl
import pymysql

from dbmazz.testing.starrocks import StarRocksEmulator


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    url: str,
    *,
    method: str = "PUT",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    user: str | None = "root",
    password: str = "",
    follow: bool = True,
    chunked: bool = False,
    expect: bool = True,
) -> Response:
    """One HTTP request with pycurl, following 307s with credentials (as the sink must)."""
    curl = pycurl.Curl()
    out = io.BytesIO()
    seen: list[str] = []
    try:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEDATA, out)
        curl.setopt(pycurl.HEADERFUNCTION, lambda line: seen.append(line.decode("latin-1")))
        if user is not None:
            curl.setopt(pycurl.USERPWD, f"{user}:{password}")
        if follow:
            curl.setopt(pycurl.FOLLOWLOCATION, 1)
            curl.setopt(pycurl.UNRESTRICTED_AUTH, 1)
        lines = [f"{k}: {v}" for k, v in (headers or {}).items()]
        if method == "PUT" or body is not None:
            data = body or b""
            curl.setopt(pycurl.UPLOAD, 1)
            curl.setopt(pycurl.READDATA, io.BytesIO(data))
            if chunked:
                lines.append("Transfer-Encoding: chunked")
            else:
                curl.setopt(pycurl.INFILESIZE, len(data))
            lines.append("Expect: 100-continue" if expect else "Expect:")
            if method != "PUT":
                curl.setopt(pycurl.CUSTOMREQUEST, method)
        elif method != "GET":
            curl.setopt(pycurl.CUSTOMREQUEST, method)
        # UTF-8 bytes on the wire, as the sink sends them (pycurl refuses non-ASCII str).
        curl.setopt(pycurl.HTTPHEADER, [line.encode("utf-8") for line in lines])
        curl.setopt(pycurl.TIMEOUT, 30)
        curl.perform()
        return Response(int(curl.getinfo(pycurl.RESPONSE_CODE)), out.getvalue(), seen)
    finally:
        curl.close()


def load_url(sr: StarRocksEmulator, db: str, table: str) -> str:
    return f"{sr.url}/api/{quote(db, safe='')}/{quote(table, safe='')}/_stream_load"


def stream_load(
    sr: StarRocksEmulator,
    db: str,
    table: str,
    body: bytes | str,
    **headers: str,
) -> dict[str, Any]:
    """Stream Load through the FE; header names use ``_`` (``column_separator``...)."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    response = request(load_url(sr, db, table), body=data, headers=headers)
    assert response.status == 200, response.body
    return response.json


def txn(
    sr: StarRocksEmulator,
    op: str,
    label: str,
    db: str = "d",
    table: str = "t",
    body: bytes | str | None = None,
    **headers: str,
) -> dict[str, Any]:
    """One transaction-interface call through the FE."""
    hdrs = {"label": label, "db": db, "table": table, **headers}
    data = body.encode("utf-8") if isinstance(body, str) else body
    method = "PUT" if op == "load" else "POST"
    response = request(
        f"{sr.url}/api/transaction/{op}", method=method, body=data, headers=hdrs,
        expect=op == "load",
    )
    assert response.status == 200, response.body
    return response.json


def curl(*args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The curl binary, verbose; stderr carries the exchange (``< HTTP/1.1 ...``)."""
    return subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "30", *args],
        input=data, capture_output=True, timeout=60, check=False,
    )


def status_lines(verbose: bytes) -> list[str]:
    """The ``< HTTP/1.1 NNN`` lines of ``curl -v`` output, in order."""
    return [
        line[2:].strip()
        for line in verbose.decode("utf-8", "replace").splitlines()
        if line.startswith("< HTTP/")
    ]


def mysql(sr: StarRocksEmulator, db: str | None = None, password: str = "",
          user: str = "root") -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=sr.mysql_port, user=user, password=password, database=db,
        autocommit=True, ssl_disabled=True,
    )


def sql(sr: StarRocksEmulator, statement: str, db: str | None = None) -> list[tuple[Any, ...]]:
    conn = mysql(sr, db)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def make_table(sr: StarRocksEmulator, ddl: str, db: str = "d") -> None:
    conn = mysql(sr)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}`")
            cur.execute(f"USE `{db}`")
            cur.execute(ddl)
    finally:
        conn.close()


BASIC_DDL = (
    "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR(20) NULL, score INT NOT NULL DEFAULT '7')"
    " PRIMARY KEY (id) DISTRIBUTED BY HASH(id)"
)
