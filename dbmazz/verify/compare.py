"""Compare one table: ranges first, then the keys and columns of the ranges that differ.

Pass 1 reduces every range on both ends to (rows, hash sum). Rows the pipeline changed at
or after the snapshot LSN (their ``dbmazz_cdc_version`` is ≥ it) are *in flight*: the
snapshot cannot show them, so their keys are left out on both ends and counted. Soft-deleted
rows older than the snapshot are not live and are left out as well.

When ranges differ they are bisected: while their rows are more than ``collect_rows``,
both ends are read again and each differing range is split into up to 4096 sub-ranges
(counts and sums only, so memory stays small), keeping the sub-ranges that differ. Then a
last read keeps the rows of the differing (sub-)ranges with one hash per column, joined on
the canonical key — giving the missing, extra and changed keys and, for changed keys, the
columns that differ. The source rows of the missing and changed keys are kept for a
repair.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.pipeline.batch import TableSchema
from dbmazz.verify.canonical import canonical_frame, column_hashes, key_hashes, row_hashes
from dbmazz.verify.ranges import (
    RangeSums,
    SubRangeSums,
    buckets,
    differing,
    members,
    refine_factor,
    sampled,
)
from dbmazz.verify.report import KeyDiff, TableResult
from dbmazz.verify.target import DELETED, VERSION

_ROW = "__dbmazz_verify_row"
_HASH = "__dbmazz_verify_hash"
_SIDE = "__dbmazz_verify_side"


@dataclass
class TableDiff:
    """What a repair needs: source rows to upsert (the ``missing`` first, then the
    changed), target keys to delete (extra)."""

    table: TableSchema
    upserts: pa.Table
    deletes: pa.Table
    missing: int = 0

    def without(self, kinds: set[str]) -> TableDiff:
        """This diff less the kinds (``missing``, ``changed``, ``extra``) not to repair."""
        missing = self.upserts.slice(0, self.missing)
        changed = self.upserts.slice(self.missing)
        kept = [part for kind, part in (("missing", missing), ("changed", changed))
                if kind not in kinds]
        upserts = pa.concat_tables(kept) if kept else self.upserts.slice(0, 0)
        deletes = self.deletes.slice(0, 0) if "extra" in kinds else self.deletes
        return TableDiff(self.table, upserts, deletes,
                         0 if "missing" in kinds else self.missing)


@dataclass(frozen=True)
class Options:
    ranges: int = 64
    sample: float = 1.0
    max_keys: int = 20
    seed: int = 0
    #: Rows (per end) the last pass may hold in memory; while differing ranges hold more,
    #: they are split further (one more read of both ends per level).
    collect_rows: int = 200_000
    #: Levels of splitting at most (each multiplies the ranges by up to 4096).
    max_levels: int = 3


Scan = Callable[[TableSchema], Iterator[pa.Table]]


class TableCheck:
    """One table's comparison; ``run()`` fills a :class:`TableResult`."""

    def __init__(self, table: TableSchema, source: Scan, target: Scan, *, snapshot_lsn: int,
                 json_text: bool, options: Options, target_name: str) -> None:
        self.table = table
        self.keys = table.key_columns
        self._source = source
        self._target = target
        self.lsn = snapshot_lsn
        self.json_text = json_text
        self.options = options
        self.result = TableResult(table=table.source_name, target=target_name,
                                  ranges=options.ranges)
        self.checked = sampled(options.ranges, options.sample, options.seed)
        self.result.ranges_checked = int(self.checked.sum())
        self._in_flight = pl.DataFrame()
        self.diff: TableDiff | None = None

    # --------------------------------------------------------------- helpers
    def _canonical(self, rows: pa.Table) -> pl.DataFrame:
        return canonical_frame(rows, self.table, json_text=self.json_text)

    def _live_target(self, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(live rows older than the snapshot, rows changed at or after it)."""
        version = batch.column(VERSION)
        newer = pc.fill_null(pc.greater_equal(version, self.lsn), False)
        deleted = pc.fill_null(batch.column(DELETED), False)
        live = pc.and_(pc.invert(newer), pc.invert(deleted))
        cols = list(self.table.column_names)
        return batch.filter(live).select(cols), batch.filter(newer).select(cols)

    def _without_in_flight(self, frame: pl.DataFrame) -> pl.DataFrame:
        if self._in_flight.height == 0 or frame.height == 0:
            return frame
        return frame.join(self._in_flight, on=list(self.keys), how="anti", nulls_equal=True)

    def _target_frames(self) -> Iterator[tuple[pa.Table, pl.DataFrame]]:
        for batch in self._target(self.table):
            live, newer = self._live_target(batch)
            if newer.num_rows:
                keys = self._canonical(newer).select(list(self.keys))
                self._in_flight = pl.concat([self._in_flight, keys]) if self._in_flight.height \
                    else keys
            yield live, self._canonical(live)
        if self._in_flight.height:
            # Every pass meets the same keys again (and maybe new ones): keep each once.
            self._in_flight = self._in_flight.unique()

    def _source_frames(self) -> Iterator[tuple[pa.Table, pl.DataFrame]]:
        for rows in self._source(self.table):
            frame = self._canonical(rows)
            if self._in_flight.height and frame.height:
                frame = frame.with_row_index(_ROW)
                frame = self._without_in_flight(frame)
                rows = rows.take(frame[_ROW].to_numpy())
                frame = frame.drop(_ROW)
            yield rows, frame

    def _bucket(self, frame: pl.DataFrame) -> np.ndarray:
        return buckets(key_hashes(frame, self.keys), self.options.ranges)

    # --------------------------------------------------------------- passes
    def run(self) -> TableResult:
        started = time.monotonic()
        target_sums = RangeSums(self.options.ranges)
        source_sums = RangeSums(self.options.ranges)
        # Target first: its in-flight keys are then left out of the source as it is read.
        for _, frame in self._target_frames():
            self._add(target_sums, frame)
        self.result.in_flight = self._in_flight.height
        for _, frame in self._source_frames():
            self._add(source_sums, frame)
        self.result.source_rows = source_sums.rows
        self.result.target_rows = target_sums.rows
        mask = differing(source_sums, target_sums, self.checked)
        self.result.ranges_differing = int(mask.sum())
        if mask.any():
            modulus, selected = self._bisect(
                self.options.ranges, np.flatnonzero(mask).astype(np.uint64),
                int(np.maximum(source_sums.counts, target_sums.counts)[mask].sum()))
            self._collect(modulus, selected)
        self.result.seconds = time.monotonic() - started
        return self.result

    def _add(self, sums: RangeSums, frame: pl.DataFrame) -> None:
        bucket = self._bucket(frame)
        keep = self.checked[bucket]
        sums.add(bucket[keep], row_hashes(frame)[keep])

    def _bisect(self, modulus: int, selected: np.ndarray, rows: int
                ) -> tuple[int, np.ndarray]:
        """Split the differing ranges until their rows fit ``collect_rows`` (or the levels
        run out): each level reads both ends once more, keeping only counts and sums."""
        level = 0
        while rows > self.options.collect_rows and level < self.options.max_levels:
            factor = refine_factor(len(selected))
            source = SubRangeSums(modulus, selected, factor)
            target = SubRangeSums(modulus, selected, factor)
            for _, frame in self._target_frames():
                target.add(key_hashes(frame, self.keys), row_hashes(frame))
            for _, frame in self._source_frames():
                source.add(key_hashes(frame, self.keys), row_hashes(frame))
            cells = np.flatnonzero((source.counts != target.counts)
                                   | (source.sums != target.sums))
            rows = int(np.maximum(source.counts, target.counts)[cells].sum())
            selected = source.bucket_ids(cells)
            modulus *= factor
            level += 1
            self.result.passes += 1
        return modulus, selected

    def _collect(self, modulus: int, selected: np.ndarray) -> None:
        """The last pass: the rows of the differing (sub-)ranges on both ends, joined on the
        key, give the missing, extra and changed keys and the columns that differ."""
        self.result.passes += 1
        keys = list(self.keys)
        target_parts = []
        target_keys: list[pa.Table] = []
        for live, frame in self._target_frames():
            inside = members(key_hashes(frame, self.keys), modulus, selected) >= 0
            if inside.any():
                target_parts.append(self._hashed(frame.filter(pl.Series(inside))))
                # The target's own key values (not their canonical form) name the extra rows.
                target_keys.append(live.select(keys).filter(pa.array(inside)))
        source_parts = []
        source_rows: list[pa.Table] = []
        for rows, frame in self._source_frames():
            inside = members(key_hashes(frame, self.keys), modulus, selected) >= 0
            if inside.any():
                source_parts.append(self._hashed(frame.filter(pl.Series(inside))))
                source_rows.append(rows.filter(pa.array(inside)))
        empty = self._hashed(self._canonical(self.table.arrow_schema(False).empty_table()))
        src = pl.concat(source_parts) if source_parts else empty
        tgt = pl.concat(target_parts) if target_parts else empty
        # Row numbers first: they point into the source rows kept above. In-flight keys met
        # during these passes (rows changed since the first) are left out too.
        src = self._without_in_flight(src.with_row_index(_ROW))
        tgt = self._without_in_flight(tgt.with_row_index(_ROW))
        joined = src.join(tgt, on=keys, how="full", suffix="_t", nulls_equal=True,
                          coalesce=True)
        missing = joined.filter(pl.col(f"{_ROW}_t").is_null())
        extra = joined.filter(pl.col(_ROW).is_null())
        changed = joined.filter(pl.col(_ROW).is_not_null() & pl.col(f"{_ROW}_t").is_not_null()
                                & (pl.col(_HASH) != pl.col(f"{_HASH}_t")))
        self.result.missing = missing.height
        self.result.extra = extra.height
        self.result.changed = changed.height
        all_source = pa.concat_tables(source_rows) if source_rows else \
            self.table.arrow_schema(False).empty_table()
        all_target_keys = pa.concat_tables(target_keys) if target_keys else \
            self.table.arrow_schema(False).empty_table().select(keys)
        extra_keys = all_target_keys.take(extra[f"{_ROW}_t"].cast(pl.Int64).to_numpy())
        self._report_keys(all_source, missing, changed, extra_keys)
        upsert_rows = pl.concat([missing[_ROW], changed[_ROW]]).cast(pl.Int64).to_numpy()
        self.diff = TableDiff(self.table, upserts=all_source.take(upsert_rows),
                              deletes=extra_keys, missing=missing.height)

    def _hashed(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Key columns (canonical), the row hash and one hash per non-key column."""
        others = [c for c in frame.columns if c not in self.keys]
        hashes = column_hashes(frame.select(others)) if others else pl.DataFrame()
        out = frame.select(list(self.keys)).with_columns(
            pl.Series(_HASH, row_hashes(frame)))
        return pl.concat([out, hashes.rename({c: f"{_SIDE}{c}" for c in others})],
                         how="horizontal") if others else out

    def _report_keys(self, source_rows: pa.Table, missing: pl.DataFrame,
                     changed: pl.DataFrame, extra_keys: pa.Table) -> None:
        limit = max(self.options.max_keys, 0)
        keys = list(self.keys)
        diffs: list[KeyDiff] = []
        key_table = source_rows.select(keys)

        def key_of(table: pa.Table, row: int) -> dict[str, object]:
            return {k: v[0] for k, v in table.slice(row, 1).to_pydict().items()}

        for row in missing[_ROW].head(limit).to_list():
            diffs.append(KeyDiff("missing", key_of(key_table, int(row))))
        others = [c for c in self.table.column_names if c not in keys]
        for record in changed.head(limit).iter_rows(named=True):
            columns = tuple(c for c in others
                            if record[f"{_SIDE}{c}"] != record[f"{_SIDE}{c}_t"])
            diffs.append(KeyDiff("changed", key_of(key_table, int(record[_ROW])), columns))
        for row in range(min(limit, extra_keys.num_rows)):
            diffs.append(KeyDiff("extra", key_of(extra_keys, row)))
        self.result.diffs = diffs
