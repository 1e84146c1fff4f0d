from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_INIT: _ClassVar[Stage]
    STAGE_SETUP: _ClassVar[Stage]
    STAGE_SNAPSHOT: _ClassVar[Stage]
    STAGE_CDC: _ClassVar[Stage]

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_STARTING: _ClassVar[State]
    STATE_RUNNING: _ClassVar[State]
    STATE_PAUSED: _ClassVar[State]
    STATE_DRAINING: _ClassVar[State]
    STATE_STOPPED: _ClassVar[State]
    STATE_FAILED: _ClassVar[State]
STAGE_UNSPECIFIED: Stage
STAGE_INIT: Stage
STAGE_SETUP: Stage
STAGE_SNAPSHOT: Stage
STAGE_CDC: Stage
STATE_UNSPECIFIED: State
STATE_STARTING: State
STATE_RUNNING: State
STATE_PAUSED: State
STATE_DRAINING: State
STATE_STOPPED: State
STATE_FAILED: State

class Lsn(_message.Message):
    __slots__ = ("value", "text")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    value: int
    text: str
    def __init__(self, value: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("message", "hint", "kind", "fatal", "at_unix_s")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    message: str
    hint: str
    kind: str
    fatal: bool
    at_unix_s: float
    def __init__(self, message: _Optional[str] = ..., hint: _Optional[str] = ..., kind: _Optional[str] = ..., fatal: _Optional[bool] = ..., at_unix_s: _Optional[float] = ...) -> None: ...

class FlushSettings(_message.Message):
    __slots__ = ("flush_rows", "flush_bytes", "flush_interval_ms", "max_inflight_bytes")
    FLUSH_ROWS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLUSH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    flush_rows: int
    flush_bytes: int
    flush_interval_ms: int
    max_inflight_bytes: int
    def __init__(self, flush_rows: _Optional[int] = ..., flush_bytes: _Optional[int] = ..., flush_interval_ms: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableStatus(_message.Message):
    __slots__ = ("table", "target", "changes", "rows_loaded", "batches", "truncates", "retries", "last_load_ms", "in_flight_rows", "rejected_rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    ROWS_LOADED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATES_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    LAST_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_ROWS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    target: str
    changes: int
    rows_loaded: int
    batches: int
    truncates: int
    retries: int
    last_load_ms: float
    in_flight_rows: int
    rejected_rows: int
    def __init__(self, table: _Optional[str] = ..., target: _Optional[str] = ..., changes: _Optional[int] = ..., rows_loaded: _Optional[int] = ..., batches: _Optional[int] = ..., truncates: _Optional[int] = ..., retries: _Optional[int] = ..., last_load_ms: _Optional[float] = ..., in_flight_rows: _Optional[int] = ..., rejected_rows: _Optional[int] = ...) -> None: ...

class SnapshotTableProgress(_message.Message):
    __slots__ = ("table", "chunks_done", "chunks_total", "rows_done", "rows_expected", "done", "rows_per_s", "eta_s", "pages", "started_at_unix_s", "finished_at_unix_s")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    table: str
    chunks_done: int
    chunks_total: int
    rows_done: int
    rows_expected: int
    done: bool
    rows_per_s: float
    eta_s: float
    pages: int
    started_at_unix_s: float
    finished_at_unix_s: float
    def __init__(self, table: _Optional[str] = ..., chunks_done: _Optional[int] = ..., chunks_total: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows_expected: _Optional[int] = ..., done: _Optional[bool] = ..., rows_per_s: _Optional[float] = ..., eta_s: _Optional[float] = ..., pages: _Optional[int] = ..., started_at_unix_s: _Optional[float] = ..., finished_at_unix_s: _Optional[float] = ...) -> None: ...

class SnapshotProgress(_message.Message):
    __slots__ = ("active", "tables_total", "tables_done", "rows_copied", "kind", "rows_estimate", "rows_per_s", "eta_s", "started_at_unix_s", "finished_at_unix_s", "waiting", "error", "reader", "version", "tables")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TABLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TABLES_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_COPIED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROWS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    active: bool
    tables_total: int
    tables_done: int
    rows_copied: int
    kind: str
    rows_estimate: int
    rows_per_s: float
    eta_s: float
    started_at_unix_s: float
    finished_at_unix_s: float
    waiting: str
    error: str
    reader: str
    version: Lsn
    tables: _containers.RepeatedCompositeFieldContainer[SnapshotTableProgress]
    def __init__(self, active: _Optional[bool] = ..., tables_total: _Optional[int] = ..., tables_done: _Optional[int] = ..., rows_copied: _Optional[int] = ..., kind: _Optional[str] = ..., rows_estimate: _Optional[int] = ..., rows_per_s: _Optional[float] = ..., eta_s: _Optional[float] = ..., started_at_unix_s: _Optional[float] = ..., finished_at_unix_s: _Optional[float] = ..., waiting: _Optional[str] = ..., error: _Optional[str] = ..., reader: _Optional[str] = ..., version: _Optional[_Union[Lsn, _Mapping]] = ..., tables: _Optional[_Iterable[_Union[SnapshotTableProgress, _Mapping]]] = ...) -> None: ...

class EngineStatus(_message.Message):
    __slots__ = ("stage", "state", "serving", "received_lsn", "confirmed_lsn", "server_wal_end", "lag_bytes", "replication_lag_ms", "inflight_bytes", "messages", "bytes_received", "flushes", "rows_applied", "tables", "last_error", "snapshot", "settings", "slot", "publication", "sink", "version", "started_at_unix_s", "uptime_s", "slot_health", "slot_failover", "slot_synced", "source")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_LSN_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_LSN_FIELD_NUMBER: _ClassVar[int]
    SERVER_WAL_END_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FLUSHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    PUBLICATION_FIELD_NUMBER: _ClassVar[int]
    SINK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SLOT_HEALTH_FIELD_NUMBER: _ClassVar[int]
    SLOT_FAILOVER_FIELD_NUMBER: _ClassVar[int]
    SLOT_SYNCED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    state: State
    serving: bool
    received_lsn: Lsn
    confirmed_lsn: Lsn
    server_wal_end: Lsn
    lag_bytes: int
    replication_lag_ms: float
    inflight_bytes: int
    messages: int
    bytes_received: int
    flushes: int
    rows_applied: int
    tables: _containers.RepeatedCompositeFieldContainer[TableStatus]
    last_error: ErrorInfo
    snapshot: SnapshotProgress
    settings: FlushSettings
    slot: str
    publication: str
    sink: str
    version: str
    started_at_unix_s: float
    uptime_s: float
    slot_health: SlotHealth
    slot_failover: bool
    slot_synced: bool
    source: SourceChannel
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., state: _Optional[_Union[State, str]] = ..., serving: _Optional[bool] = ..., received_lsn: _Optional[_Union[Lsn, _Mapping]] = ..., confirmed_lsn: _Optional[_Union[Lsn, _Mapping]] = ..., server_wal_end: _Optional[_Union[Lsn, _Mapping]] = ..., lag_bytes: _Optional[int] = ..., replication_lag_ms: _Optional[float] = ..., inflight_bytes: _Optional[int] = ..., messages: _Optional[int] = ..., bytes_received: _Optional[int] = ..., flushes: _Optional[int] = ..., rows_applied: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableStatus, _Mapping]]] = ..., last_error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotProgress, _Mapping]] = ..., settings: _Optional[_Union[FlushSettings, _Mapping]] = ..., slot: _Optional[str] = ..., publication: _Optional[str] = ..., sink: _Optional[str] = ..., version: _Optional[str] = ..., started_at_unix_s: _Optional[float] = ..., uptime_s: _Optional[float] = ..., slot_health: _Optional[_Union[SlotHealth, _Mapping]] = ..., slot_failover: _Optional[bool] = ..., slot_synced: _Optional[bool] = ..., source: _Optional[_Union[SourceChannel, _Mapping]] = ...) -> None: ...

