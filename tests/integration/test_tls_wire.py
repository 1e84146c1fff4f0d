"""dbmazz's own TLS connection (dbmazz.source.tlswire) against a real TLS server: the
authentication methods, libpq's sslmode semantics, the stream reading through it (reader
``tls``), the fallback to libpq, closing and reconnecting."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbmazz.errors import SourceConnectionError, SourceError
from dbmazz.source import pgoutput as po
from dbmazz.source.connection import connect_replication
from dbmazz.source.replication import ReplicationStream
from dbmazz.source.tlswire import Authentication, TlsParams, TlsWire, tls_params
from dbmazz.source.wire import error_fields, query_message
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster, temporary_cluster
from tests.integration._replication_helpers import (
    commits,
    make_slot,
    make_table,
    parse_all,
    read_until,
    texts,
    wait_for,
)

ROLE_PASSWORD = "tls-wire-pw"


def _dsn(db: Database, **params: str) -> str:
    return db.server.dsn(db.name, **{"sslmode": "require", **params})


def _query(wire: TlsWire, sql: str) -> list[str | None]:
    """One simple-protocol statement on the wire → its (last) row's values."""
    wire.write_all(query_message(sql))
    pending = bytearray()
    row: list[str | None] = []
    while True:
        message = wire.read_message(pending, 10)
        if message.kind == ord("E"):
            raise AssertionError(error_fields(message.body))
        if message.kind == ord("D"):
            body, row, pos = message.body, [], 2
            for _ in range(int.from_bytes(body[:2], "big")):
                size = int.from_bytes(body[pos:pos + 4], "big", signed=True)
                pos += 4
                row.append(None if size < 0 else body[pos:pos + size].decode())
                pos += max(size, 0)
        if message.kind == ord("Z"):
            return row


def _identify(wire: TlsWire) -> str | None:
    """IDENTIFY_SYSTEM on the wire → the database name it reports."""
    return _query(wire, "IDENTIFY_SYSTEM")[3]


def _libpq_params(dsn: str) -> TlsParams:
    pgconn = connect_replication(dsn)
    try:
        assert pgconn.ssl_in_use
        return tls_params(pgconn)
    finally:
        pgconn.finish()


@pytest.fixture
def hba_roles(tls_pg_server: PostgresCluster) -> Iterator[dict[str, str]]:
    """Roles authenticated by md5 and by trust over hostssl (pg_hba lines for them only,
    ahead of the cluster's scram-sha-256 lines). → method → role."""
    cluster = tls_pg_server
    roles = {"md5": "tlswire_md5", "trust": "tlswire_trust", "cert": "tlswire_cert"}
    with cluster.connect() as conn:
        conn.execute("SET password_encryption = 'md5'")
        for role in roles.values():
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{ROLE_PASSWORD}'")
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    lines = "".join(f"hostssl all {role} 127.0.0.1/32 {method}\n"
                    for method, role in roles.items())
    hba.write_text(lines + original)
    cluster.reload()
    try:
        yield roles
    finally:
        hba.write_text(original)
        cluster.reload()
        with cluster.connect() as conn:
            for role in roles.values():
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def _method_in_use(cluster: PostgresCluster, role: str, method: str) -> bool:
    with cluster.connect() as conn:
        rows = conn.execute(
            "SELECT 1 FROM pg_hba_file_rules WHERE %s = ANY(user_name) AND auth_method = %s",
            (role, method)).fetchall()
    return bool(rows)


# -- the connection itself ----------------------------------------------------------------


def test_scram_md5_and_trust_authenticate_over_tls(
        tls_db: Database, hba_roles: dict[str, str]) -> None:
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster)
    for method, role in hba_roles.items():
        wait_for(functools.partial(_method_in_use, cluster, role, method),
                 what=f"the {method} pg_hba line")
    cases = {
        "scram-sha-256": _dsn(tls_db),
        "md5": _dsn(tls_db).replace(f"{cluster.user}:{cluster.password}@",
                                    f"{hba_roles['md5']}:{ROLE_PASSWORD}@"),
        "trust": _dsn(tls_db).replace(f"{cluster.user}:{cluster.password}@",
                                      f"{hba_roles['trust']}@"),
    }
    for method, dsn in cases.items():
        params = _libpq_params(dsn)
        assert bool(params.password) == (method != "trust"), method
        wire = TlsWire(params, "test")
        try:
            assert wire.tls_version.startswith("TLSv"), method
            assert _identify(wire) == tls_db.name, method
        finally:
            wire.close()


