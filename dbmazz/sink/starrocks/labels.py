"""Deterministic Stream Load labels (DESIGN.md §3).

A label is ``dbmazz-<slot>-<table>-<first_lsn>-<last_lsn>[-<batch_id>]-<suffix>`` and must
match ``^[-\\w]{1,128}$`` with Java's ASCII ``\\w``. The same batch must always get the same
label (so a replay hits "Label Already Exists" instead of loading twice) and two different
loads must never share one (labels are unique per database; tables loaded from one source
transaction share their LSNs; snapshot chunks share an LSN range and differ by
``batch_id``). So a name that had to be altered to fit — characters replaced (``-``
included, it separates the parts), or shortened — carries a hash of the original.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 128
_BAD = re.compile(r"[^A-Za-z0-9_]")
_BAD_ID = re.compile(r"[^-A-Za-z0-9_]")
_HASH_LEN = 10
PREFIX = "dbmazz"


def _digest(text: str, size: int = _HASH_LEN) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:size]


def _clean(text: str, bad: re.Pattern[str] = _BAD) -> str:
    return bad.sub("_", text)


def _fit(name: str, budget: int, bad: re.Pattern[str] = _BAD) -> str:
    """``name`` sanitized to at most ``budget`` characters, hashed when altered."""
    clean = _clean(name, bad)
    if clean == name and len(clean) <= budget:
        return clean
    keep = max(0, budget - _HASH_LEN - 1)
    head = clean[:keep]
    return f"{head}_{_digest(name)}" if head else _digest(name, min(budget, 40))


def make_label(
    slot: str, table: str, first_lsn: int, last_lsn: int, suffix: str, batch_id: str = ""
) -> str:
    """The label of one load: ``suffix`` tells apart the loads of one batch (``u0``, ``d``),
    ``batch_id`` batches that share an LSN range (snapshot chunks)."""
    if not suffix or _BAD.search(suffix) or len(suffix) > 16:
        raise ValueError(f"label suffix must be short and [A-Za-z0-9_]: {suffix!r}")
    batch = _fit(batch_id, 40, _BAD_ID) if batch_id else ""
    tail = f"-{first_lsn}-{last_lsn}" + (f"-{batch}" if batch else "") + f"-{suffix}"
    budget = MAX_LABEL - len(PREFIX) - 1 - len(tail)
    slot_part = _clean(slot)
    # The slot keeps two pipelines writing one database apart; it is short (≤ 63) in
    # practice, but a shortened form keeps room for the table either way.
    if slot_part != slot or len(slot_part) > budget // 2:
        slot_part = _fit(slot, budget // 2)
    table_part = _fit(table, budget - len(slot_part) - 1)
    label = f"{PREFIX}-{slot_part}-{table_part}{tail}"
    assert len(label) <= MAX_LABEL, label
    return label


LABEL_RE = re.compile(r"^[-\w]{1,128}$", re.ASCII)


def is_valid_label(label: str) -> bool:
    return bool(LABEL_RE.match(label))
