"""What a verify found: per table counts, the first differing keys, JSON and a rich table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DiffKind = Literal["missing", "extra", "changed"]


@dataclass(frozen=True, slots=True)
class KeyDiff:
    """One differing key: ``missing`` (in the source, not in the target), ``extra`` (in the
    target only) or ``changed`` (in both; ``columns`` names the columns that differ)."""

    kind: DiffKind
    key: dict[str, Any]
    columns: tuple[str, ...] = ()


@dataclass
class TableResult:
    table: str
    target: str
    ranges: int = 0
    ranges_checked: int = 0
    ranges_differing: int = 0
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    changed: int = 0
    #: Keys changed by CDC at or after the snapshot (checked next time, not now).
    in_flight: int = 0
    repaired: int = 0
    #: Reads of both ends beyond the first (bisection levels and the final row pass).
    passes: int = 0
    seconds: float = 0.0
    diffs: list[KeyDiff] = field(default_factory=list)
    error: str | None = None

    @property
    def equal(self) -> bool:
        return self.error is None and not (self.missing or self.extra or self.changed
                                           or self.ranges_differing)

    @property
    def differing(self) -> int:
        return self.missing + self.extra + self.changed


@dataclass
class VerifyReport:
    snapshot_lsn: str
    #: How the target was made comparable: 'engine' (durable past the snapshot, via the
    #: running engine or its checkpoint) or 'as-is' (no running engine).
    target_state: str
    sample: float = 1.0
    repaired: bool = False
    tables: list[TableResult] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)

    @property
    def exit_code(self) -> int:
        return 0 if self.equal else 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["equal"] = self.equal
        for table, result in zip(out["tables"], self.tables, strict=True):
            table["equal"] = result.equal
            for diff in table["diffs"]:
                diff["key"] = {k: _jsonable(v) for k, v in diff["key"].items()}
                diff["columns"] = list(diff["columns"])
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        # A float key may be NaN or ±Infinity: JSON has no such number ('NaN' in the output
        # is not JSON, and strict readers such as jq refuse the whole report).
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def render(report: VerifyReport, max_keys: int = 20) -> Any:
    """A rich renderable: one row per table, then the first differing keys."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"dbmazz verify at {report.snapshot_lsn} (target: "
                  f"{report.target_state})")
    for name in ("table", "ranges checked", "ranges equal", "ranges differing",
                 "source rows", "target rows", "missing", "extra", "changed", "in flight",
                 "time"):
        if name == "table":
            table.add_column(name, no_wrap=True)
        else:
            table.add_column(name, justify="right")
    for t in report.tables:
        table.add_row(
            t.table, f"{t.ranges_checked}/{t.ranges}",
            str(t.ranges_checked - t.ranges_differing), str(t.ranges_differing),
            f"{t.source_rows:,}", f"{t.target_rows:,}", str(t.missing), str(t.extra),
            str(t.changed), str(t.in_flight), f"{t.seconds:.1f}s",
        )
    parts: list[Any] = [table]
    for t in report.tables:
        if t.error:
            parts.append(Text(f"{t.table}: error: {t.error}", style="red"))
        # The first ``max_keys`` of each kind, and how many more of it there are.
        counts: dict[DiffKind, int] = {"missing": t.missing, "changed": t.changed,
                                       "extra": t.extra}
        for kind, count in counts.items():
            shown = [d for d in t.diffs if d.kind == kind][:max(max_keys, 0)]
            for diff in shown:
                key = ", ".join(f"{k}={_jsonable(v)!r}" for k, v in diff.key.items())
                cols = f" columns {', '.join(diff.columns)}" if diff.columns else ""
                parts.append(Text(f"{t.table}: {kind} ({key}){cols}"))
            if count > len(shown):
                parts.append(Text(f"{t.table}: … {count - len(shown):,} more {kind}"))
        if t.repaired:
            parts.append(Text(f"{t.table}: repaired {t.repaired} key(s)", style="green"))
    for note in report.notes:
        parts.append(Text(note, style="yellow"))
    verdict = "EQUAL" if report.equal else "DIFFERENT"
    parts.append(Text(verdict, style="bold green" if report.equal else "bold red"))
    return Group(*parts)