def test_a_wrong_password_is_refused_with_the_fix(tls_db: Database) -> None:
    params = _libpq_params(_dsn(tls_db))
    wrong = TlsParams(**{**params.__dict__, "password": "not-the-password"})
    with pytest.raises(SourceError) as info:
        TlsWire(wrong, "the-target")
    assert not info.value.retryable
    assert "credentials" in str(info.value) and "not-the-password" not in str(info.value)


def test_a_wrong_scram_server_signature_is_refused() -> None:
    """The server must prove it knows the password (SASLFinal's signature)."""
    auth = Authentication("u", "pw", "the-target")
    first = auth.answer(b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00")
    nonce = first.split(b"r=")[1].decode()
    auth.answer(b"\x00\x00\x00\x0b" + f"r={nonce}xyz,s=c2FsdA==,i=4096".encode())
    with pytest.raises(SourceError, match="SCRAM server verification"):
        auth.answer(b"\x00\x00\x00\x0c" + b"v=" + b"AAAA" * 11)
    # …and AuthenticationOk without any SASLFinal is refused as well.
    auth2 = Authentication("u", "pw", "the-target")
    nonce2 = auth2.answer(b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00").split(b"r=")[1].decode()
    auth2.answer(b"\x00\x00\x00\x0b" + f"r={nonce2}xyz,s=c2FsdA==,i=4096".encode())
    with pytest.raises(SourceError, match="without proving"):
        auth2.answer(b"\x00\x00\x00\x00")


def test_verify_full_checks_the_ca_and_the_host_name(tls_db: Database) -> None:
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster) and cluster.tls is not None
    ca = str(cluster.tls.ca_file)
    good = _libpq_params(_dsn(tls_db, sslmode="verify-full", sslrootcert=ca))
    wire = TlsWire(good, "test")
    wire.close()
    # A host name the certificate does not carry, at the right address.
    renamed = TlsParams(**{**good.__dict__, "host": "wrong.example"})
    with pytest.raises(Exception, match="verification differs"):
        TlsWire(renamed, "test")
    # A CA that did not sign the server's certificate.
    foreign = TlsParams(**{**good.__dict__, "sslrootcert": str(cluster.tls.cert_file)})
    with pytest.raises(Exception, match="verification differs"):
        TlsWire(foreign, "test")


def test_a_wrong_ca_or_host_name_is_refused_with_the_fix(tls_db: Database) -> None:
    """libpq connects first and refuses; the error names the setting to fix, not retried."""
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster) and cluster.tls is not None
    make_table(tls_db)
    make_slot(tls_db)
    ca = str(cluster.tls.ca_file)
    cases = {
        "sslrootcert": _dsn(tls_db, sslmode="verify-full", sslrootcert=str(cluster.tls.cert_file)),
        "host name": _dsn(tls_db, sslmode="verify-full", sslrootcert=ca,
                          hostaddr="127.0.0.1").replace("@127.0.0.1:", "@wrong.example:"),
        "CA certificate file": _dsn(tls_db, sslmode="verify-ca",
                                    sslrootcert="/nonexistent/root.crt"),
    }
    for fix, dsn in cases.items():
        with pytest.raises(SourceError) as info:
            ReplicationStream.open(dsn, "s1", ["pub"])
        assert not info.value.retryable, fix
        assert fix in (info.value.hint or ""), (fix, info.value)
    # The right CA and name: streamed through the own TLS connection.
    # REPLICATION_READER=socket (socket_reader=True) means the own TLS connection too.
    with ReplicationStream.open(_dsn(tls_db, sslmode="verify-full", sslrootcert=ca), "s1",
                                ["pub"], socket_reader=True) as stream:
        assert stream.channel.reader == "tls"


