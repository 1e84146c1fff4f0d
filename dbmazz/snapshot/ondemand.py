"""On-demand snapshot of tables added while CDC keeps running (docs/snapshot.md, "On
demand").

1. The table's key joins the engine's key map and its target table is created, so the
   stream can carry its changes from the moment it is published.
2. The sink starts watching the table (keys CDC touches, truncates).
3. The table joins the publication (replica identity set like setup does).
4. A TEMPORARY logical slot is created with an exported snapshot: its consistent point W is
   an exact watermark — commits before W are in the snapshot, commits from W on are not
   (and, made after the table was published, reach the engine through CDC).
5. Gate: a logical message is emitted after W and the engine's durable LSN waited past it,
   so every change committed before W is applied before any snapshot row is written. A
   TRUNCATE seen meanwhile cannot be placed before or after W: back to 4.
6. Chunks are read inside the exported snapshot and written with version W, minus the keys
   CDC changed at or after W (the watch); after a TRUNCATE newer than W, nothing more.

Without an engine (``dbmazz snapshot --table`` while dbmazz is stopped) steps 2 and 5 are
skipped: nothing is applied concurrently, and the next run replays the stream from its
checkpoint — which is before the publication change — over the loaded rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dbmazz.errors import DbmazzError, SetupError
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.batch import TableBatch, TableSchema
from dbmazz.snapshot.context import (
    LiveEngine,
    Plan,
    SnapshotHost,
    StopCheck,
    describe_schemas,
    reshape_rewritten,
)
from dbmazz.snapshot.progress import ON_DEMAND, SnapshotProgress, progress_for
from dbmazz.snapshot.read import (
    TableRewrittenError,
    create_temporary_slot,
    emit_marker,
    plan_chunks,
    server_supports_tid_ranges,
    table_layouts,
)
from dbmazz.snapshot.sink import Watch
from dbmazz.source.setup import publish_tables
from dbmazz.source.slots import SlotCreation

log = logging.getLogger("dbmazz.snapshot")

MARKER_PREFIX = "dbmazz_snapshot"
_WATERMARK_ATTEMPTS = 3
_GATE_POLL_S = 0.5


class OnDemandSnapshot:
    """One on-demand snapshot: ``start()`` runs it on a thread, ``run()`` in the caller."""

    def __init__(self, snapshots: SnapshotHost, tables: Sequence[str], *,
                 engine: LiveEngine | None, should_stop: StopCheck) -> None:
        self.snapshots = snapshots
        self.tables = list(dict.fromkeys(tables))
        self.engine = engine
        self._should_stop = should_stop
        self._cancel = threading.Event()
        self.progress = SnapshotProgress(kind=ON_DEMAND, waiting="starting")
        self.error: BaseException | None = None
        self.completed = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, daemon=True,
                                        name="dbmazz-snapshot-on-demand")
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """True once finished (check ``completed`` / ``error``)."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        self._cancel.set()

    def _stopping(self) -> bool:
        return self._cancel.is_set() or self._should_stop()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.error = exc
            text = exc.message if isinstance(exc, DbmazzError) else repr(exc)
            self.progress.error = text
            log.error("on-demand snapshot of %s failed: %s", ", ".join(self.tables), text,
                      exc_info=not isinstance(exc, DbmazzError))

    def run(self) -> bool:
        try:
            self.completed = self._run()
            if self.completed:
                self.snapshots.on_demand_finished(self.tables)
            return self.completed
        except BaseException as exc:
            self.error = exc  # before _done is set: whoever waits sees why it ended
            raise
        finally:
            self._done.set()

    # ------------------------------------------------------------------ steps
    def _run(self) -> bool:
        snapshots = self.snapshots
        ctx = snapshots.context
        schemas = self._register()
        watches: dict[str, Watch] = {}
        if self.engine is not None:
            watches = {name: ctx.sink.watch(schema) for name, schema in schemas.items()}
        creation: SlotCreation | None = None
        try:
            publish_tables(ctx.dsn, ctx.publication, self.tables, ctx.replica_identity)
            for attempt in range(1, _WATERMARK_ATTEMPTS + 1):
                if self._stopping():
                    return False
                for watch in watches.values():
                    watch.begin_attempt()
                creation = create_temporary_slot(ctx.dsn, f"dbmazz_snap_{ctx.slot}")
                watermark = creation.consistent_point
                for watch in watches.values():
                    watch.set_watermark(watermark)
                plan = self._plan(watermark, creation.snapshot_name)
                if self.engine is not None and not self._gate(watermark, watches):
                    if self._stopping():
                        return False
                    log.warning("a TRUNCATE of %s was applied while the snapshot waited for "
                                "CDC; taking a new watermark (attempt %d)",
                                ", ".join(self.tables), attempt + 1)
                    creation.close()
                    creation = None
                    continue
                try:
                    return self._load(plan, schemas, watches)
                except TableRewrittenError as exc:
                    log.warning("%s: taking a new watermark (attempt %d)", exc.message,
                                attempt + 1)
                    creation.close()
                    creation = None
                    reshape_rewritten(ctx, schemas, exc.tables)
                    self.snapshots.tables.update(schemas)
                    continue
            raise SetupError(
                f"the snapshot of {', '.join(self.tables)} kept meeting TRUNCATEs or "
                "rewrites (VACUUM FULL, CLUSTER, ALTER TABLE … TYPE) of the table",
                "retry when the table is not being truncated or rewritten",
            )
        finally:
            if creation is not None:
                creation.close()
            for name in watches:
                ctx.sink.unwatch(name)

    def _register(self) -> dict[str, TableSchema]:
        """Target tables created, then keys into the engine's key map. A table that is
        already published (FOR ALL TABLES, TABLES IN SCHEMA) streams its changes into the
        pipeline from the moment its key is known, so its target must exist first; the
        changes it streams before that are not taken, and the snapshot, read at a later
        point, holds them."""
        ctx = self.snapshots.context
        keys, schemas = describe_schemas(ctx, self.tables)
        taken = {t.target_name: t.source_name for t in self.snapshots.tables.values()}
        for schema in schemas.values():
            other = taken.get(schema.target_name)
            if other is not None and other != schema.source_name:
                raise SetupError(
                    f"{schema.source_name} would load into target table "
                    f"{schema.target_name!r}, which {other} already loads into",
                    f"rename it with TABLE_MAP, e.g. TABLE_MAP={schema.source_name}:"
                    f"{schema.namespace}_{schema.name}",
                )
        ctx.sink.setup(list(schemas.values()))
        ctx.keys.add(keys)
        self.snapshots.tables.update(schemas)
        return schemas

    def _plan(self, watermark: int, snapshot_name: str | None) -> Plan:
        ctx = self.snapshots.context
        with ctx.connect() as conn:
            layouts = table_layouts(conn, self.tables, ctx.publication)
            tid_ranges = server_supports_tid_ranges(conn)
        chunks = [c for t in self.tables
                  for c in plan_chunks(layouts[t], ctx.chunk_pages, tid_ranges, ramp=True)]
        ctx.store.save_plan(chunks, watermark, ON_DEMAND, replace_tables=self.tables)
        plan = Plan(watermark, snapshot_name, chunks, [layouts[t] for t in self.tables], {})
        progress = progress_for(ON_DEMAND, watermark, plan.layouts, chunks)
        progress.waiting = "waiting for CDC to reach the snapshot point" if self.engine else ""
        self.progress = progress
        self.snapshots.publish(progress)
        log.info("on-demand snapshot of %s in %d chunk(s), watermark %s",
                 ", ".join(self.tables), len(chunks), format_lsn(watermark))
        return plan

    def _gate(self, watermark: int, watches: dict[str, Watch]) -> bool:
        """Wait until every change committed before ``watermark`` is applied."""
        assert self.engine is not None
        with self.snapshots.context.connect() as conn:
            marker = emit_marker(conn, MARKER_PREFIX, format_lsn(watermark))
        while not self.engine.wait_durable(marker, _GATE_POLL_S):
            if self._stopping():
                return False
        self.progress.waiting = ""
        # Every watch must agree; open all gates (they only record the count).
        return all([watch.open_gate() for watch in watches.values()])

    def _load(self, plan: Plan, schemas: dict[str, TableSchema],
              watches: dict[str, Watch]) -> bool:
        ctx = self.snapshots.context

        def write(batch: TableBatch, chunk: object) -> int:
            return ctx.sink.write_snapshot(batch, watches.get(batch.table.source_name))

        return self.snapshots.load_plan(plan, ON_DEMAND, self._stopping, tables=schemas,
                                        progress=self.progress, write=write)