class SourceChannel(_message.Message):
    __slots__ = ("tls", "tls_version", "protocol", "streaming", "server_version", "standby", "reader")
    TLS_FIELD_NUMBER: _ClassVar[int]
    TLS_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    tls: bool
    tls_version: str
    protocol: int
    streaming: str
    server_version: int
    standby: bool
    reader: str
    def __init__(self, tls: _Optional[bool] = ..., tls_version: _Optional[str] = ..., protocol: _Optional[int] = ..., streaming: _Optional[str] = ..., server_version: _Optional[int] = ..., standby: _Optional[bool] = ..., reader: _Optional[str] = ...) -> None: ...

class SlotHealth(_message.Message):
    __slots__ = ("exists", "active", "active_pid", "retained_known", "retained_wal_bytes", "wal_status", "safe_wal_size_known", "safe_wal_size", "warning", "error", "sampled_at_unix_s")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_PID_FIELD_NUMBER: _ClassVar[int]
    RETAINED_KNOWN_FIELD_NUMBER: _ClassVar[int]
    RETAINED_WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    SAFE_WAL_SIZE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    SAFE_WAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    active: bool
    active_pid: int
    retained_known: bool
    retained_wal_bytes: int
    wal_status: str
    safe_wal_size_known: bool
    safe_wal_size: int
    warning: str
    error: str
    sampled_at_unix_s: float
    def __init__(self, exists: _Optional[bool] = ..., active: _Optional[bool] = ..., active_pid: _Optional[int] = ..., retained_known: _Optional[bool] = ..., retained_wal_bytes: _Optional[int] = ..., wal_status: _Optional[str] = ..., safe_wal_size_known: _Optional[bool] = ..., safe_wal_size: _Optional[int] = ..., warning: _Optional[str] = ..., error: _Optional[str] = ..., sampled_at_unix_s: _Optional[float] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("wait_timeout_s",)
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    wait_timeout_s: float
    def __init__(self, wait_timeout_s: _Optional[float] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("drop_slot", "wait_timeout_s")
    DROP_SLOT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    drop_slot: bool
    wait_timeout_s: float
    def __init__(self, drop_slot: _Optional[bool] = ..., wait_timeout_s: _Optional[float] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("status", "message", "completed", "slot_dropped")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    SLOT_DROPPED_FIELD_NUMBER: _ClassVar[int]
    status: EngineStatus
    message: str
    completed: bool
    slot_dropped: bool
    def __init__(self, status: _Optional[_Union[EngineStatus, _Mapping]] = ..., message: _Optional[str] = ..., completed: _Optional[bool] = ..., slot_dropped: _Optional[bool] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ("flush_rows", "flush_bytes", "flush_interval_ms", "max_inflight_bytes")
    FLUSH_ROWS_FIELD_NUMBER: _ClassVar[int]
    FLUSH_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLUSH_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    flush_rows: int
    flush_bytes: int
    flush_interval_ms: int
    max_inflight_bytes: int
    def __init__(self, flush_rows: _Optional[int] = ..., flush_bytes: _Optional[int] = ..., flush_interval_ms: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ...) -> None: ...

class ReloadConfigReply(_message.Message):
    __slots__ = ("settings", "changed")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    settings: FlushSettings
    changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, settings: _Optional[_Union[FlushSettings, _Mapping]] = ..., changed: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("tables", "wait", "wait_timeout_s")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedScalarFieldContainer[str]
    wait: bool
    wait_timeout_s: float
    def __init__(self, tables: _Optional[_Iterable[str]] = ..., wait: _Optional[bool] = ..., wait_timeout_s: _Optional[float] = ...) -> None: ...

class SnapshotReply(_message.Message):
    __slots__ = ("accepted", "completed", "message", "error", "tables", "progress")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    completed: bool
    message: str
    error: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    progress: SnapshotProgress
    def __init__(self, accepted: _Optional[bool] = ..., completed: _Optional[bool] = ..., message: _Optional[str] = ..., error: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., progress: _Optional[_Union[SnapshotProgress, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("tables", "ranges", "sample", "max_keys", "repair")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedScalarFieldContainer[str]
    ranges: int
    sample: float
    max_keys: int
    repair: bool
    def __init__(self, tables: _Optional[_Iterable[str]] = ..., ranges: _Optional[int] = ..., sample: _Optional[float] = ..., max_keys: _Optional[int] = ..., repair: _Optional[bool] = ...) -> None: ...

class VerifyTableResult(_message.Message):
    __slots__ = ("table", "ranges", "ranges_checked", "ranges_differing", "source_rows", "target_rows", "missing", "extra", "changed", "in_flight", "repaired", "seconds", "error", "equal")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    RANGES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    RANGES_DIFFERING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ROWS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ROWS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EQUAL_FIELD_NUMBER: _ClassVar[int]
    table: str
    ranges: int
    ranges_checked: int
    ranges_differing: int
    source_rows: int
    target_rows: int
    missing: int
    extra: int
    changed: int
    in_flight: int
    repaired: int
    seconds: float
    error: str
    equal: bool
    def __init__(self, table: _Optional[str] = ..., ranges: _Optional[int] = ..., ranges_checked: _Optional[int] = ..., ranges_differing: _Optional[int] = ..., source_rows: _Optional[int] = ..., target_rows: _Optional[int] = ..., missing: _Optional[int] = ..., extra: _Optional[int] = ..., changed: _Optional[int] = ..., in_flight: _Optional[int] = ..., repaired: _Optional[int] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ..., equal: _Optional[bool] = ...) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("equal", "snapshot_lsn", "target_state", "tables", "report_json")
    EQUAL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_LSN_FIELD_NUMBER: _ClassVar[int]
    TARGET_STATE_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    equal: bool
    snapshot_lsn: str
    target_state: str
    tables: _containers.RepeatedCompositeFieldContainer[VerifyTableResult]
    report_json: str
    def __init__(self, equal: _Optional[bool] = ..., snapshot_lsn: _Optional[str] = ..., target_state: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[VerifyTableResult, _Mapping]]] = ..., report_json: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("interval_ms", "max_samples")
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    interval_ms: int
    max_samples: int
    def __init__(self, interval_ms: _Optional[int] = ..., max_samples: _Optional[int] = ...) -> None: ...

class MetricsSample(_message.Message):
    __slots__ = ("at_unix_s", "interval_s", "events_per_s", "rows_per_s", "bytes_per_s", "events", "rows_loaded", "batches", "lag_bytes", "replication_lag_ms", "inflight_bytes", "max_inflight_bytes", "rss_bytes", "cpu_percent", "stage", "state", "received_lsn", "confirmed_lsn", "snapshot_active", "snapshot_tables_total", "snapshot_tables_done", "snapshot_rows_copied", "snapshot_rows_estimate", "snapshot_chunks_done", "snapshot_chunks_total", "snapshot_rows_per_s")
    AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_LOADED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    LAG_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_LSN_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_LSN_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TABLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TABLES_DONE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ROWS_COPIED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ROWS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ROWS_PER_S_FIELD_NUMBER: _ClassVar[int]
    at_unix_s: float
    interval_s: float
    events_per_s: float
    rows_per_s: float
    bytes_per_s: float
    events: int
    rows_loaded: int
    batches: int
    lag_bytes: int
    replication_lag_ms: float
    inflight_bytes: int
    max_inflight_bytes: int
    rss_bytes: int
    cpu_percent: float
    stage: Stage
    state: State
    received_lsn: int
    confirmed_lsn: int
    snapshot_active: bool
    snapshot_tables_total: int
    snapshot_tables_done: int
    snapshot_rows_copied: int
    snapshot_rows_estimate: int
    snapshot_chunks_done: int
    snapshot_chunks_total: int
    snapshot_rows_per_s: float
    def __init__(self, at_unix_s: _Optional[float] = ..., interval_s: _Optional[float] = ..., events_per_s: _Optional[float] = ..., rows_per_s: _Optional[float] = ..., bytes_per_s: _Optional[float] = ..., events: _Optional[int] = ..., rows_loaded: _Optional[int] = ..., batches: _Optional[int] = ..., lag_bytes: _Optional[int] = ..., replication_lag_ms: _Optional[float] = ..., inflight_bytes: _Optional[int] = ..., max_inflight_bytes: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., stage: _Optional[_Union[Stage, str]] = ..., state: _Optional[_Union[State, str]] = ..., received_lsn: _Optional[int] = ..., confirmed_lsn: _Optional[int] = ..., snapshot_active: _Optional[bool] = ..., snapshot_tables_total: _Optional[int] = ..., snapshot_tables_done: _Optional[int] = ..., snapshot_rows_copied: _Optional[int] = ..., snapshot_rows_estimate: _Optional[int] = ..., snapshot_chunks_done: _Optional[int] = ..., snapshot_chunks_total: _Optional[int] = ..., snapshot_rows_per_s: _Optional[float] = ...) -> None: ...

class BatchInfo(_message.Message):
    __slots__ = ("table", "rows", "nbytes", "columns", "first_lsn", "last_lsn", "inserts", "updates", "deletes", "captured_at_unix_s", "key_columns")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_LSN_FIELD_NUMBER: _ClassVar[int]
    INSERTS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    KEY_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    table: str
    rows: int
    nbytes: int
    columns: int
    first_lsn: int
    last_lsn: int
    inserts: int
    updates: int
    deletes: int
    captured_at_unix_s: float
    key_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[str] = ..., rows: _Optional[int] = ..., nbytes: _Optional[int] = ..., columns: _Optional[int] = ..., first_lsn: _Optional[int] = ..., last_lsn: _Optional[int] = ..., inserts: _Optional[int] = ..., updates: _Optional[int] = ..., deletes: _Optional[int] = ..., captured_at_unix_s: _Optional[float] = ..., key_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBatchesReply(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[BatchInfo]
    def __init__(self, batches: _Optional[_Iterable[_Union[BatchInfo, _Mapping]]] = ...) -> None: ...

class PeekBatchRequest(_message.Message):
    __slots__ = ("table", "max_rows")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    table: str
    max_rows: int
    def __init__(self, table: _Optional[str] = ..., max_rows: _Optional[int] = ...) -> None: ...

class PeekBatchReply(_message.Message):
    __slots__ = ("info", "arrow_ipc_stream")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ARROW_IPC_STREAM_FIELD_NUMBER: _ClassVar[int]
    info: BatchInfo
    arrow_ipc_stream: bytes
    def __init__(self, info: _Optional[_Union[BatchInfo, _Mapping]] = ..., arrow_ipc_stream: _Optional[bytes] = ...) -> None: ...

class SchemaOfRequest(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: str
    def __init__(self, table: _Optional[str] = ...) -> None: ...

class SchemaOfReply(_message.Message):
    __slots__ = ("table", "arrow_schema_ipc", "source", "key_columns")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ARROW_SCHEMA_IPC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    KEY_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    table: str
    arrow_schema_ipc: bytes
    source: str
    key_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[str] = ..., arrow_schema_ipc: _Optional[bytes] = ..., source: _Optional[str] = ..., key_columns: _Optional[_Iterable[str]] = ...) -> None: ...
