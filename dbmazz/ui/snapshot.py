"""``dbmazz snapshot``: snapshot tables into the target, with progress bars.

* The slot does not exist yet, or its initial snapshot was interrupted (and no ``--table``
  is given): take / finish the initial snapshot of TABLES (like ``run`` with
  ``SNAPSHOT=initial_only``) and leave the slot for ``dbmazz run``.
* Otherwise: an on-demand snapshot of the ``--table`` tables (default: TABLES) under a
  temporary slot. They join the publication and are replicated by every later ``run``.

A running engine holds the slot: it takes on-demand snapshots itself
(``Engine.request_snapshot``), so this command refuses to race it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from dbmazz.cli import load_config
from dbmazz.config import Config
from dbmazz.engine.snapshot_load import SnapshotProgress, TableProgress
from dbmazz.errors import DbmazzError, SetupError
from dbmazz.log import configure_logging
from dbmazz.source.catalog import split_table_name


def _qualified(name: str) -> str:
    schema, table = split_table_name(name)
    return f"{schema}.{table}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    from dbmazz.source.slots import slot_info
    from dbmazz.state.snapshot_progress import INITIAL, SnapshotProgressStore

    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    dsn = config.source_dsn
    wanted = [_qualified(t) for t in args.table]
    info = slot_info(dsn, config.slot_name)
    if info.exists and info.active:
        raise SetupError(
            f"replication slot {config.slot_name!r} is in use (pid {info.active_pid}): dbmazz "
            "is running",
            "the running engine snapshots tables itself (Engine.request_snapshot, its API); "
            "or stop it and run this command again",
        )
    store = SnapshotProgressStore(dsn, config.slot_name)
    try:
        unfinished = any(not r.done for r in store.load(INITIAL)) if info.exists else False
    finally:
        store.close()
    if not info.exists or (unfinished and not wanted):
        tables = list(dict.fromkeys([*config.tables, *wanted]))
        return _initial(config.model_copy(update={"snapshot": "initial_only",
                                                  "tables": tables}))
    return _on_demand(config, wanted or [_qualified(t) for t in config.tables])


def _initial(config: Config) -> int:
    from dbmazz.engine.build import build_live_engine

    engine = build_live_engine(config)
    engine.start()
    try:
        show_progress(lambda: engine.snapshot_progress, lambda: engine.wait(0.2))
    except KeyboardInterrupt:
        engine.stop()
        engine.wait(60)
        raise
    finally:
        engine.sink.close()
    print(f"initial snapshot complete; slot {config.slot_name} is ready for `dbmazz run`",
          file=sys.stderr)
    return 0


def _on_demand(config: Config, tables: list[str]) -> int:
    import psycopg

    from dbmazz.engine.build import make_sink
    from dbmazz.engine.setup.postgres import primary_keys
    from dbmazz.engine.snapshot import SnapshotContext, Snapshots
    from dbmazz.engine.snapshot_ondemand import OnDemandSnapshot
    from dbmazz.engine.snapshot_sink import SnapshotAwareSink
    from dbmazz.pipeline.schema_cache import SchemaCache, keys_from_map
    from dbmazz.source.catalog import describe_relations
    from dbmazz.state.snapshot_progress import SnapshotProgressStore

    dsn = config.source_dsn
    others = [_qualified(t) for t in config.tables if _qualified(t) not in tables]
    with psycopg.connect(dsn, autocommit=True) as conn:
        keys = primary_keys(conn, others, strict=False)
        relations = describe_relations(conn, others)
    schemas = SchemaCache(keys_from_map(keys), config.table_map)
    known = {name: schemas.build(rel) for name, rel in relations.items() if keys.get(name)}
    sink = SnapshotAwareSink(make_sink(config))
    context = SnapshotContext(
        dsn=dsn, slot=config.slot_name, publication=config.publication_name,
        replica_identity=config.replica_identity, sink=sink, schemas=schemas, keys=keys,
        store=SnapshotProgressStore(dsn, config.slot_name), workers=config.snapshot_workers,
    )
    snapshots = Snapshots(context, mode="never", tables=known, source=None, checkpoint=None)
    stop = threading.Event()
    handle = OnDemandSnapshot(snapshots, tables, engine=None, should_stop=stop.is_set)
    handle.start()
    try:
        show_progress(lambda: handle.progress.copy(), lambda: handle.wait(0.2))
    except KeyboardInterrupt:
        stop.set()
        handle.wait(60)
        raise
    finally:
        sink.close()
        context.store.close()
    if handle.error is not None:
        if isinstance(handle.error, DbmazzError):
            raise handle.error
        raise RuntimeError(f"snapshot failed: {handle.error!r}")
    print(f"snapshot of {', '.join(tables)} complete; they are replicated by `dbmazz run` "
          "from now on", file=sys.stderr)
    return 0


# --- progress bars --------------------------------------------------------------------------
def _rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f}M rows/s"
    if rows_per_s >= 1e3:
        return f"{rows_per_s / 1e3:.1f}k rows/s"
    return f"{rows_per_s:.0f} rows/s"


def _eta(table: TableProgress) -> str:
    eta = table.eta_s
    if table.done:
        return "done"
    if eta is None:
        return "ETA -"
    minutes, seconds = divmod(int(eta), 60)
    return f"ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def show_progress(read: Callable[[], SnapshotProgress | None],
                  finished: Callable[[], bool], console: Console | None = None) -> None:
    """One bar per table (rows, rows/s, ETA) until ``finished()`` returns True.

    ``finished`` is expected to block briefly (it paces the refresh). Without a terminal
    nothing is drawn: the snapshot logs its progress instead.
    """
    console = console or Console(stderr=True)
    if not console.is_terminal:
        while not finished():
            pass
        return
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[rows]}"), TextColumn("{task.fields[rate]}"),
               TextColumn("{task.fields[eta]}"))
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console, transient=False) as bars:
        while True:
            done = finished()
            progress = read()
            for name, table in (progress.tables if progress else {}).items():
                if name not in tasks:
                    tasks[name] = bars.add_task(name, total=None, rows="", rate="", eta="")
                expected = table.rows_expected
                bars.update(tasks[name], completed=table.rows_done,
                            total=expected or None,
                            rows=f"{table.rows_done:,}/{expected:,} rows",
                            rate=_rate(table.rows_per_s), eta=_eta(table))
            if done:
                return
