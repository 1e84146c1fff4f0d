"""The engine's snapshot stage: the initial snapshot before streaming, and on-demand
snapshots of tables added while CDC runs. The reasoning is in docs/snapshot.md.

Initial snapshot (``SNAPSHOT=initial|initial_only``):

* new slot — created with an exported snapshot; every chunk is read inside it and its rows
  carry the slot's consistent point C as ``dbmazz_cdc_version``; streaming starts at C once
  every chunk is loaded (the checkpoint does not move before).
* interrupted snapshot — the plan in ``dbmazz_snapshot_progress`` says which chunks are
  left; they are read under a fresh snapshot (the exported one died with the crash), still
  with version C. CDC from C replays every later change in order over them, so the result
  is exact. A table whose replica identity is not FULL is read again entirely (see the doc).
* existing slot, nothing recorded — streamed before (a checkpoint exists): nothing to do;
  never streamed: a full snapshot under a fresh snapshot, version = the slot's position.

Tables joining TABLES (new in it, or taken out and put back) after the slot began streaming
missed changes, or never had their rows loaded: once streaming runs, an on-demand snapshot
loads them (``SNAPSHOT=initial``; other modes warn), and
:mod:`dbmazz.snapshot.replicated` records them when it is complete.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from dbmazz.errors import DbmazzError, SetupError
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.batch import TableSchema
from dbmazz.snapshot.context import (
    LiveEngine,
    Plan,
    SnapshotContext,
    StopCheck,
    on_demand_tables,
    reshape_rewritten,
)
from dbmazz.snapshot.load import ChunkLoader
from dbmazz.snapshot.ondemand import OnDemandSnapshot
from dbmazz.snapshot.progress import (
    INITIAL,
    ON_DEMAND,
    ChunkRecord,
    SnapshotProgress,
    SnapshotProgressStore,
    progress_for,
)
from dbmazz.snapshot.read import (
    Chunk,
    TableLayout,
    TableRewrittenError,
    plan_chunks,
    server_supports_tid_ranges,
    table_layouts,
)
from dbmazz.source.database import SourceDatabase
from dbmazz.source.setup import SourceSetup

log = logging.getLogger("dbmazz.snapshot")

_REPORT_EVERY_S = 10.0
#: Times the initial snapshot reads tables again after finding them rewritten.
_REWRITE_ATTEMPTS = 3


class Snapshots:
    """The snapshot side of one live engine (``engine.snapshots``)."""

    def __init__(
        self,
        context: SnapshotContext,
        *,
        mode: str,
        tables: dict[str, TableSchema],
        source: SourceSetup | None,
        checkpoint: int | None,
    ) -> None:
        self.context = context
        self.mode = mode
        self.tables = tables
        self.source = source
        self.checkpoint = checkpoint
        self._lock = threading.Lock()
        self._progress: SnapshotProgress | None = None
        self._on_demand: list[OnDemandSnapshot] = []
        self._joined: list[str] = []
        #: The engine streams (set when it restarts interrupted on-demand snapshots).
        self._streaming = False

    # ------------------------------------------------------------------ observation
    @property
    def progress(self) -> SnapshotProgress | None:
        """The running snapshot's progress (else the last one's), as a copy."""
        with self._lock:
            current = self._progress
            return current.copy() if current is not None else None

    def publish(self, progress: SnapshotProgress) -> None:
        with self._lock:
            self._progress = progress

    @property
    def stop_after_initial(self) -> bool:
        return self.mode == "initial_only"

    @property
    def wants_initial(self) -> bool:
        return self.mode in ("initial", "initial_only") and self.source is not None

    # ------------------------------------------------------------------ initial
    def run_initial(self, should_stop: StopCheck) -> bool:
        """Take (or finish) the initial snapshot; True when complete, False when stopped."""
        try:
            if not self.wants_initial:
                return True
            plan = self._initial_plan()
            for attempt in range(1, _REWRITE_ATTEMPTS + 1):
                if plan is None:
                    return True
                try:
                    return self.load_plan(plan, INITIAL, should_stop)
                except TableRewrittenError as exc:
                    if attempt == _REWRITE_ATTEMPTS:
                        raise
                    log.warning("%s: reading them again under a newer snapshot", exc.message)
                    plan = self._read_again(exc.tables)
            return False  # not reached: the last attempt returns or raises
        finally:
            self.close_exported()

    def _read_again(self, rewritten: Sequence[str]) -> Plan | None:
        """The plan that reads ``rewritten`` again entirely, and what else is left, each
        chunk under a fresh snapshot with the same version: the resume of an interrupted
        snapshot (module docstring), so the result is exact for the same reason."""
        self.close_exported()
        reshape_rewritten(self.context, self.tables, rewritten)
        store = self.context.store
        store.reset(rewritten, INITIAL)
        with self.context.connect() as conn:
            layouts = table_layouts(conn, list(self.tables), self.context.publication)
        return self._resume_plan(store.load(INITIAL), layouts)

    def close_exported(self) -> None:
        creation = self.source.slot_creation if self.source is not None else None
        if creation is not None:
            creation.close()

    def _initial_plan(self) -> Plan | None:
        ctx = self.context
        assert self.source is not None
        names = list(self.tables)
        with ctx.connect() as conn:
            layouts = table_layouts(conn, names, ctx.publication)
            tid_ranges = server_supports_tid_ranges(conn)
        creation = self.source.slot_creation
        if self.source.slot_created and creation is not None:
            version = self.source.consistent_point or creation.consistent_point
            chunks = [c for t in names for c in plan_chunks(layouts[t], ctx.chunk_pages,
                                                             tid_ranges, ramp=True)]
            ctx.store.save_plan(chunks, version, INITIAL)
            log.info("initial snapshot of %d table(s) in %d chunk(s) at %s", len(names),
                     len(chunks), format_lsn(version))
            return Plan(version, creation.snapshot_name, chunks, list(layouts.values()), {})
        records = ctx.store.load(INITIAL)
        if records:
            return self._resume_plan(records, layouts)
        if self.checkpoint is not None:
            log.info("slot %s has streamed before (checkpoint %s): no initial snapshot",
                     ctx.slot, format_lsn(self.checkpoint))
            return None
        version = self.source.confirmed_flush_lsn or 0
        chunks = [c for t in names for c in plan_chunks(layouts[t], ctx.chunk_pages,
                                                         tid_ranges, ramp=True)]
        ctx.store.save_plan(chunks, version, INITIAL)
        log.info("slot %s exists but never streamed: initial snapshot of %d table(s) at %s",
                 ctx.slot, len(names), format_lsn(version))
        return Plan(version, None, chunks, list(layouts.values()), {})

    def _resume_plan(self, records: list[ChunkRecord],
                     layouts: dict[str, TableLayout]) -> Plan | None:
        if all(r.done for r in records):
            log.info("initial snapshot already complete")
            return None
        version = records[0].version
        by_table: dict[str, list[ChunkRecord]] = {}
        for record in records:
            by_table.setdefault(record.chunk.table, []).append(record)
        chunks: list[Chunk] = []
        done: dict[str, tuple[int, int]] = {}
        for table, recs in by_table.items():
            layout = layouts.get(table)
            if layout is None:
                log.warning("the interrupted snapshot planned %s, which is no longer in "
                            "TABLES: skipped", table)
                continue
            left = [r for r in recs if not r.done]
            if left and layout.replica_identity != "f":
                # Chunk-level resume relies on full rows in every update (docs/snapshot.md).
                left = recs
            chunks += [Chunk(table, r.chunk.index, r.chunk.first_page, r.chunk.end_page,
                             layout.partitioned, layout.row_filter) for r in left]
            finished = [r for r in recs if r.done and r not in left]
            done[table] = (len(finished), sum(r.rows or 0 for r in finished))
        log.info("resuming the interrupted initial snapshot: %d of %d chunk(s) left, "
                 "version %s", len(chunks), len(records), format_lsn(version))
        return Plan(version, None, chunks,
                     [layouts[t] for t in by_table if t in layouts], done)

    def load_plan(self, plan: Plan, kind: str, should_stop: StopCheck, *,
              tables: dict[str, TableSchema] | None = None,
              progress: SnapshotProgress | None = None,
              write: Callable[..., int] | None = None) -> bool:
        ctx = self.context
        progress = progress or progress_for(kind, plan.version, plan.layouts, plan.chunks,
                                            plan.done)
        progress.version = plan.version
        progress.active = True
        progress.started_at = time.time()
        self.publish(progress)
        tables = tables if tables is not None else self.tables
        bulk: set[str] = set()
        loader = ChunkLoader(
            dsn=ctx.dsn,
            snapshot_name=plan.snapshot_name,
            chunks=plan.chunks,
            tables=tables,
            version=plan.version,
            run_id=secrets.token_hex(3),
            write=write or (lambda batch, chunk: ctx.sink.write_snapshot(batch)),
            store=ctx.store,
            progress=progress,
            lock=self._lock,
            workers=ctx.workers,
            should_stop=should_stop,
            reader_kind=ctx.reader_kind,
            registry=ctx.schemas.types,
            table_loaded=lambda name: self._finish_bulk(bulk, tables[name]),
            hold_after=ctx.hold_after_chunks,
        )
        reporter = _Reporter(self, progress)
        reporter.start()
        try:
            self._begin_bulk(plan, kind, tables, bulk)
            complete = loader.run() if plan.chunks else True
        except BaseException as exc:
            progress.error = exc.message if isinstance(exc, DbmazzError) else repr(exc)
            raise
        finally:
            reporter.stop()
            self._abandon_bulk(bulk, tables)
            progress.active = False
            progress.finished_at = time.time()
        if complete:
            log.info("%s snapshot complete: %d row(s) in %.1fs", kind.replace("_", "-"),
                     progress.rows_copied, progress.finished_at - progress.started_at)
        return complete

    def _begin_bulk(self, plan: Plan, kind: str, tables: dict[str, TableSchema],
                    bulk: set[str]) -> None:
        """Initial snapshot only (nothing streams until it is complete): let the sink load
        each table whose target is empty in bulk (DuckDB: without its primary key, added
        once at the table's last chunk); adds those tables to ``bulk``. An on-demand
        snapshot runs beside CDC, whose upserts need the key: never in bulk."""
        if kind != INITIAL:
            return
        for name in dict.fromkeys(c.table for c in plan.chunks):
            if self.context.sink.begin_snapshot(tables[name]):
                bulk.add(name)

    def _finish_bulk(self, bulk: set[str], table: TableSchema) -> None:
        if table.source_name in bulk:
            self.context.sink.finish_snapshot(table)
            bulk.discard(table.source_name)

    def _abandon_bulk(self, bulk: set[str], tables: dict[str, TableSchema]) -> None:
        """A stopped or failed snapshot leaves its targets with their key (a crash leaves
        that to the sink's setup at the next start)."""
        for name in sorted(bulk):
            try:
                self._finish_bulk(bulk, tables[name])
            except DbmazzError as exc:
                log.warning("%s: %s (the next start repairs it)", name, exc.message)

    # ------------------------------------------------------------------ on demand
    def request(self, tables: Sequence[str], engine: LiveEngine | None,
                should_stop: StopCheck) -> OnDemandSnapshot:
        """Start an on-demand snapshot of ``tables`` on its own thread; returns its handle
        (:class:`dbmazz.snapshot.ondemand.OnDemandSnapshot`)."""
        if engine is not None and not self._streaming:
            # Before streaming, the table would join the initial snapshot's plan (which
            # replaces every plan of the slot) and lose its on-demand record: after a
            # restart it would no longer be replicated.
            raise SetupError("cannot take an on-demand snapshot yet: the engine does not "
                             "stream (setup or initial snapshot)",
                             "retry once it streams (stage CDC)")
        with self._lock:
            busy = {t for h in self._on_demand if h.running for t in h.tables}
        wanted = [t if "." in t else f"public.{t}" for t in tables]
        clash = sorted(busy & set(wanted))
        if clash:
            raise SetupError(f"a snapshot of {', '.join(clash)} is already running",
                             "wait for it to finish (see Status)")
        handle = OnDemandSnapshot(self, wanted, engine=engine, should_stop=should_stop)
        with self._lock:
            self._on_demand.append(handle)
        handle.start()
        return handle

    def resume_on_demand(self, engine: LiveEngine,
                         should_stop: StopCheck) -> OnDemandSnapshot | None:
        """Restart on-demand snapshots a crash or stop interrupted (from scratch: their
        temporary slot died with the process), and load the tables that joined TABLES
        (:meth:`reconcile_tables`)."""
        self._streaming = True
        # A snapshot already running (requested as streaming began) has unfinished chunks
        # too: it is under way, not interrupted; asking for it again would clash.
        with self._lock:
            running = {t for h in self._on_demand if h.running for t in h.tables}
        pending = sorted({r.chunk.table for r in self.context.store.load(ON_DEMAND)
                          if not r.done} - running)
        joined = [t for t in self._joined if t not in pending and t not in running]
        self._joined = []
        if pending:
            log.info("restarting the interrupted on-demand snapshot of %s",
                     ", ".join(pending))
        if joined:
            log.info("loading the rows of %s with an on-demand snapshot: joined TABLES "
                     "after slot %s began streaming", ", ".join(joined), self.context.slot)
        if not pending and not joined:
            return None
        return self.request([*pending, *joined], engine, should_stop)

    # ------------------------------------------------------------------ table record
    def reconcile_tables(self) -> None:
        """Record which configured tables the slot replicates whole, and keep those that
        joined TABLES since it began streaming for :meth:`resume_on_demand`. Joined: not
        recorded, not covered by the initial snapshot, not loaded by an on-demand one, or
        added to the publication only now."""
        source = self.source
        if source is None:
            return
        ctx = self.context
        configured = list(source.tables)
        try:
            covered = self._covered(configured, source)
            joined = [t for t in configured if t not in covered]
            # Joined tables are recorded only once loaded, whatever the mode: a later
            # SNAPSHOT=initial run still loads them.
            ctx.replicated.replace(t for t in configured if t not in joined)
        finally:
            ctx.replicated.close()
        if joined and self.mode != "initial":
            log.warning(
                "%s joined TABLES after slot %s began streaming, and SNAPSHOT=%s does not "
                "load their rows: only changes from now on reach the target (load them with "
                "`dbmazz snapshot --table`, or run with SNAPSHOT=initial)",
                ", ".join(joined), ctx.slot, self.mode)
            joined = []
        self._joined = joined

    def _covered(self, configured: list[str], source: SourceSetup) -> set[str]:
        store = self.context.store
        if source.slot_created:
            return set(configured)  # the initial snapshot (or SNAPSHOT=never by choice)
        if self.checkpoint is None:  # never streamed: the initial plan covers its tables
            covered = {r.chunk.table for r in store.load(INITIAL)}
            if not covered:
                return set(configured)  # a full initial snapshot now
        else:
            recorded = self.context.replicated.load()  # None: a slot from before the record
            covered = set(configured) if recorded is None else recorded
        covered |= set(on_demand_tables(store))
        # Out of the publication until now: pgoutput passed their changes over.
        return covered - set(source.tables_added)


    def on_demand_finished(self, tables: Sequence[str]) -> None:
        """Configured tables among ``tables`` are replicated whole from now on. They are
        recorded as such rather than as on-demand additions, which stay replicated
        whatever TABLES says: taking one out of TABLES later then stops it."""
        configured = set(self.source.tables) if self.source is not None else set()
        done = [t for t in tables if t in configured]
        if not done:
            return
        ctx = self.context
        try:
            ctx.replicated.add(done)
        finally:
            ctx.replicated.close()
        ctx.store.forget(done, ON_DEMAND)


class _Reporter:
    """Logs snapshot progress every few seconds (the CLI draws bars instead)."""

    def __init__(self, snapshots: Snapshots, progress: SnapshotProgress) -> None:
        self._progress = progress
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dbmazz-snapshot-report",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(_REPORT_EVERY_S):
            p = self._progress
            log.info("snapshot: %d/%d table(s), %d of ~%d row(s)", p.tables_done,
                     p.tables_total, p.rows_copied, p.rows_estimate)


def replicated_extra_tables(dsn: str, slot: str, configured: Sequence[str]) -> list[str]:
    """Tables outside TABLES that an on-demand snapshot added to this slot's replication."""
    store = SnapshotProgressStore(SourceDatabase(dsn), slot)
    try:
        return [t for t in on_demand_tables(store) if t not in set(configured)]
    finally:
        store.close()
