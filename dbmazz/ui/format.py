"""Human rendering of engine status: sizes, durations, sparklines, the status table.

Sizes use :func:`dbmazz.log.human_bytes`, shared with log and error messages below the UI."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api.convert import stage_name, state_name
from dbmazz.log import human_bytes

_BLOCKS = "▁▂▃▄▅▆▇█"
#: A finished snapshot stays on screen this long (then only Status --json has it).
SNAPSHOT_SHOWN_FOR_S = 600.0
STATE_STYLES = {
    "RUNNING": "bold green",
    "PAUSED": "bold yellow",
    "DRAINING": "bold cyan",
    "STARTING": "bold blue",
    "STOPPED": "bold white",
    "FAILED": "bold red",
}


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


def human_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """Unicode block sparkline of the last ``width`` values, scaled to their maximum."""
    tail = list(values)[-width:]
    if not tail:
        return ""
    top = max(tail)
    if top <= 0:
        return _BLOCKS[0] * len(tail)
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, int(v / top * (len(_BLOCKS) - 1) + 0.5))]
                   for v in tail)


def state_text(status: pb.EngineStatus) -> Text:
    state = state_name(status.state)
    return Text(state, style=STATE_STYLES.get(state, "bold"))


def error_panel(status: pb.EngineStatus) -> Panel | None:
    if not status.HasField("last_error"):
        return None
    error = status.last_error
    body = Text(error.message, style="red" if error.fatal else "yellow")
    if error.hint:
        body.append("\nfix: ", style="bold").append(error.hint)
    title = f"{'error' if error.fatal else 'retrying'}" + (f" ({error.kind})" if error.kind else "")
    return Panel(body, title=title, border_style="red" if error.fatal else "yellow")


def channel_text(source: pb.SourceChannel) -> str:
    """The source connection in one line: encryption, server, protocol, standby."""
    tls = f"TLS ({source.tls_version or 'encrypted'})" if source.tls else "not encrypted"
    major = source.server_version // 10000
    parts = [tls, f"PostgreSQL {major}" if major else "PostgreSQL",
             f"pgoutput protocol {source.protocol}, streaming {source.streaming or 'off'}",
             f"{source.reader} reader"]
    if source.standby:
        parts.append("from a standby")
    return ", ".join(parts)


def slot_flags(status: pb.EngineStatus) -> str:
    """`` (failover)``, `` (failover, synced)``… from PostgreSQL 17's slot flags."""
    flags = []
    if status.HasField("slot_failover"):
        flags.append("failover" if status.slot_failover else "no failover")
    if status.HasField("slot_synced") and status.slot_synced:
        flags.append("synced")
    return f" ({', '.join(flags)})" if flags else ""


def overview_table(status: pb.EngineStatus) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    grid.add_row("state", Text.assemble(state_text(status), f"  (stage {stage_name(status.stage)}"
                                        f", {'serving' if status.serving else 'not serving'})"))
    grid.add_row("source", f"slot {status.slot or '-'}{slot_flags(status)}, "
                           f"publication {status.publication or '-'}")
    if status.HasField("source"):
        grid.add_row("connection", channel_text(status.source))
    grid.add_row("sink", status.sink or "-")
    grid.add_row("received LSN", status.received_lsn.text or "0/0")
    grid.add_row("confirmed LSN", status.confirmed_lsn.text or "0/0")
    grid.add_row("lag", f"{human_bytes(status.lag_bytes)}, "
                        f"{human_duration(status.replication_lag_ms / 1000)}")
    if status.HasField("slot_health"):
        grid.add_row("slot", slot_text(status.slot_health))
    grid.add_row("in flight", human_bytes(status.inflight_bytes)
                 + f" of {human_bytes(status.settings.max_inflight_bytes)}")
    grid.add_row("applied", f"{status.rows_applied:,} changes in {status.flushes:,} batches "
                            f"({status.messages:,} messages, {human_bytes(status.bytes_received)})")
    settings = status.settings
    grid.add_row("flush", f"{settings.flush_rows:,} rows / {human_bytes(settings.flush_bytes)} / "
                          f"{settings.flush_interval_ms} ms")
    grid.add_row("uptime", human_duration(status.uptime_s) + f"  (dbmazz {status.version})")
    return grid