def test_require_with_a_root_certificate_verifies_like_libpq(tls_db: Database) -> None:
    """libpq's rule: sslmode=require with a root certificate file acts like verify-ca."""
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster) and cluster.tls is not None
    params = _libpq_params(_dsn(tls_db, sslrootcert=str(cluster.tls.ca_file)))
    TlsWire(params, "test").close()
    foreign = TlsParams(**{**params.__dict__, "sslrootcert": str(cluster.tls.cert_file)})
    with pytest.raises(Exception, match="verification differs"):
        TlsWire(foreign, "test")


# -- the stream through it ----------------------------------------------------------------


def test_stream_over_tls_reads_its_own_connection_and_delivers_everything(
        tls_db: Database) -> None:
    make_table(tls_db)
    make_slot(tls_db)
    tls_db.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g")
    tls_db.execute("UPDATE t SET v = 'changed' WHERE id = 2")
    tls_db.execute("DELETE FROM t WHERE id = 3")
    # A large transaction, streamed while in progress (64 kB logical_decoding_work_mem).
    tls_db.execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(10, 20009) g")
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster)
    log_start = cluster.logfile.stat().st_size
    with ReplicationStream.open(_dsn(tls_db), "s1", ["pub"], proto_version="auto",
                                streaming=None,
                                settings={"logical_decoding_work_mem": "64kB"}) as stream:
        channel = stream.channel
        assert channel.reader == "tls" and stream.reads_socket
        assert channel.tls and channel.tls_version.startswith("TLSv")
        msgs = parse_all(read_until(stream, commits(4)))
        if stream.proto_version >= 2:
            assert stream.stats.streamed_committed >= 1
        # libpq's connection is gone: one walsender, the stream's.
        rows = tls_db.query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.backend_type = 'walsender' AND a.datname = %s", (tls_db.name,))
        assert rows == [(True,)]
    inserts = [int(texts(m.new)[0] or 0) for m in msgs if isinstance(m, po.Insert)]
    assert inserts == [1, 2, 3, *range(10, 20010)]
    updates = [texts(m.new) for m in msgs if isinstance(m, po.Update)]
    assert updates == [["2", "changed"]]
    assert len([m for m in msgs if isinstance(m, po.Delete)]) == 1
    # Closing ended COPY and the session: the slot is released, and politely (Terminate,
    # close_notify): the server logs no unexpected EOF or SSL error for either connection.
    wait_for(lambda: tls_db.query(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 's1'") == [(False,)],
        what="the slot to be released")
    wait_for(lambda: not tls_db.query(
        "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'walsender' AND datname = %s",
        (tls_db.name,)), what="the walsender to exit")
    with open(cluster.logfile, "rb") as log:
        log.seek(log_start)
        written = log.read().decode(errors="replace").lower()
    assert "unexpected eof" not in written and "ssl error" not in written, written
    assert "could not receive data" not in written, written


def test_unsupported_settings_fall_back_to_libpq_with_the_reason_logged(
        tls_db: Database, caplog: pytest.LogCaptureFixture) -> None:
    make_table(tls_db)
    make_slot(tls_db)
    tls_db.execute("INSERT INTO t VALUES (1, 'a')")
    dsn = _dsn(tls_db, channel_binding="require")
    with caplog.at_level(logging.WARNING), \
            ReplicationStream.open(dsn, "s1", ["pub"]) as stream:
        assert stream.channel.reader == "libpq" and stream.channel.tls
        msgs = parse_all(read_until(stream, commits(1)))
        assert [texts(m.new) for m in msgs if isinstance(m, po.Insert)] == [["1", "a"]]
    assert any("channel_binding=require" in r.getMessage() for r in caplog.records)
    # REPLICATION_READER=socket (socket_reader=True) refuses instead, naming the fix.
    with pytest.raises(SourceError) as info:
        ReplicationStream.open(dsn, "s1", ["pub"], socket_reader=True)
    assert "channel_binding=require" in str(info.value)
    assert "REPLICATION_READER=auto" in (info.value.hint or "")
    # socket_reader=False keeps libpq without asking.
    with ReplicationStream.open(_dsn(tls_db), "s1", ["pub"], socket_reader=False) as stream:
        assert stream.channel.reader == "libpq"


def test_a_terminated_walsender_is_retryable_and_resumes_without_loss(
        tls_db: Database) -> None:
    make_table(tls_db)
    make_slot(tls_db)
    tls_db.execute("INSERT INTO t VALUES (1, 'a')")
    stream = ReplicationStream.open(_dsn(tls_db), "s1", ["pub"])
    try:
        assert stream.channel.reader == "tls"
        msgs = parse_all(read_until(stream, commits(1)))
        end = next(m for m in msgs if isinstance(m, po.Commit)).end_lsn
        stream.confirm(end)
        stream.keepalive(force=True)
        tls_db.execute("INSERT INTO t VALUES (2, 'b')")  # read by nobody yet
        tls_db.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = 's1'")
        with pytest.raises(SourceConnectionError) as info:
            read_until(stream, lambda _: False, timeout_s=30)
        assert info.value.retryable
    finally:
        stream.close()
    wait_for(lambda: tls_db.query(
        "SELECT active FROM pg_replication_slots WHERE slot_name = 's1'") == [(False,)],
        what="the slot to be released")
    tls_db.execute("INSERT INTO t VALUES (3, 'c')")
    with ReplicationStream.open(_dsn(tls_db), "s1", ["pub"], start_lsn=end) as resumed:
        assert resumed.channel.reader == "tls"
        again = parse_all(read_until(resumed, commits(2)))
    ids = [int(texts(m.new)[0] or 0) for m in again if isinstance(m, po.Insert)]
    assert ids == [2, 3]


def test_password_from_a_password_file_is_what_libpq_used(
        tls_db: Database, tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """PQpass covers the password file (and PGPASSWORD): the own connection gets it."""
    cluster = tls_db.server
    passfile = Path(str(tmp_path)) / "pgpass"
    passfile.write_text(f"*:*:*:{cluster.user}:{cluster.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    dsn = _dsn(tls_db).replace(f":{cluster.password}@", "@")
    params = _libpq_params(dsn)
    assert params.password == cluster.password
    wire = TlsWire(params, "test")
    try:
        assert _identify(wire) == tls_db.name
    finally:
        wire.close()


def test_backlogs_and_messages_larger_than_the_read_buffer_arrive_whole(
        tls_db: Database) -> None:
    """More than the 4 MiB receive buffer at once, and one 6 MB message: the buffer fills
    in the middle of a TLS record, and the rest is decrypted at the next read (nothing
    waits on a socket that has no more data)."""
    make_table(tls_db)
    make_slot(tls_db)
    tls_db.execute("INSERT INTO t SELECT g, repeat('y', 2000) FROM generate_series(1, 3000) g")
    tls_db.execute("INSERT INTO t VALUES (0, repeat('z', 6000000))")
    with ReplicationStream.open(_dsn(tls_db), "s1", ["pub"]) as stream:
        assert stream.channel.reader == "tls"
        msgs = parse_all(read_until(stream, commits(2)))
    values = [texts(m.new) for m in msgs if isinstance(m, po.Insert)]
    assert [int(v[0] or 0) for v in values] == [*range(1, 3001), 0]
    assert len(values[-1][1] or "") == 6000000


def test_a_partly_read_record_counts_as_readable(tls_db: Database) -> None:
    """Plaintext left inside the TLS session (a record larger than the caller's buffer) is
    invisible to poll: wait_readable must report it, or the reader would wait for socket
    data that never comes."""
    wire = TlsWire(_libpq_params(_dsn(tls_db)), "test")
    try:
        # Under PostgreSQL's 8 kB send buffer: the whole answer is one TLS record.
        wire.write_all(query_message("SELECT repeat('x', 4000)"))
        small = bytearray(100)
        got = 0
        while not got:
            wire.wait_readable(5)
            got = wire.read_into(memoryview(small))
        assert got == len(small)
        # The rest of the answer is already here (in the BIO or the SSL object).
        assert wire.wait_readable(0)
        rest = bytearray(1 << 16)
        assert wire.read_into(memoryview(rest)) > 0
    finally:
        wire.close()


def test_the_session_gets_the_replication_conninfo_settings(tls_db: Database) -> None:
    """The StartupMessage carries libpq's options (the deterministic DateStyle/TimeZone/…
    the decoder relies on), application_name and client_encoding."""
    pgconn = connect_replication(_dsn(tls_db), {"work_mem": "7MB"})
    try:
        params = tls_params(pgconn)
    finally:
        pgconn.finish()
    wire = TlsWire(params, "test")
    try:
        shown: dict[str, str | None] = {}
        for name in ("TimeZone", "DateStyle", "extra_float_digits", "work_mem",
                     "application_name", "client_encoding"):
            [shown[name]] = _query(wire, f"SHOW {name}")
    finally:
        wire.close()
    assert shown == {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "extra_float_digits": "3",
                     "work_mem": "7MB", "application_name": "dbmazz",
                     "client_encoding": "UTF8"}


def _client_certificate(cluster: PostgresCluster, user: str, directory: Path) -> tuple[str, str]:
    """A client certificate for ``user`` signed by the cluster's test CA → (cert, key)."""
    assert cluster.tls is not None
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a client certificate")
    ca_cert, ca_key = cluster.tls.ca_file, cluster.tls.ca_file.parent / "ca.key"
    key, csr, cert = directory / "client.key", directory / "client.csr", directory / "client.crt"
    for step in (
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={user}", "-keyout", str(key),
         "-out", str(csr)],
        ["x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
         "-CAcreateserial", "-days", "1", "-out", str(cert)],
    ):
        subprocess.run([openssl, *step], capture_output=True, check=True)
    key.chmod(0o600)
    return str(cert), str(key)


def test_a_client_certificate_authenticates(
        tls_db: Database, hba_roles: dict[str, str], tmp_path: Path) -> None:
    """pg_hba `cert`: the server authenticates the client's certificate (sslcert/sslkey)."""
    cluster = tls_db.server
    assert isinstance(cluster, PostgresCluster)
    role = hba_roles["cert"]
    wait_for(functools.partial(_method_in_use, cluster, role, "cert"),
             what="the cert pg_hba line")
    cert, key = _client_certificate(cluster, role, tmp_path)
    dsn = _dsn(tls_db, sslcert=cert, sslkey=key).replace(
        f"{cluster.user}:{cluster.password}@", f"{role}@")
    params = _libpq_params(dsn)
    assert not params.password and params.sslcert == cert
    wire = TlsWire(params, "test")
    try:
        assert _identify(wire) == tls_db.name
    finally:
        wire.close()
    # Without the certificate the server refuses (no other line lets this role in).
    bare = TlsParams(**{**params.__dict__, "sslcert": str(tmp_path / "none.crt")})
    with pytest.raises(SourceError) as info:
        TlsWire(bare, "test")
    assert not info.value.retryable and "sslcert" in (info.value.hint or "")


def test_no_room_for_a_second_walsender_falls_back_to_libpq(
        caplog: pytest.LogCaptureFixture, pg_bindir: str | None) -> None:
    """max_wal_senders used up by libpq's own connection: libpq's connection streams."""
    if os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("needs a private cluster; DBMAZZ_TEST_PG_DSN points at a shared server")
    with temporary_cluster({"max_wal_senders": "1"}, tls=True) as cluster:
        name = cluster.create_database()
        db = Database(cluster, name)
        make_table(db)
        make_slot(db)
        db.execute("INSERT INTO t VALUES (1, 'a')")
        with caplog.at_level(logging.WARNING), \
                ReplicationStream.open(_dsn(db), "s1", ["pub"]) as stream:
            assert stream.channel.reader == "libpq"
            msgs = parse_all(read_until(stream, commits(1)))
        assert [texts(m.new) for m in msgs if isinstance(m, po.Insert)] == [["1", "a"]]
        assert any("max_wal_senders" in r.getMessage() for r in caplog.records)
