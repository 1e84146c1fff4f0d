"""Prometheus ``/metrics`` (``METRICS_PORT``): the numbers Status reports, as dbmazz_* series.

A custom collector reads one status snapshot per scrape, so the exporter never disagrees
with gRPC Status and costs nothing between scrapes. It uses its own registry: the process
collector is added explicitly and nothing else in the process leaks in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dbmazz.engine.core import RunState, Stage
from dbmazz.engine.metrics import SnapshotTotals, StatusSnapshot
from dbmazz.engine.service import EngineService
from dbmazz.errors import ConfigError
from dbmazz.snapshot.progress import SnapshotProgress

log = logging.getLogger(__name__)


class ServiceCollector(Collector):
    def __init__(self, service: EngineService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        snap = self._service.status()
        info = InfoMetricFamily("dbmazz", "dbmazz build and pipeline identity")
        info.add_metric([], {"version": snap.version, "slot": snap.slot,
                             "publication": snap.publication, "sink": snap.sink})
        yield info

        stages = GaugeMetricFamily("dbmazz_stage", "Lifecycle stage (1 for the current one)",
                                   labels=["stage"])
        for stage in Stage:
            stages.add_metric([stage.value], 1.0 if snap.stage == stage else 0.0)
        yield stages
        states = GaugeMetricFamily("dbmazz_state", "Run state (1 for the current one)",
                                   labels=["state"])
        for state in RunState:
            states.add_metric([state.value], 1.0 if snap.state == state else 0.0)
        yield states
        yield GaugeMetricFamily("dbmazz_serving", "1 when health reports SERVING",
                                value=1.0 if snap.serving else 0.0)
        yield GaugeMetricFamily("dbmazz_failed", "1 when a fatal error stopped the engine",
                                value=1.0 if snap.error is not None and snap.error.fatal else 0.0)
        yield GaugeMetricFamily("dbmazz_load_failing_seconds",
                                "Seconds loads into the target have been failing and "
                                "retrying (0 while they succeed)", value=snap.load_failing_s)
        yield GaugeMetricFamily("dbmazz_retrying",
                                "1 while a retried problem (failing loads, a lost "
                                "connection) is current",
                                value=1.0 if snap.error is not None and not snap.error.fatal
                                else 0.0)

        counters = (
            ("dbmazz_events", "pgoutput messages received", snap.messages),
            ("dbmazz_received_bytes", "Replication bytes received", snap.bytes_received),
            ("dbmazz_batches", "Flushes applied to the target", snap.flushes),
            ("dbmazz_changes_applied", "Source changes applied to the target", snap.rows_applied),
            ("dbmazz_rows_loaded", "Rows written to the target", snap.rows_loaded),
        )
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)
        gauges = (
            ("dbmazz_received_lsn", "Highest WAL position read", snap.received_lsn),
            ("dbmazz_confirmed_lsn", "WAL position durable in the target and confirmed",
             snap.confirmed_lsn),
            ("dbmazz_server_wal_end_lsn", "Latest WAL end the server reported",
             snap.server_wal_end),
            ("dbmazz_lag_bytes", "Server WAL end minus confirmed LSN", snap.lag_bytes),
            ("dbmazz_replication_lag_seconds", "Age of the oldest received change not loaded",
             snap.replication_lag_ms / 1000),
            ("dbmazz_inflight_bytes", "Bytes read and not yet loaded", snap.inflight_bytes),
            ("dbmazz_max_inflight_bytes", "MAX_INFLIGHT_BYTES in effect",
             snap.settings.get("max_inflight_bytes", 0)),
            ("dbmazz_uptime_seconds", "Seconds since the service started", snap.uptime_s),
        )
        for name, text, gauge in gauges:
            yield GaugeMetricFamily(name, text, value=gauge)

        yield from _slot_metrics(snap)

        per_table = {
            "changes": CounterMetricFamily("dbmazz_table_changes", "Source changes applied",
                                           labels=["table"]),
            "rows_loaded": CounterMetricFamily("dbmazz_table_rows_loaded",
                                               "Rows written to the target", labels=["table"]),
            "batches": CounterMetricFamily("dbmazz_table_batches", "Batches loaded",
                                           labels=["table"]),
            "truncates": CounterMetricFamily("dbmazz_table_truncates", "Truncates applied",
                                             labels=["table"]),
            "retries": CounterMetricFamily("dbmazz_table_retries", "Load retries",
                                           labels=["table"]),
        }
        last_load = GaugeMetricFamily("dbmazz_table_last_load_seconds",
                                      "Duration of the last load", labels=["table"])
        in_flight = GaugeMetricFamily("dbmazz_table_in_flight_rows",
                                      "Rows of the last decoded batch", labels=["table"])
        rejected = CounterMetricFamily(
            "dbmazz_rejected_rows", "Rows the target rejected, recorded in dbmazz_rejected "
            "(REJECTED_ROWS=table)", labels=["table"])
        for table in snap.tables:
            for field, family in per_table.items():
                family.add_metric([table.table], float(getattr(table, field)))
            last_load.add_metric([table.table], table.last_load_ms / 1000)
            in_flight.add_metric([table.table], float(table.in_flight_rows))
            rejected.add_metric([table.table], float(table.rejected_rows))
        yield from per_table.values()
        yield last_load
        yield in_flight
        yield rejected
        yield from _snapshot_metrics(snap.snapshot)
        if snap.source is not None:
            source = snap.source
            yield GaugeMetricFamily("dbmazz_source_tls",
                                    "1 when the connection to the source is TLS-encrypted",
                                    value=1.0 if source.tls else 0.0)
            channel = InfoMetricFamily("dbmazz_source", "How dbmazz reaches the source")
            channel.add_metric([], {"tls_version": source.tls_version,
                                    "protocol": str(source.protocol),
                                    "streaming": source.streaming,
                                    "server_version": str(source.server_version),
                                    "standby": str(source.standby).lower(),
                                    "reader": source.reader})
            yield channel
        yield from _verify_metrics()


def _verify_metrics() -> Iterator[Metric]:
    """The last verify of each table run by this engine (the Verify RPC)."""
    from dbmazz.verify.service import LAST_RESULTS

    families = {
        "equal": GaugeMetricFamily("dbmazz_verify_equal",
                                   "1 when the table's last verify found it equal",
                                   labels=["table"]),
        "missing": GaugeMetricFamily("dbmazz_verify_missing_rows",
                                     "Keys in the source missing in the target (last verify)",
                                     labels=["table"]),
        "extra": GaugeMetricFamily("dbmazz_verify_extra_rows",
                                   "Keys in the target only (last verify)", labels=["table"]),
        "changed": GaugeMetricFamily("dbmazz_verify_changed_rows",
                                     "Keys whose columns differ (last verify)",
                                     labels=["table"]),
        "rows": GaugeMetricFamily("dbmazz_verify_rows", "Source rows compared (last verify)",
                                  labels=["table"]),
        "seconds": GaugeMetricFamily("dbmazz_verify_duration_seconds",
                                     "Duration of the table's last verify", labels=["table"]),
        "at": GaugeMetricFamily("dbmazz_verify_timestamp_seconds",
                                "Unix time of the table's last verify", labels=["table"]),
    }
    for r in LAST_RESULTS.snapshot():
        families["equal"].add_metric([r.table], 1.0 if r.equal else 0.0)
        families["missing"].add_metric([r.table], r.missing)
        families["extra"].add_metric([r.table], r.extra)
        families["changed"].add_metric([r.table], r.changed)
        families["rows"].add_metric([r.table], r.rows)
        families["seconds"].add_metric([r.table], r.seconds)
        families["at"].add_metric([r.table], r.at_unix_s)
    yield from families.values()


def _slot_metrics(snap: StatusSnapshot) -> Iterator[Metric]:
    """The replication slot's health; no series before the first sample."""
    slot = snap.slot_health
    if slot is None:
        return
    yield GaugeMetricFamily("dbmazz_slot_exists", "1 when the replication slot exists",
                            value=1.0 if slot.exists else 0.0)
    yield GaugeMetricFamily("dbmazz_slot_active", "1 when a session streams from the slot",
                            value=1.0 if slot.active else 0.0)
    if slot.retained_bytes is not None:
        yield GaugeMetricFamily("dbmazz_slot_retained_wal_bytes",
                                "WAL the server keeps for the slot (current LSN - restart_lsn)",
                                value=float(slot.retained_bytes))
    if slot.safe_wal_size is not None:
        yield GaugeMetricFamily("dbmazz_slot_safe_wal_size_bytes",
                                "Bytes before max_slot_wal_keep_size invalidates the slot",
                                value=float(slot.safe_wal_size))
    if slot.wal_status:
        status = GaugeMetricFamily("dbmazz_slot_wal_status",
                                   "The slot's wal_status (1 for the current one)",
                                   labels=["wal_status"])
        for name in ("reserved", "extended", "unreserved", "lost"):
            status.add_metric([name], 1.0 if slot.wal_status == name else 0.0)
        yield status
    yield GaugeMetricFamily("dbmazz_slot_warning",
                            "1 when the slot needs attention (SLOT_WAL_WARN_BYTES, "
                            "wal_status unreserved/lost, missing)",
                            value=1.0 if slot.warning else 0.0)


