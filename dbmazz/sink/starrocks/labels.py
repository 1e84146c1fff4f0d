"""Deterministic Stream Load labels (DESIGN.md §3).

A label is ``dbmazz-<slot>-<table>-<first_lsn>-<last_lsn>[-<suffix>]`` and must match
``^[-\\w]{1,128}$`` with Java's ASCII ``\\w``. The same batch must always get the same label
(so a replay hits "Label Already Exists" instead of loading twice) and two different tables
must never share one (labels are unique per database, and tables loaded from one source
transaction share their LSNs). So a table name that had to be altered to fit — characters
replaced or shortened — carries a hash of the original name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 128
_BAD = re.compile(r"[^-A-Za-z0-9_]")
_HASH_LEN = 10
PREFIX = "dbmazz"


def _digest(text: str, size: int = _HASH_LEN) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:size]


def _clean(text: str) -> str:
    return _BAD.sub("_", text)


def _fit(name: str, budget: int) -> str:
    """``name`` sanitized to at most ``budget`` characters, hashed when altered."""
    clean = _clean(name)
    if clean == name and len(clean) <= budget:
        return clean
    keep = max(0, budget - _HASH_LEN - 1)
    head = clean[:keep]
    return f"{head}_{_digest(name)}" if head else _digest(name, min(budget, 40))


def make_label(slot: str, table: str, first_lsn: int, last_lsn: int, suffix: str = "") -> str:
    """The label of one load; ``suffix`` tells apart the loads of one batch (``u0``, ``d``)."""
    if suffix and (_BAD.search(suffix) or len(suffix) > 16):
        raise ValueError(f"label suffix must be short and [-A-Za-z0-9_]: {suffix!r}")
    tail = f"-{first_lsn}-{last_lsn}" + (f"-{suffix}" if suffix else "")
    budget = MAX_LABEL - len(PREFIX) - 1 - len(tail)
    slot_part = _clean(slot)
    # The slot keeps two pipelines writing one database apart; it is short (≤ 63) in
    # practice, but a shortened form keeps room for the table either way.
    if len(slot_part) > budget // 2:
        slot_part = _fit(slot, budget // 2)
    table_part = _fit(table, budget - len(slot_part) - 1)
    label = f"{PREFIX}-{slot_part}-{table_part}{tail}"
    assert len(label) <= MAX_LABEL, label
    return label


LABEL_RE = re.compile(r"^[-\w]{1,128}$", re.ASCII)


def is_valid_label(label: str) -> bool:
    return bool(LABEL_RE.match(label))
