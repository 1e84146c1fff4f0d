"""Snapshots: copying tables' existing rows into the target, consistently with CDC.

* :mod:`.read` — planning ``ctid`` page chunks and reading them inside one snapshot,
  straight into Arrow;
* :mod:`.load` — the worker pool: chunks → sink batches, retried, recorded;
* :mod:`.sink` — the sink wrapper that serializes snapshot and CDC writes per table and
  watches the keys CDC touches while an on-demand snapshot runs;
* :mod:`.progress` — progress in memory (Status, metrics, bars) and per chunk in the
  source database (resumable snapshots);
* :mod:`.context` — what every snapshot of one engine shares;
* :mod:`.stage` — the initial snapshot and on-demand requests of one live engine;
* :mod:`.ondemand` — one on-demand snapshot (watermark, gate, watch).

The engine receives a :class:`~dbmazz.snapshot.stage.Snapshots` in its constructor
(:mod:`dbmazz.engine.build` wires it). The reasoning is in docs/snapshot.md.
"""
