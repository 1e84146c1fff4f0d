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


def members(key_hashes: np.ndarray, modulus: int, selected: np.ndarray) -> np.ndarray:
    """Positions in ``selected`` (sorted bucket ids mod ``modulus``) of each row's bucket,
    and -1 for rows in none of them."""
    if not len(selected) or not len(key_hashes):
        return np.full(len(key_hashes), -1, dtype=np.int64)
    bucket = key_hashes % np.uint64(modulus)
    pos = np.searchsorted(selected, bucket)
    inside = pos < len(selected)
    inside[inside] = selected[pos[inside]] == bucket[inside]
    return np.where(inside, pos, -1).astype(np.int64)


def refine_factor(selected: int, cells: int = 1 << 22, most: int = 4096) -> int:
    """How many sub-ranges each selected range splits into (memory stays ≤ ``cells``)."""
    return max(2, min(most, cells // max(selected, 1)))


@dataclass
class SubRangeSums:
    """Count and hash sum of each sub-range of the ``selected`` ranges: a row whose key hash
    is h, in selected range h mod ``modulus``, falls into sub-range (h div modulus) mod
    ``factor`` of it — i.e. into h mod (modulus × factor), one level of the bisection."""

    modulus: int
    selected: np.ndarray
    factor: int
    counts: np.ndarray = field(init=False)
    sums: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.selected) * self.factor, dtype=np.int64)
        self.sums = np.zeros(len(self.selected) * self.factor, dtype=np.uint64)

    def add(self, key_hashes: np.ndarray, row_hashes: np.ndarray) -> None:
        pos = members(key_hashes, self.modulus, self.selected)
        keep = pos >= 0
        if not keep.any():
            return
        sub = (key_hashes[keep] // np.uint64(self.modulus)) % np.uint64(self.factor)
        cell = pos[keep] * self.factor + sub.astype(np.int64)
        self.counts += np.bincount(cell, minlength=len(self.counts))
        np.add.at(self.sums, cell, row_hashes[keep].astype(np.uint64, copy=False))

    def bucket_ids(self, cells: np.ndarray) -> np.ndarray:
        """The ids (mod modulus × factor) of ``cells``, sorted."""
        ranges = self.selected[cells // self.factor]
        sub = (cells % self.factor).astype(np.uint64)
        return np.sort(ranges + np.uint64(self.modulus) * sub)
