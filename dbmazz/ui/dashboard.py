"""``dbmazz top``: a live dashboard fed by the Metrics stream and Status polling."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dbmazz.api._proto import dbmazz_pb2 as pb
from dbmazz.api.client import Client
from dbmazz.errors import DbmazzError
from dbmazz.log import human_bytes
from dbmazz.signals import wait_for
from dbmazz.ui.format import (
    error_panel,
    human_count,
    human_duration,
    slot_text,
    snapshot_panel,
    snapshot_shown,
    sparkline,
    state_text,
    tables_table,
)

HISTORY = 120


class DashboardState:
    """What the dashboard shows; the metrics thread and the status poller both feed it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.status: pb.EngineStatus | None = None
        self.samples: deque[pb.MetricsSample] = deque(maxlen=HISTORY)
        self.problem: str | None = None  # connection trouble, shown instead of stale data
        self.lock = threading.Lock()

    def add_sample(self, sample: pb.MetricsSample) -> None:
        with self.lock:
            self.samples.append(sample)


def render(state: DashboardState) -> RenderableType:
    with state.lock:
        status, samples, problem = state.status, list(state.samples), state.problem
    header = Text.assemble(("dbmazz top", "bold"), f"  {state.address}  ",
                           (time.strftime("%H:%M:%S"), "dim"), ("  q or Ctrl-C quits", "dim"))
    if status is None:
        return Panel(Text(problem or "connecting…", style="red" if problem else "dim"),
                     title=header)
    last = samples[-1] if samples else None
    parts: list[RenderableType] = [Panel(_summary(status, last), title=header),
                                   _throughput(samples)]
    if snapshot_shown(status.snapshot):
        parts.append(snapshot_panel(status.snapshot))
    parts.append(tables_table(status))
    panel = error_panel(status)
    if panel is not None:
        parts.append(panel)
    if problem:
        parts.append(Text(problem, style="bold red"))
    return Group(*parts)


def _summary(status: pb.EngineStatus, last: pb.MetricsSample | None) -> RenderableType:
    stage = pb.Stage.Name(status.stage).removeprefix("STAGE_")
    inflight = last.inflight_bytes if last else status.inflight_bytes
    limit = (last.max_inflight_bytes if last else 0) or status.settings.max_inflight_bytes
    sep = ("  │  ", "dim")
    line1 = Text.assemble(
        "state ", state_text(status), f" {stage}", sep,
        f"confirmed {status.confirmed_lsn.text or '0/0'}", sep,
        f"received {status.received_lsn.text or '0/0'}", sep,
        f"lag {human_bytes(status.lag_bytes)} / "
        f"{human_duration(status.replication_lag_ms / 1000)}",
    )
    line2 = Text.assemble(
        f"rows loaded {human_count(sum(t.rows_loaded for t in status.tables))}", sep,
        f"batches {status.flushes:,}", sep,
        f"RSS {human_bytes(last.rss_bytes)}" if last else "RSS -", sep,
        f"CPU {last.cpu_percent:.0f}%" if last else "CPU -", sep,
        f"uptime {human_duration(status.uptime_s)}",
    )
    lines: list[RenderableType] = [line1, line2]
    if status.HasField("slot_health"):
        lines.append(Text.assemble("slot ", slot_text(status.slot_health)))
    memory = Table.grid(padding=(0, 1))
    memory.add_row("in flight", ProgressBar(total=max(1, limit), completed=min(inflight, limit),
                                            width=30),
                   f"{human_bytes(inflight)} / {human_bytes(limit)}")
    return Group(*lines, memory)


def _throughput(samples: list[pb.MetricsSample]) -> Panel:
    events = [s.events_per_s for s in samples]
    rows = [s.rows_per_s for s in samples]
    body = Table.grid(padding=(0, 2))
    body.add_column(style="dim", width=10)
    body.add_column()
    body.add_column(justify="right")
    body.add_row("events/s", Text(sparkline(events, 60), style="cyan"),
                 human_count(events[-1]) if events else "-")
    body.add_row("rows/s", Text(sparkline(rows, 60), style="green"),
                 human_count(rows[-1]) if rows else "-")
    return Panel(body, title="throughput", border_style="dim")


def _follow_metrics(client: Client, state: DashboardState, interval_ms: int,
                    stop: threading.Event) -> None:
    """Consume the Metrics stream; on a broken stream, note it and reconnect."""
    while not stop.is_set():
        try:
            stream = client.metrics(interval_ms=interval_ms)
            for sample in stream:
                state.add_sample(sample)
                if stop.is_set():
                    stream.close()
                    return
        except DbmazzError as exc:
            with state.lock:
                state.problem = exc.message
        stop.wait(1.0)


@contextlib.contextmanager
def _quit_key(done: threading.Event) -> Iterator[None]:
    """On a terminal, ``q`` sets ``done`` (keys are read unbuffered, without echo, and the
    terminal is restored afterwards); elsewhere Ctrl-C remains the way out."""
    if not sys.stdin.isatty():
        yield
        return
    import select
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    stop = threading.Event()

    def read_keys() -> None:
        while not stop.is_set() and not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready and os.read(fd, 1) in (b"q", b"Q"):
                done.set()

    reader = threading.Thread(target=read_keys, name="dbmazz-top-keys", daemon=True)
    tty.setcbreak(fd)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join(1.0)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def once(client: Client, console: Console) -> None:
    """Render one frame: Status plus one Metrics sample."""
    state = DashboardState(client.address)
    state.status = client.status()
    for sample in client.metrics(max_samples=1):
        state.add_sample(sample)
    console.print(render(state))


def run(client: Client, console: Console, interval_s: float = 1.0,
        until: threading.Event | None = None) -> None:
    """Show the dashboard until Ctrl-C or, when given, until ``until`` is set (the demo)."""
    state = DashboardState(client.address)
    done = until or threading.Event()
    state.status = client.status()  # fail fast (clear message) when no engine listens
    stop = threading.Event()
    follower = threading.Thread(
        target=_follow_metrics, args=(client, state, int(interval_s * 1000), stop),
        name="dbmazz-top-metrics", daemon=True)
    follower.start()
    try:
        with _quit_key(done), Live(render(state), console=console, refresh_per_second=4,
                                   screen=False) as live:
            while not done.is_set():
                try:
                    status = client.status()
                    with state.lock:
                        state.status, state.problem = status, None
                except DbmazzError as exc:
                    with state.lock:
                        state.problem = exc.message
                live.update(render(state))
                # Refresh cadence; wait_for: the demo's signal handler sets `done`.
                wait_for(done, interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        # The metrics stream yields within one interval; then the follower sees `stop`.
        follower.join(interval_s + 5)
