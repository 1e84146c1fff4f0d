"""Snapshots (:mod:`dbmazz.engine.metrics`) ↔ protobuf messages, and Arrow ↔ IPC bytes."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.contract import LSN_COLUMN, METADATA_PREFIX, OP_COLUMN
from dbmazz.engine.core import RecentBatch, RunState, Stage
from dbmazz.engine.metrics import (
    MetricsSample,
    StatusSnapshot,
    snapshot_eta_s,
    snapshot_rows_per_s,
)
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.batch import ColumnSpec, TableSchema
from dbmazz.snapshot.progress import SnapshotProgress, TableProgress

if TYPE_CHECKING:
    from dbmazz.verify.report import VerifyReport

# Typed Any: the generated stubs type enum fields as their wrapper classes, not int.
_STAGES: dict[Stage, Any] = {stage: pb.Stage.Value(f"STAGE_{stage.value}") for stage in Stage}
_STATES: dict[RunState, Any] = {s: pb.State.Value(f"STATE_{s.value}") for s in RunState}


def stage_pb(stage: Stage) -> Any:
    return _STAGES[stage]


def state_pb(state: RunState) -> Any:
    return _STATES[state]


def stage_name(value: int) -> str:
    return pb.Stage.Name(value).removeprefix("STAGE_")


def state_name(value: int) -> str:
    return pb.State.Name(value).removeprefix("STATE_")


def lsn_pb(lsn: int) -> pb.Lsn:
    return pb.Lsn(value=lsn, text=format_lsn(lsn))


def status_pb(snap: StatusSnapshot) -> pb.EngineStatus:
    message = pb.EngineStatus(
        stage=stage_pb(snap.stage),
        state=state_pb(snap.state),
        serving=snap.serving,
        received_lsn=lsn_pb(snap.received_lsn),
        confirmed_lsn=lsn_pb(snap.confirmed_lsn),
        server_wal_end=lsn_pb(snap.server_wal_end),
        lag_bytes=snap.lag_bytes,
        replication_lag_ms=snap.replication_lag_ms,
        inflight_bytes=snap.inflight_bytes,
        messages=snap.messages,
        bytes_received=snap.bytes_received,
        flushes=snap.flushes,
        rows_applied=snap.rows_applied,
        tables=[
            pb.TableStatus(
                table=t.table, target=t.target, changes=t.changes, rows_loaded=t.rows_loaded,
                batches=t.batches, truncates=t.truncates, retries=t.retries,
                last_load_ms=t.last_load_ms, in_flight_rows=t.in_flight_rows,
                rejected_rows=t.rejected_rows,
            )
            for t in snap.tables
        ],
        snapshot=snapshot_pb(snap.snapshot, initial_running=snap.stage == Stage.SNAPSHOT),
        settings=pb.FlushSettings(**snap.settings),
        slot=snap.slot,
        publication=snap.publication,
        sink=snap.sink,
        version=snap.version,
        started_at_unix_s=snap.started_at,
        uptime_s=snap.uptime_s,
    )
    if snap.source is not None:
        message.source.CopyFrom(pb.SourceChannel(**dataclasses.asdict(snap.source)))
    slot = snap.slot_health
    if slot is not None:
        message.slot_health.CopyFrom(pb.SlotHealth(
            exists=slot.exists, active=slot.active, active_pid=slot.active_pid or 0,
            retained_known=slot.retained_bytes is not None,
            retained_wal_bytes=slot.retained_bytes or 0, wal_status=slot.wal_status or "",
            safe_wal_size_known=slot.safe_wal_size is not None,
            safe_wal_size=slot.safe_wal_size or 0, warning=slot.warning, error=slot.error,
            sampled_at_unix_s=slot.sampled_at,
        ))
    if snap.slot_failover is not None:
        message.slot_failover = snap.slot_failover
    if snap.slot_synced is not None:
        message.slot_synced = snap.slot_synced
    if snap.error is not None:
        message.last_error.CopyFrom(pb.ErrorInfo(
            message=snap.error.message, hint=snap.error.hint, kind=snap.error.kind,
            fatal=snap.error.fatal, at_unix_s=snap.error.at,
        ))
    return message


def snapshot_pb(progress: SnapshotProgress | None,
                initial_running: bool = False) -> pb.SnapshotProgress:
    """``initial_running``: the engine is in stage SNAPSHOT, possibly before the snapshot
    has planned its chunks (no progress yet)."""
    if progress is None:
        return pb.SnapshotProgress(active=initial_running, kind="initial" if initial_running
                                   else "")
    message = pb.SnapshotProgress(
        active=progress.active,
        tables_total=progress.tables_total,
        tables_done=progress.tables_done,
        rows_copied=progress.rows_copied,
        kind=progress.kind,
        rows_estimate=progress.rows_estimate,
        rows_per_s=snapshot_rows_per_s(progress),
        started_at_unix_s=progress.started_at or 0.0,
        finished_at_unix_s=progress.finished_at or 0.0,
        waiting=progress.waiting,
        error=progress.error or "",
        reader=progress.reader,
        version=lsn_pb(progress.version),
        tables=[_snapshot_table_pb(t) for t in progress.tables.values()],
    )
    eta = snapshot_eta_s(progress)
    if eta is not None:
        message.eta_s = eta
    return message


def _snapshot_table_pb(table: TableProgress) -> pb.SnapshotTableProgress:
    message = pb.SnapshotTableProgress(
        table=table.table, chunks_done=table.chunks_done, chunks_total=table.chunks_total,
        rows_done=table.rows_done, rows_expected=table.rows_expected, done=table.done,
        rows_per_s=table.rows_per_s, pages=table.pages,
        started_at_unix_s=table.started_at or 0.0, finished_at_unix_s=table.finished_at or 0.0,
    )
    eta = table.eta_s
    if eta is not None:
        message.eta_s = eta
    return message


def sample_pb(sample: MetricsSample) -> pb.MetricsSample:
    return pb.MetricsSample(
        at_unix_s=sample.at,
        interval_s=sample.interval_s,
        events_per_s=sample.events_per_s,
        rows_per_s=sample.rows_per_s,
        bytes_per_s=sample.bytes_per_s,
        events=sample.events,
        rows_loaded=sample.rows_loaded,
        batches=sample.batches,
        lag_bytes=sample.lag_bytes,
        replication_lag_ms=sample.replication_lag_ms,
        inflight_bytes=sample.inflight_bytes,
        max_inflight_bytes=sample.max_inflight_bytes,
        rss_bytes=sample.rss_bytes,
        cpu_percent=sample.cpu_percent,
        stage=stage_pb(sample.stage),
        state=state_pb(sample.state),
        received_lsn=sample.received_lsn,
        confirmed_lsn=sample.confirmed_lsn,
        snapshot_active=sample.snapshot.active,
        snapshot_tables_total=sample.snapshot.tables_total,
        snapshot_tables_done=sample.snapshot.tables_done,
        snapshot_rows_copied=sample.snapshot.rows_copied,
        snapshot_rows_estimate=sample.snapshot.rows_estimate,
        snapshot_chunks_done=sample.snapshot.chunks_done,
        snapshot_chunks_total=sample.snapshot.chunks_total,
        snapshot_rows_per_s=sample.snapshot.rows_per_s,
    )


def batch_info(recent: RecentBatch) -> pb.BatchInfo:
    batch = recent.batch
    info = pb.BatchInfo(
        table=recent.source_name,
        rows=batch.num_rows,
        nbytes=batch.nbytes,
        columns=batch.num_columns,
        captured_at_unix_s=recent.captured_at,
        key_columns=list(recent.table.key_columns),
    )
    names = set(batch.column_names)
    if batch.num_rows and LSN_COLUMN in names:
        info.first_lsn = int(pc.min(batch.column(LSN_COLUMN)).as_py())
        info.last_lsn = int(pc.max(batch.column(LSN_COLUMN)).as_py())
    if batch.num_rows and OP_COLUMN in names:
        counts = pc.value_counts(batch.column(OP_COLUMN)).to_pylist()
        by_op = {int(c["values"]): int(c["counts"]) for c in counts}
        info.inserts, info.updates, info.deletes = (by_op.get(i, 0) for i in range(3))
    return info


def table_to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def ipc_to_table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def schema_to_ipc(schema: pa.Schema) -> bytes:
    return bytes(schema.serialize().to_pybytes())


def ipc_to_schema(data: bytes) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(data))


def table_schema_from(name: str, schema: pa.Schema, keys: list[str]) -> TableSchema:
    """A TableSchema good for merging a peeked batch outside the engine (no PG types)."""
    namespace, _, table = name.rpartition(".")
    columns = tuple(
        ColumnSpec(name=f.name, arrow_type=f.type, pg_type_oid=0, pg_type_modifier=-1)
        for f in schema
        if not f.name.startswith(METADATA_PREFIX)
    )
    return TableSchema(namespace=namespace or "public", name=table, columns=columns,
                       key_columns=tuple(keys), target_name=table)


def message_dict(message: Any) -> dict[str, Any]:
    """A proto message as a JSON-ready dict: proto field names, defaults included, enums
    without their STAGE_/STATE_ prefix, 64-bit integers as numbers (not JSON strings)."""
    data: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
        use_integers_for_enums=True,
    )
    _normalize(message, data)
    return data


_INT64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT64)


def _normalize(message: Any, data: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        if field.enum_type is not None and field.enum_type.name in ("Stage", "State"):
            convert = stage_name if field.enum_type.name == "Stage" else state_name
            data[field.name] = convert(int(data[field.name]))
        elif field.type in _INT64:
            value = data[field.name]
            data[field.name] = [int(v) for v in value] if field.is_repeated else int(value)
        elif field.message_type is not None:
            value = getattr(message, field.name)
            if field.is_repeated:
                for item, sub in zip(value, data[field.name], strict=False):
                    _normalize(item, sub)
            else:
                _normalize(value, data[field.name])


def verify_reply(report: VerifyReport) -> pb.VerifyReply:
    """A verify's report as the Verify RPC's reply (the full report also as JSON)."""
    import json

    tables = [
        pb.VerifyTableResult(
            table=t.table, ranges=t.ranges, ranges_checked=t.ranges_checked,
            ranges_differing=t.ranges_differing, source_rows=t.source_rows,
            target_rows=t.target_rows, missing=t.missing, extra=t.extra, changed=t.changed,
            in_flight=t.in_flight, repaired=t.repaired, seconds=t.seconds,
            error=t.error or "", equal=t.equal,
        )
        for t in report.tables
    ]
    return pb.VerifyReply(equal=report.equal, snapshot_lsn=report.snapshot_lsn,
                          target_state=report.target_state, tables=tables,
                          report_json=json.dumps(report.to_dict()))