def _snapshot_metrics(progress: SnapshotProgress | None) -> Iterator[Metric]:
    """The running (else the last) snapshot; zeros and no table series before any."""
    totals = SnapshotTotals.of(progress)
    yield GaugeMetricFamily("dbmazz_snapshot_active", "1 while a snapshot is loading",
                            value=1.0 if totals.active else 0.0)
    yield GaugeMetricFamily("dbmazz_snapshot_tables_total", "Tables of the snapshot",
                            value=float(totals.tables_total))
    yield GaugeMetricFamily("dbmazz_snapshot_tables_done", "Tables of the snapshot loaded",
                            value=float(totals.tables_done))
    per_table = {
        "rows_done": GaugeMetricFamily("dbmazz_snapshot_rows_copied",
                                       "Rows the snapshot loaded", labels=["table"]),
        "rows_expected": GaugeMetricFamily(
            "dbmazz_snapshot_rows_estimate",
            "Rows the snapshot expects (planner estimate; exact once done)", labels=["table"]),
        "chunks_done": GaugeMetricFamily("dbmazz_snapshot_chunks_done",
                                         "Chunks the snapshot loaded", labels=["table"]),
        "chunks_total": GaugeMetricFamily("dbmazz_snapshot_chunks_total",
                                          "Chunks the snapshot planned", labels=["table"]),
    }
    for table in (progress.tables.values() if progress is not None else ()):
        for field, family in per_table.items():
            family.add_metric([table.table], float(getattr(table, field)))
    yield from per_table.values()


class MetricsServer:
    """``/metrics`` over HTTP on ``host:port`` (``port=0`` picks a free port)."""

    def __init__(self, service: EngineService, *, host: str = "127.0.0.1", port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))
        ProcessCollector(namespace="dbmazz", registry=self.registry)
        self.host = host
        self._requested_port = port
        self.port = 0
        self._httpd: WSGIServer | None = None
        self._thread: Thread | None = None

    def start(self) -> int:
        try:
            self._httpd, self._thread = start_http_server(self._requested_port, self.host,
                                                          registry=self.registry)
        except OSError as exc:
            raise ConfigError([f"METRICS_PORT: cannot listen on {self.host}:"
                               f"{self._requested_port} ({exc.strerror}); choose another "
                               "METRICS_PORT, or 0 to disable /metrics"]) from None
        self.port = int(self._httpd.server_address[1])
        log.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