def slot_text(slot: pb.SlotHealth) -> Text:
    """The slot's health on one line: retained WAL, wal_status, safe size, activity."""
    if slot.error:
        return Text(slot.error, style="yellow")
    if not slot.exists:
        return Text("missing", style="red")
    parts = [f"retains {human_bytes(slot.retained_wal_bytes)}" if slot.retained_known
             else "retains ?"]
    if slot.wal_status:
        parts.append(f"wal_status {slot.wal_status}")
    if slot.safe_wal_size_known:
        parts.append(f"{human_bytes(max(slot.safe_wal_size, 0))} before invalidation")
    parts.append(f"active (pid {slot.active_pid})" if slot.active else "inactive")
    text = Text(", ".join(parts))
    if slot.warning:
        text.append(f"  ⚠ {slot.warning}", style="bold yellow")
    return text


def tables_table(status: pb.EngineStatus) -> Table:
    # Optional columns only when they say something, so the table fits 80 columns.
    renamed = any(t.target and t.target != t.table.split(".")[-1] for t in status.tables)
    retried = any(t.retries for t in status.tables)
    rejected = any(t.rejected_rows for t in status.tables)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False,
                  collapse_padding=True)
    table.add_column("table", no_wrap=True)
    if renamed:
        table.add_column("target", no_wrap=True)
    for name in ("changes", "loaded", "batches", "in flight", "last load"):
        table.add_column(name, justify="right", no_wrap=True)
    if retried:
        table.add_column("retries", justify="right", no_wrap=True, style="yellow")
    if rejected:
        table.add_column("rejected", justify="right", no_wrap=True, style="red")
    for t in status.tables:
        cells = [t.table, *([t.target or "-"] if renamed else []), f"{t.changes:,}",
                 f"{t.rows_loaded:,}", f"{t.batches:,}", f"{t.in_flight_rows:,}",
                 f"{t.last_load_ms:.0f} ms" if t.batches else "-"]
        if retried:
            cells.append(str(t.retries))
        if rejected:
            cells.append(f"{t.rejected_rows:,}")
        table.add_row(*cells)
    return table


def human_eta(eta_s: float | None) -> str:
    if eta_s is None:
        return "ETA -"
    minutes, seconds = divmod(int(eta_s), 60)
    return f"ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


def snapshot_shown(snapshot: pb.SnapshotProgress, now: float | None = None) -> bool:
    """Show a snapshot while it runs and for a while after it ended (or failed)."""
    if snapshot.active:
        return True
    ended = snapshot.finished_at_unix_s or snapshot.started_at_unix_s
    if not ended:  # failed before loading anything, or none yet
        return bool(snapshot.error)
    return (now or time.time()) - ended < SNAPSHOT_SHOWN_FOR_S


def _eta_of(message: pb.SnapshotProgress | pb.SnapshotTableProgress) -> float | None:
    return message.eta_s if message.HasField("eta_s") else None


def snapshot_panel(snapshot: pb.SnapshotProgress) -> Panel:
    """One line for the snapshot, one bar per table (rows, rows/s, ETA)."""
    kind = snapshot.kind.replace("_", "-") or "initial"
    done = snapshot.tables_total and snapshot.tables_done == snapshot.tables_total
    if snapshot.error:
        state = Text("failed", style="bold red")
    elif snapshot.active:
        state = Text("running", style="bold cyan")
    else:
        state = Text("complete" if done else "stopped", style="bold green" if done else "yellow")
    headline = Text.assemble(
        state, f"  {snapshot.tables_done}/{snapshot.tables_total} table(s), "
        f"{snapshot.rows_copied:,} of ~{snapshot.rows_estimate:,} rows, "
        f"{human_count(snapshot.rows_per_s)} rows/s",
        f", {human_eta(_eta_of(snapshot))}" if snapshot.active else "")
    parts: list[RenderableType] = [headline]
    if snapshot.waiting:
        parts.append(Text(f"waiting: {snapshot.waiting}", style="yellow"))
    if snapshot.error:
        parts.append(Text(snapshot.error, style="red"))
    bars = Table.grid(padding=(0, 2))
    for table in snapshot.tables:
        expected = max(table.rows_expected, table.rows_done)
        bars.add_row(table.table,
                     ProgressBar(total=max(1, expected), completed=table.rows_done, width=30),
                     f"{table.rows_done:,}/{expected:,} rows",
                     f"{human_count(table.rows_per_s)} rows/s",
                     "done" if table.done else human_eta(_eta_of(table)))
    parts.append(bars)
    return Panel(Group(*parts), title=f"{kind} snapshot", border_style="cyan")


def status_renderable(status: pb.EngineStatus, address: str) -> RenderableType:
    parts: list[RenderableType] = [Panel(overview_table(status), title=f"dbmazz @ {address}")]
    if snapshot_shown(status.snapshot):
        parts.append(snapshot_panel(status.snapshot))
    if status.tables:
        parts.append(tables_table(status))
    panel = error_panel(status)
    if panel is not None:
        parts.append(panel)
    return Group(*parts)
