"""``dbmazz verify``: compare the target with the source, optionally repair; exit 0 only
when equal.

When the engine that streams SLOT_NAME answers at GRPC_HOST:GRPC_PORT, the command asks it
(Verify RPC): it reads its target through its own connection and repairs through its own
sink. Otherwise the command verifies from this process; if an engine holds the slot but its
control plane does not answer, it waits on that engine's checkpoint and refuses to repair.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from dbmazz.api.client import running_engine
from dbmazz.cli import load_config
from dbmazz.config import Config
from dbmazz.log import configure_logging
from dbmazz.pipeline.batch import TableBatch, TableSchema
from dbmazz.verify.report import KeyDiff, TableResult, VerifyReport, render
from dbmazz.verify.run import RepairRefused, VerifyRequest, open_target, run_verify
from dbmazz.verify.target import DuckDBTarget, TargetReader

if TYPE_CHECKING:
    from dbmazz.sink.base import Sink


def cmd_verify(args: argparse.Namespace) -> int:
    config = load_config(args)
    configure_logging(config.log_level, config.log_format)
    request = VerifyRequest(tables=tuple(args.table), ranges=args.ranges, sample=args.sample,
                            max_keys=args.max_keys, repair=args.repair)
    # Checked here as well as where it runs: the control plane's request cannot say "none
    # given" (0 means the default there), so a bad value must not reach it.
    request.options()
    client = running_engine(config)
    if client is not None:
        with client:
            report = report_from_dict(client.verify(
                list(request.tables), ranges=request.ranges, sample=request.sample,
                max_keys=request.max_keys, repair=request.repair))
        # The engine lists its default for 0 (the request cannot say "none"): list what a
        # verify run here would, --max-keys of each kind.
        for table in report.tables:
            seen: Counter[str] = Counter()
            kept = []
            for diff in table.diffs:
                seen[diff.kind] += 1
                if seen[diff.kind] <= request.max_keys:
                    kept.append(diff)
            table.diffs = kept
    else:
        report = _locally(config, request)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console

        Console().print(render(report, request.max_keys))
    return report.exit_code


def _locally(config: Config, request: VerifyRequest) -> VerifyReport:
    from dbmazz.source.slots import slot_info

    if request.repair and slot_info(config.source_dsn, config.slot_name).active:
        raise RepairRefused(
            f"replication slot {config.slot_name!r} is in use: dbmazz is running, but no "
            "control plane of it answers, so the repair cannot be ordered against its writes",
            "point GRPC_HOST/GRPC_PORT (and GRPC_TOKEN) at the running engine, or stop it",
        )
    sink: Sink | None = None
    target: TargetReader
    if request.repair:
        from dbmazz.engine.build import make_sink
        from dbmazz.sink.duckdb import DuckDBSink

        sink = make_sink(config)
        # One process may open a DuckDB file once: read through the sink's database.
        target = (DuckDBTarget(sink.read_cursor(), owned=True)
                  if isinstance(sink, DuckDBSink) else open_target(config))
    else:
        target = open_target(config)
    try:
        write = _writer(sink) if sink is not None else None
        return run_verify(config, request, target=target, write=write)
    finally:
        target.close()
        if sink is not None:
            sink.close()


def _writer(sink: Sink) -> Any:
    ready: set[str] = set()

    def write(batch: TableBatch) -> object:
        table: TableSchema = batch.table
        if table.source_name not in ready:
            sink.setup([table])  # the sink learns the table (it exists: it was compared)
            ready.add(table.source_name)
        return sink.write(batch)

    return write


def report_from_dict(data: dict[str, Any]) -> VerifyReport:
    """The JSON form (``--json``, ``client.verify()``) back into a report."""
    tables = []
    for t in data.get("tables", []):
        diffs = [KeyDiff(d["kind"], d["key"], tuple(d.get("columns", ())))
                 for d in t.get("diffs", [])]
        fields = {k: v for k, v in t.items() if k in TableResult.__dataclass_fields__
                  and k != "diffs"}
        tables.append(TableResult(**fields, diffs=diffs))
    return VerifyReport(snapshot_lsn=data["snapshot_lsn"], target_state=data["target_state"],
                        sample=data.get("sample", 1.0), repaired=data.get("repaired", False),
                        tables=tables, seconds=data.get("seconds", 0.0),
                        notes=list(data.get("notes", [])))


