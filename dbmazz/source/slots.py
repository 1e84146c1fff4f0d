"""Replication slots: create (optionally exporting a snapshot), inspect, drop on request.

A slot is never dropped implicitly (invariant 5): :func:`drop_slot` exists for the CLI's
explicit ``--drop-slot`` and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from dbmazz.errors import SetupError, SourceConnectionError
from dbmazz.lsn import parse_lsn
from dbmazz.retry import Attempts, RetryPolicy
from dbmazz.source.connection import server_error
from dbmazz.source.database import SourceDatabase
from dbmazz.source.names import describe_dsn, quote_ident, validate_slot_name


@dataclass
class SlotCreation:
    """A freshly created slot and the replication connection that created it.

    With an exported snapshot, ``snapshot_name`` stays importable (``SET TRANSACTION
    SNAPSHOT``) only while ``connection`` stays open and idle: keep this object until the
    snapshot is read, then :meth:`close` it.
    """

    slot: str
    consistent_point: int
    snapshot_name: str | None
    connection: psycopg.Connection

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> SlotCreation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SlotInfo:
    """One row of ``pg_replication_slots`` (``exists=False`` and Nones when absent)."""

    slot: str
    exists: bool
    plugin: str | None = None
    slot_type: str | None = None
    database: str | None = None
    active: bool = False
    active_pid: int | None = None
    confirmed_flush_lsn: int | None = None
    restart_lsn: int | None = None
    #: ``reserved``, ``extended``, ``unreserved`` or ``lost`` (invalidated).
    wal_status: str | None = None
    #: PostgreSQL 17+ (None before): the slot is synchronized to standbys that have
    #: ``sync_replication_slots`` on, so it survives a failover to one of them.
    failover: bool | None = None
    #: PostgreSQL 17+ (None before): the slot was synchronized from a primary — on a
    #: standby, a copy kept for failover; on a promoted standby, the slot it took over.
    synced: bool | None = None


def slot_moved_hint(slot: str) -> str:
    """The fix for a slot found confirmed past what dbmazz confirmed to it."""
    return (
        "dbmazz will not stream from it. If another process uses this SLOT_NAME, stop it "
        "(one slot per pipeline). To start over, drop the slot and its checkpoint (`dbmazz "
        f"slots drop {slot}`) and run with SNAPSHOT=initial to reload the tables; "
        "`dbmazz verify --repair` then removes target rows deleted at the source meanwhile"
    )


def _connect(dsn: str, replication: bool) -> psycopg.Connection:
    return SourceDatabase(dsn).connect("slots", replication=replication)


#: PostgreSQL 17 brought failover slots.
FAILOVER_VERSION = 170000


def failover_unsupported(server_version: int, target: str) -> SetupError:
    return SetupError(
        f"SLOT_FAILOVER=true needs PostgreSQL 17 or newer (failover slots); {target} runs "
        f"PostgreSQL {server_version // 10000}",
        "upgrade the server, or set SLOT_FAILOVER=false (after a failover the slot is then "
        "lost and dbmazz stops with an error naming how to start over)",
    )


def create_slot(dsn: str, slot: str, *, export_snapshot: bool,
                failover: bool = False) -> SlotCreation:
    """``CREATE_REPLICATION_SLOT slot LOGICAL pgoutput``, exporting a snapshot if asked,
    as a failover slot if asked (PostgreSQL 17+; older servers raise :class:`SetupError`).

    Waits for the server to reach a consistent point (for running transactions to end).
    """
    validate_slot_name(slot)
    target = describe_dsn(dsn)
    conn = _connect(dsn, replication=True)
    try:
        version = conn.info.server_version
        if failover and version < FAILOVER_VERSION:
            raise failover_unsupported(version, target)
        modern = version >= 150000
        if modern:
            mode = "'export'" if export_snapshot else "'nothing'"
            suffix = f"(SNAPSHOT {mode}{', FAILOVER' if failover else ''})"
        else:
            suffix = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
        command = f"CREATE_REPLICATION_SLOT {quote_ident(slot)} LOGICAL pgoutput {suffix}"
        row = conn.execute(command.encode()).fetchone()
    except psycopg.errors.DuplicateObject:
        conn.close()
        raise SetupError(
            f"replication slot {slot!r} already exists on {target}",
            "reuse it (dbmazz resumes from it) or choose another SLOT_NAME",
        ) from None
    except psycopg.errors.ConfigurationLimitExceeded as exc:
        conn.close()
        raise SetupError(
            f"cannot create replication slot {slot!r} on {target}: {exc}",
            "drop unused slots (see pg_replication_slots) or raise max_replication_slots "
            "in postgresql.conf and restart PostgreSQL",
        ) from None
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        conn.close()
        raise SetupError(
            f"cannot create replication slot {slot!r} on {target}: {exc}",
            "set wal_level=logical in postgresql.conf and restart PostgreSQL",
        ) from None
    except psycopg.OperationalError as exc:
        conn.close()
        raise SourceConnectionError(f"connection to {target} lost creating slot: {exc}") from None
    except BaseException:
        conn.close()
        raise
    assert row is not None
    _name, consistent_point, snapshot_name, _plugin = row
    return SlotCreation(
        slot=slot,
        consistent_point=parse_lsn(consistent_point),
        snapshot_name=snapshot_name if export_snapshot else None,
        connection=conn,
    )


def set_failover(dsn: str, slot: str) -> None:
    """``ALTER_REPLICATION_SLOT slot (FAILOVER)`` on an existing, inactive slot
    (PostgreSQL 17+; older servers raise :class:`SetupError`)."""
    validate_slot_name(slot)
    target = describe_dsn(dsn)
    with _connect(dsn, replication=True) as conn:
        if conn.info.server_version < FAILOVER_VERSION:
            raise failover_unsupported(conn.info.server_version, target)
        try:
            conn.execute(f"ALTER_REPLICATION_SLOT {quote_ident(slot)} (FAILOVER)".encode())
        except psycopg.errors.ObjectInUse as exc:
            raise SetupError(
                f"cannot make replication slot {slot!r} on {target} a failover slot: {exc}",
                "stop the consumer using it (see pg_stat_replication), then retry",
            ) from None
        except psycopg.errors.FeatureNotSupported as exc:
            # E.g. on a standby: a failover slot is set up on the primary.
            raise SetupError(
                f"cannot make replication slot {slot!r} on {target} a failover slot: {exc}",
                "run setup against the primary",
            ) from None


def read_slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo:
    """:func:`slot_info` over an existing ordinary connection."""
    failover = ("failover, synced" if conn.info.server_version >= FAILOVER_VERSION
                else "NULL::bool, NULL::bool")
    row = conn.execute(
        f"""
        SELECT plugin, slot_type, database, active, active_pid,
               confirmed_flush_lsn::text, restart_lsn::text, wal_status, {failover}
        FROM pg_replication_slots WHERE slot_name = %s
        """,  # failover: one of two constant column lists, never input
        (slot,),
    ).fetchone()
    if row is None:
        return SlotInfo(slot=slot, exists=False)
    (plugin, slot_type, database, active, pid, confirmed, restart, wal_status, is_failover,
     synced) = row
    return SlotInfo(
        slot=slot,
        exists=True,
        plugin=plugin,
        slot_type=slot_type,
        database=database,
        active=bool(active),
        active_pid=pid,
        confirmed_flush_lsn=parse_lsn(confirmed) if confirmed else None,
        restart_lsn=parse_lsn(restart) if restart else None,
        wal_status=wal_status,
        failover=is_failover,
        synced=synced,
    )


def slot_info(dsn: str, slot: str) -> SlotInfo:
    with _connect(dsn, replication=False) as conn:
        return read_slot_info(conn, slot)


def drop_slot(dsn: str, slot: str, *, wait_s: float = 10.0, missing_ok: bool = True) -> bool:
    """Drop ``slot`` (only ever on explicit request). Waits up to ``wait_s`` for an active
    session to release it. Returns whether a slot was dropped."""
    validate_slot_name(slot)
    target = describe_dsn(dsn)
    # The walsender releases the slot on its own schedule: ask again every 50 ms.
    attempts = Attempts(RetryPolicy(max_attempts=None, max_elapsed=wait_s, base_delay=0.05,
                                    max_delay=0.05, jitter=0.0))
    with _connect(dsn, replication=False) as conn:
        while True:
            attempts.start()
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return True
            except psycopg.errors.UndefinedObject:
                if missing_ok:
                    return False
                raise server_error(
                    sqlstate="42704",
                    message=f'replication slot "{slot}" does not exist',
                    target=target,
                    slot=slot,
                ) from None
            except psycopg.errors.ObjectInUse as exc:
                if not attempts.can_retry():
                    raise SetupError(
                        f"replication slot {slot!r} on {target} is in use: {exc}",
                        "stop the consumer using it (see pg_stat_replication), then retry",
                    ) from None
                attempts.backoff()


# --- listing and health (``dbmazz slots``, the engine's slot health) -----------------------

@dataclass(frozen=True)
class SlotRow:
    """A replication slot of the source as ``dbmazz slots`` lists it."""

    name: str
    plugin: str | None
    slot_type: str
    database: str | None
    active: bool
    active_pid: int | None
    #: ``pg_current_wal_lsn() - restart_lsn``: WAL the server keeps for this slot.
    retained_bytes: int | None
    confirmed_flush_lsn: int | None
    #: ``reserved``/``extended``/``unreserved``/``lost`` (PG13+; None before).
    wal_status: str | None
    #: Bytes left before ``max_slot_wal_keep_size`` invalidates the slot (None: no limit).
    safe_wal_size: int | None
    #: ``application_name`` of the session streaming from it (``dbmazz`` for dbmazz).
    consumer: str | None
    #: LSN of its row in ``dbmazz_checkpoints`` (a dbmazz pipeline uses it), else None.
    checkpoint_lsn: int | None


_SLOTS_QUERY = """
SELECT s.slot_name, s.plugin, s.slot_type, s.database, s.active, s.active_pid,
       CASE WHEN s.restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                     ELSE pg_current_wal_lsn() END, s.restart_lsn)::bigint END,
       s.confirmed_flush_lsn::text, {wal_status}, {safe_wal_size},
       (SELECT r.application_name FROM pg_stat_replication r WHERE r.pid = s.active_pid)
