"""Repair: the differing keys re-copied from the verify's snapshot.

The rows go to the target the way snapshot rows do (:func:`snapshot_batch`, version = the
snapshot's LSN W) and extra keys as deletes with version W, through the sink's ordinary
write path. W is an exact watermark (the temporary slot's consistent point) and every change
committed before it was durable before the comparison, so the versions order the repair
against CDC exactly as an on-demand snapshot's chunks are ordered: a change CDC makes at or
after W carries a version ≥ W and wins, whichever write lands last (soft deletes included).
A *hard* delete leaves no version behind to win with, so a repair beside a running engine
is refused under ``DELETE_MODE=hard``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from dbmazz.contract import OP_DELETE, with_audit
from dbmazz.pipeline.batch import TableBatch
from dbmazz.snapshot.load import snapshot_batch  # the snapshot path's batch builder
from dbmazz.verify.compare import TableDiff

Write = Callable[[TableBatch], object]


def delete_batch(diff: TableDiff, version: int, batch_id: str) -> TableBatch | None:
    keys = diff.deletes
    n = keys.num_rows
    if not n:
        return None
    deletes = with_audit(keys, pa.array(np.full(n, OP_DELETE, dtype=np.int8)),
                         pa.array(np.full(n, version, dtype=np.int64)),
                         datetime.now(UTC).replace(tzinfo=None))
    return TableBatch(table=diff.table, deletes=deletes, first_lsn=version, last_lsn=version,
                      source_changes=n, batch_id=batch_id)


def repair(diff: TableDiff, version: int, write: Write, run_id: str) -> int:
    """Write the repair of one table; returns the keys repaired."""
    done = 0
    if diff.upserts.num_rows:
        write(snapshot_batch(diff.table, diff.upserts, version, f"verify-{run_id}-u"))
        done += diff.upserts.num_rows
    deletes = delete_batch(diff, version, f"verify-{run_id}-d")
    if deletes is not None:
        write(deletes)
        done += deletes.num_rows
    return done
