"""Stream Load labels: deterministic, valid for StarRocks, distinct per table and load."""

from __future__ import annotations

import re

import pytest

from dbmazz.sink.starrocks.labels import MAX_LABEL, is_valid_label, make_label

JAVA_LABEL = re.compile(r"^[-A-Za-z0-9_]{1,128}$")


def test_format() -> None:
    assert make_label("dbmazz_slot", "orders", 100, 250, "u0") == (
        "dbmazz-dbmazz_slot-orders-100-250-u0"
    )
    assert make_label("s", "orders", 1, 2, "d") == "dbmazz-s-orders-1-2-d"
    assert make_label("s", "orders", 7, 7, "u1", batch_id="snap-12") == (
        "dbmazz-s-orders-7-7-snap-12-u1"
    )


def test_snapshot_chunks_sharing_lsns_differ() -> None:
    labels = {make_label("s", "t", 7, 7, "u0", batch_id=f"snap-{n}") for n in range(100)}
    assert len(labels) == 100 and make_label("s", "t", 7, 7, "u0") not in labels
    odd = make_label("s", "t", 7, 7, "u0", batch_id="snap 1/ü" + "x" * 100)
    assert is_valid_label(odd) and len(odd) <= MAX_LABEL


def test_deterministic() -> None:
    args = ("slot", "Some Table ✓", 2**64 - 1, 2**64 - 1, "s12")
    assert make_label(*args) == make_label(*args)


@pytest.mark.parametrize(
    "table",
    ["plain", "Mixed_Case", "with space", "quote'\"`", "日本語", "a" * 300, "x-y", "", "é" * 100],
)
def test_always_valid(table: str) -> None:
    label = make_label("a" * 63, table, 2**64 - 1, 2**64 - 1, "u15")
    assert JAVA_LABEL.match(label), label
    assert is_valid_label(label)
    assert len(label) <= MAX_LABEL


def test_names_that_sanitize_alike_still_differ() -> None:
    # Two tables loaded from one source transaction share LSNs: only the name parts differ,
    # and labels are unique per database.
    names = ["a b", "a_b", "a-b", "a.b", "A_B", "a\u00e9b", "a\u00e8b", "a-1-2"]
    labels = {make_label("s", n, 5, 9, "u0") for n in names}
    assert len(labels) == len(names)


def test_long_names_are_shortened_with_a_hash() -> None:
    one = make_label("s", "t" * 200 + "1", 1, 2, "u0")
    two = make_label("s", "t" * 200 + "2", 1, 2, "u0")
    assert one != two
    assert len(one) <= MAX_LABEL and len(two) <= MAX_LABEL
    assert one.startswith("dbmazz-s-tttt")


def test_slot_and_suffix_and_lsns_tell_loads_apart() -> None:
    base = make_label("s1", "t", 1, 2, "u0")
    others = {
        make_label("s2", "t", 1, 2, "u0"),
        make_label("s1", "t", 1, 3, "u0"),
        make_label("s1", "t", 0, 2, "u0"),
        make_label("s1", "t", 1, 2, "u1"),
        make_label("s1", "t", 1, 2, "u0", batch_id="b"),
    }
    assert len({base, *others}) == 6


@pytest.mark.parametrize("suffix", ["", "bad suffix", "a/b", "a-b", "x" * 17])
def test_bad_suffix(suffix: str) -> None:
    with pytest.raises(ValueError):
        make_label("s", "t", 1, 2, suffix)