FROM pg_replication_slots s {where}
ORDER BY s.slot_name
"""


def read_slots(conn: psycopg.Connection, only: str | None = None) -> list[SlotRow]:
    """Every replication slot of the server (or only ``only``), with dbmazz's checkpoints."""
    modern = conn.info.server_version >= 130000
    query = _SLOTS_QUERY.format(
        wal_status="s.wal_status" if modern else "NULL::text",
        safe_wal_size="s.safe_wal_size" if modern else "NULL::bigint",
        where="WHERE s.slot_name = %s" if only is not None else "")
    rows = conn.execute(query.encode(), (only,) if only is not None else ()).fetchall()
    checkpoints = _checkpoints(conn)
    return [SlotRow(name, plugin, slot_type, database, bool(active), pid,
                    int(retained) if retained is not None else None,
                    parse_lsn(confirmed) if confirmed else None, wal_status,
                    int(safe) if safe is not None else None, consumer,
                    checkpoints.get(name))
            for (name, plugin, slot_type, database, active, pid, retained, confirmed,
                 wal_status, safe, consumer) in rows]


def _checkpoints(conn: psycopg.Connection) -> dict[str, int]:
    """slot → checkpoint LSN from ``public.dbmazz_checkpoints`` of this database."""
    row = conn.execute("SELECT to_regclass('public.dbmazz_checkpoints') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    return {str(slot): parse_lsn(str(lsn)) for slot, lsn in conn.execute(
        "SELECT slot_name, lsn::text FROM public.dbmazz_checkpoints").fetchall()}


def list_slots(dsn: str) -> list[SlotRow]:
    with _connect(dsn, replication=False) as conn:
        return read_slots(conn)
