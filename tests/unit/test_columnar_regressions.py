"""Decoder cases found by property tests, kept as plain examples."""

from __future__ import annotations

import numpy as np

from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.testing import wal

TIMESTAMP = 1114


def test_five_digit_year_followed_by_a_dot_byte() -> None:
    """The window read past a value ends; a '.' there is not the value's fraction."""
    rel = Relation(1, "public", "p", "d", (RelationColumn("c", TIMESTAMP, -1, False),))
    message = wal.insert(1, ["10000-01-01 00:00:00"])
    data = np.frombuffer(message + b".", dtype=np.uint8)
    batch = decode_changes(rel, [], data, np.array([0], dtype=np.int64),
                           np.zeros(1, dtype=np.uint64))
    # Beyond DATETIME's range: clamped to the last representable microsecond's day end.
    assert batch.column(0).cast("int64").to_pylist() == [253402300800000000]
