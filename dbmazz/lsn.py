"""PostgreSQL log sequence numbers: uint64 positions printed as ``X/Y`` (hex high/low)."""

from __future__ import annotations

import re

_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

INVALID_LSN = 0


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` → ``0x16B374D848``."""
    match = _LSN_TEXT.match(text.strip())
    if match is None:
        raise ValueError(f"not a PostgreSQL LSN: {text!r} (expected hex 'X/Y', e.g. '0/16B3748')")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """``0x16B374D848`` → ``'16/B374D848'``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
