"""Starting and stopping: loopback only, fixed or free ports, clean shutdown, standalone."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading

import pycurl
import pytest

from dbmazz.testing.starrocks import StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, load_url, make_table, mysql, request, stream_load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quietly(url: str) -> None:
    # Whether it gets a reply or a closed socket depends on timing; both are fine here.
    with contextlib.suppress(pycurl.error):
        request(url, body=b"1\ta\t1\n")


def test_stop_joins_every_thread_even_with_open_connections() -> None:
    before = set(threading.enumerate())
    sr = StarRocksEmulator(be_count=2).start()
    make_table(sr, BASIC_DDL)
    conn = mysql(sr, "d")
    keep_alive = pycurl.Curl()
    keep_alive.setopt(pycurl.URL, f"{sr.url}/api/d/get_load_state?label=x")
    keep_alive.setopt(pycurl.USERPWD, "root:")
    keep_alive.setopt(pycurl.WRITEDATA, io.BytesIO())
    keep_alive.perform()  # the connection stays open (HTTP/1.1 keep-alive)
    # A request parked in a long delay must not hold shutdown up.
    sr.faults.delay(3600, where="be")
    parked = threading.Thread(target=_quietly, args=(load_url(sr, "d", "t"),), daemon=True)
    parked.start()
    stopper = threading.Thread(target=sr.stop)
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive(), "stop() hung"
    parked.join(timeout=30)
    keep_alive.close()
    conn.close()
    leftover = [t for t in set(threading.enumerate()) - before if t is not parked]
    assert leftover == []
    sr.stop()  # idempotent


def test_binds_loopback_and_honours_fixed_ports() -> None:
    http_port, mysql_port = _free_port(), _free_port()
    with StarRocksEmulator(http_port=http_port, mysql_port=mysql_port) as sr:
        assert sr.url == f"http://127.0.0.1:{http_port}"
        assert sr.fe_http_port == http_port
        assert sr.mysql_port == mysql_port
        for server in sr._servers:
            assert server.server_address[0] == "127.0.0.1"
        make_table(sr, BASIC_DDL)
        assert stream_load(sr, "d", "t", "1\ta\t1\n")["Status"] == "Success"


def test_busy_port_fails_cleanly() -> None:
    with StarRocksEmulator() as first:
        before = set(threading.enumerate())
        with pytest.raises(OSError):
            StarRocksEmulator(mysql_port=first.mysql_port).start()
        assert set(threading.enumerate()) == before


def test_standalone_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbmazz.testing.starrocks", "--http-port", "0",
         "--mysql-port", "0", "--be-count", "2", "--password", "pw"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        match = re.search(r"FE http (http://127\.0\.0\.1:(\d+)), BE http ports \[(.*)\], "
                          r"mysql 127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        url, be_ports = match.group(1), match.group(3)
        assert len(be_ports.split(",")) == 2
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=int(match.group(4)), user="root",
                               password="pw", autocommit=True, ssl_disabled=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE d")
            cur.execute(BASIC_DDL.replace("CREATE TABLE t", "CREATE TABLE d.t"))
        conn.close()
        fault = json.dumps({"kind": "publish_timeout", "table": "t"}).encode()
        request(f"{url}/_emulator/faults", method="POST", body=fault, user=None, expect=False)
        reply = request(f"{url}/api/d/t/_stream_load", body=b"1\ta\t1\n", password="pw").json
        assert reply["Status"] == "Publish Timeout"
        rows_url = f"{url}/_emulator/rows?db=d&table=t"
        assert request(rows_url, method="GET", user=None).json == {"rows": []}  # not visible
        assert request(f"{url}/_emulator/publish", method="POST", body=b"", user=None,
                       expect=False).json["published"] == 1
        rows = request(rows_url, method="GET", user=None).json
        assert rows == {"rows": [{"id": 1, "name": "a", "score": 1}]}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
