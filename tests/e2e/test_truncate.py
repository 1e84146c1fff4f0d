"""TRUNCATE while streaming, on both sinks (DuckDB and the StarRocks emulator): the target
equals the source, also after a crash whose replay cuts the stream into other batches."""

from __future__ import annotations

from tests.e2e.test_schema_evolution import FailingSink, Target

# The fixture runs each test on DuckDB and on the StarRocks emulator.
from tests.e2e.test_schema_evolution import target as target


def test_rows_before_a_truncate_in_its_transaction_stay_gone_after_a_crash(
        target: Target) -> None:
    # The first run loads T0 and T in one batch, then fails before the checkpoint. The
    # replay (FLUSH_ROWS=2) loads T0 alone, then T: T's insert of 3, before its truncate,
    # shares the truncate's commit LSN. StarRocks found the truncate done (its marker
    # label), swept only the rows older than it, and row 3 stayed in the target for good.
    db = target.db
    db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    db.execute("CREATE TABLE public.u (id int PRIMARY KEY)")
    config = target.config(["public.t", "public.u"], flush_interval_ms=500)
    failing = FailingSink(target.sink(config))
    failing.fail_table = "u"  # t's steps load, the flush fails: no checkpoint covers them
    engine = target.start(config, failing)
    target.catch_up(engine)
    db.execute("INSERT INTO public.t VALUES (1, 'a'), (2, 'b')")
    with db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.t VALUES (3, 'before the truncate')")
        conn.execute("TRUNCATE public.t")
        conn.execute("INSERT INTO public.t VALUES (4, 'after')")
    db.execute("INSERT INTO public.u VALUES (1)")
    assert "injected crash" in target.failed(engine)
    assert [r["id"] for r in target.rows("public", "t")] == [4]
    target.stop(engine, drain=False)
    engine = target.start(target.config(["public.t", "public.u"], flush_rows=2))
    target.catch_up(engine)
    target.assert_replicated({"public.t": ["id"], "public.u": ["id"]})
