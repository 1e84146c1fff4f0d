"""Ranges: rows grouped by the hash of their key, reduced to a count and a hash sum.

A range is a bucket of the key's canonical hash, not an interval of key values: PostgreSQL
collations, StarRocks' text-held float/decimal keys and DuckDB's orderings disagree about
which key comes first, but they all agree on the key's canonical hash, so a row falls into
the same range on both ends whatever its key type. Sums of 64-bit row hashes (mod 2⁶⁴) are
order independent and, unlike XOR, a duplicated row does not cancel itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def buckets(key_hashes: np.ndarray, ranges: int) -> np.ndarray:
    return (key_hashes % np.uint64(ranges)).astype(np.int64)


def sampled(ranges: int, sample: float, seed: int) -> np.ndarray:
    """Which ranges to check: all for ``sample >= 1``, else a random ``sample`` share (at
    least one)."""
    if sample >= 1.0:
        return np.ones(ranges, dtype=np.bool_)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(ranges, size=max(1, round(ranges * sample)), replace=False)
    mask = np.zeros(ranges, dtype=np.bool_)
    mask[chosen] = True
    return mask


@dataclass
class RangeSums:
    """Row count and wrapping hash sum per range of one side of one table."""

    ranges: int
    counts: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.ranges, dtype=np.int64)
        self.sums = np.zeros(self.ranges, dtype=np.uint64)

    def add(self, bucket: np.ndarray, hashes: np.ndarray) -> None:
        if not len(bucket):
            return
        self.counts += np.bincount(bucket, minlength=self.ranges)
        # uint64 addition wraps: the sum is taken mod 2**64, as intended.
        np.add.at(self.sums, bucket, hashes.astype(np.uint64, copy=False))

    @property
    def rows(self) -> int:
        return int(self.counts.sum())


def differing(a: RangeSums, b: RangeSums, checked: np.ndarray) -> np.ndarray:
    """Mask of checked ranges whose count or hash differ."""
    return checked & ((a.counts != b.counts) | (a.sums != b.sums))
