"""End to end on what differs between sources: TLS to the source, streamed large
transactions (the highest pgoutput protocol each server speaks), decoding from a standby.

These run on every server of the version matrix (``make test-matrix``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from dbmazz.api.client import Client
from dbmazz.api.prometheus import ServiceCollector
from dbmazz.engine.service import EngineService
from dbmazz.errors import SetupError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.protocol import max_protocol
from dbmazz.testing.fixtures import Database, StandbyPair
from dbmazz.testing.postgres import PostgresCluster, wait_for_replay
from dbmazz.ui.format import channel_text
from tests.e2e.harness import assert_replicated, duckdb_config, mark, served
from tests.scripted import eventually

ITEMS = {"public.items": ["id"]}


def _items(db: Database, rows: int = 100) -> None:
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text, qty int)")
    db.execute("INSERT INTO public.items SELECT g, 'item ' || g, g %% 7 "
               "FROM generate_series(1, %s) g", (rows,))


@contextlib.contextmanager
def _service(db: Database, tmp_path: Path, **config: object) -> Iterator[
        tuple[EngineService, Client, DuckDBSink]]:
    cfg = duckdb_config(db, tmp_path, list(ITEMS), **config)
    sink = DuckDBSink(cfg.duckdb_path)
    with served(cfg, sink, setup_timeout_s=180) as (service, _server, client):
        eventually(lambda: service.status().source is not None or service.failed,
                   "the stream to open", 180)
        assert not service.failed, service.error
        yield service, client, sink


def _loaded(service: EngineService, lsn: int) -> None:
    engine = service.engine
    assert engine is not None
    assert engine.wait_durable(lsn, 180), f"not loaded up to {lsn}: {engine.progress}"


# -- TLS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["verify-full", "require", "disable"])
def test_tls_source_streams_snapshots_and_checkpoints(
    tls_db: Database, tmp_path: Path, sslmode: str
) -> None:
    server = tls_db.server
    assert isinstance(server, PostgresCluster) and server.tls is not None
    params = {"sslmode": sslmode}
    if sslmode == "verify-full":
        params["sslrootcert"] = str(server.tls.ca_file)
    url = server.dsn(tls_db.name, **params)
    if sslmode == "verify-full":  # the certificate names localhost, not only the address
        url = url.replace("@127.0.0.1:", "@localhost:")
    _items(tls_db)  # existing rows: loaded by the initial snapshot over the same channel
    with _service(tls_db, tmp_path, source_url=url) as (service, client, sink):
        tls_db.execute("UPDATE public.items SET qty = -1 WHERE id <= 10")
        tls_db.execute("INSERT INTO public.items VALUES (1000, 'new', 1)")
        _loaded(service, mark(tls_db))
        assert_replicated(tls_db, sink, ITEMS)
        encrypted = sslmode != "disable"
        # Every connection dbmazz holds to the database is (not) encrypted, as asked.
        ssl_rows = tls_db.query(
            "SELECT s.ssl, a.backend_type FROM pg_stat_ssl s JOIN pg_stat_activity a "
            "USING (pid) WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
            "AND a.application_name <> ''"
        )
        assert ssl_rows and {row[0] for row in ssl_rows} == {encrypted}, ssl_rows
        [(checkpoint,)] = tls_db.query("SELECT count(*) FROM dbmazz_checkpoints")
        assert checkpoint == 1

        status = client.status()
        assert status.source.tls is encrypted
        assert status.source.tls_version.startswith("TLS") if encrypted else \
            status.source.tls_version == ""
        # Over TLS the socket reader reads dbmazz's own TLS connection.
        assert status.source.reader == ("tls" if encrypted else "socket")
        text = channel_text(status.source)
        assert text.startswith(f"TLS ({status.source.tls_version})" if encrypted
                               else "not encrypted"), text
        registry = CollectorRegistry()
        registry.register(ServiceCollector(service))
        metrics = generate_latest(registry).decode()
        assert f"dbmazz_source_tls {1.0 if encrypted else 0.0}" in metrics


def test_tls_stream_resumes_after_its_walsender_is_terminated(
    tls_db: Database, tmp_path: Path
) -> None:
    """The own TLS connection dies with its walsender: the engine reconnects (again over
    its own TLS connection) and every change arrives."""
    _items(tls_db)
    url = tls_db.server.dsn(tls_db.name, sslmode="require")
    with _service(tls_db, tmp_path, source_url=url) as (service, client, sink):
        tls_db.execute("INSERT INTO public.items VALUES (1000, 'before', 1)")
        _loaded(service, mark(tls_db))

        def walsenders() -> list[int]:
            rows = tls_db.query("SELECT active_pid FROM pg_replication_slots "
                                "WHERE database = current_database() AND active")
            return [int(str(pid)) for (pid,) in rows if pid is not None]

        [first] = walsenders()
        tls_db.execute("SELECT pg_terminate_backend(%s)", (first,))
        tls_db.execute("UPDATE public.items SET qty = -1 WHERE id <= 10")
        tls_db.execute("DELETE FROM public.items WHERE id BETWEEN 20 AND 29")
        tls_db.execute("INSERT INTO public.items VALUES (1001, 'after', 2)")
        _loaded(service, mark(tls_db))
        assert_replicated(tls_db, sink, ITEMS)
        assert walsenders() not in ([], [first])  # a new session
        assert client.status().source.reader == "tls"


# -- streamed large transactions -----------------------------------------------------------


def test_streamed_transactions_replicate_on_every_version(pg_db: Database,
                                                          tmp_path: Path) -> None:
    """Large transactions arrive streamed (logical_decoding_work_mem is tiny), with a rolled
    back subtransaction and an aborted streamed transaction: the target gets exactly the
    committed rows."""
    pg_db.execute(f'ALTER DATABASE "{pg_db.name}" SET logical_decoding_work_mem = \'64kB\'')
    _items(pg_db, rows=10)
    with _service(pg_db, tmp_path) as (service, client, sink):
        status = client.status()
        highest = max_protocol(pg_db.server.version_num())
        assert status.source.protocol == highest
        assert status.source.streaming == ("parallel" if highest >= 4 else "on")
        with pg_db.connect() as conn, conn.transaction():
            conn.execute("INSERT INTO public.items SELECT g, repeat('x', 200), 1 "
                         "FROM generate_series(1000, 4999) g")
            conn.execute("SAVEPOINT a")
            conn.execute("INSERT INTO public.items SELECT g, repeat('y', 200), 2 "
                         "FROM generate_series(10000, 13999) g")
            conn.execute("ROLLBACK TO SAVEPOINT a")
            conn.execute("UPDATE public.items SET qty = qty + 10 WHERE id < 3000")
            conn.execute("DELETE FROM public.items WHERE id BETWEEN 4000 AND 4099")
        with pg_db.connect() as conn, contextlib.suppress(RuntimeError), conn.transaction():
            conn.execute("INSERT INTO public.items SELECT g, repeat('z', 200), 3 "
                         "FROM generate_series(20000, 23999) g")
            raise RuntimeError("roll back the whole streamed transaction")
        _loaded(service, mark(pg_db))
        assert_replicated(pg_db, sink, ITEMS)
        [(streamed,)] = pg_db.query(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'dbmazz_e2e'")
        assert streamed and streamed >= 1, "nothing was streamed: the test is void"


# -- logical decoding from a standby (PostgreSQL 16+) --------------------------------------


def _standby_db(pair: StandbyPair) -> tuple[Database, Database]:
    name = pair.primary.create_database()
    wait_for_replay(pair.primary, pair.standby)
    return Database(pair.primary, name), Database(pair.standby, name)


@contextlib.contextmanager
def _running_xacts_pump(primary: Database) -> Iterator[None]:
    """Slot creation on a standby waits for the primary's next running-xacts record
    (written every 15 s on a busy primary): write one now and then while setup runs."""
    done = threading.Event()

    def pump() -> None:
        with primary.connect() as conn:
            while not done.wait(0.2):
                conn.execute("SELECT pg_log_standby_snapshot()")

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def test_source_url_on_a_standby_needs_the_primary(pg_standby_pair: StandbyPair,
                                                   tmp_path: Path) -> None:
    primary, standby = _standby_db(pg_standby_pair)
    _items(primary)
    wait_for_replay(pg_standby_pair.primary, pg_standby_pair.standby)
    from dbmazz.engine.build import build_live_engine

    with pytest.raises(SetupError, match="hot standby") as info:
        build_live_engine(duckdb_config(standby, tmp_path, list(ITEMS)))
    assert "PRIMARY_URL" in str(info.value)
    assert not standby.query("SELECT * FROM pg_replication_slots"), "nothing was created"


def test_streams_from_a_standby_with_setup_on_the_primary(pg_standby_pair: StandbyPair,
                                                          tmp_path: Path) -> None:
    primary, standby = _standby_db(pg_standby_pair)
    _items(primary)
    with _running_xacts_pump(primary), _service(
        standby, tmp_path, primary_url=primary.dsn
    ) as (service, client, sink):
        status = client.status()
        assert status.source.standby and status.stage
        # The slot is on the standby; publication, identity and checkpoints on the primary.
        assert [r[0] for r in standby.query(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")] == \
            ["dbmazz_e2e"]
        assert not primary.query(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'")
        primary.execute("UPDATE public.items SET qty = -1 WHERE id <= 10")
        primary.execute("DELETE FROM public.items WHERE id > 90")
        primary.execute("INSERT INTO public.items VALUES (1000, 'new', 1)")
        _loaded(service, mark(primary))
        assert_replicated(primary, sink, ITEMS)
        [(checkpoint,)] = primary.query("SELECT count(*) FROM dbmazz_checkpoints")
        assert checkpoint == 1
        # dbmazz verify too: its marker is written on the primary (was: on the standby,
        # "cannot assign TransactionIds during recovery").
        sink.query("UPDATE public.items SET qty = 99 WHERE id = 7")
        report = client.verify(repair=True)
        assert [(d["kind"], d["key"]) for d in report["tables"][0]["diffs"]] == [
            ("changed", {"id": 7})]
        assert client.verify()["equal"]
