"""Names as users have them — other schemas, mixed case, quotes, reserved words, 63-byte
names — through setup, the snapshot, CDC and `dbmazz verify`, on both sinks: the data
arrives, or setup refuses naming the table or column and the fix."""

from __future__ import annotations

import pytest

from dbmazz.errors import SetupError
from dbmazz.verify.run import VerifyRequest, open_target, run_verify
from dbmazz.verify.target import DuckDBTarget
from tests.e2e import test_schema_evolution
from tests.e2e.test_schema_evolution import Target

#: Each test runs on both sinks (DuckDB, the StarRocks emulator).
target = test_schema_evolution.target

LONG = "x" * 63  # PostgreSQL's longest name


def test_reserved_words_and_63_byte_names(target: Target) -> None:
    db = target.db
    db.execute(f'CREATE TABLE public."order" ("key" int PRIMARY KEY, "rank" int, "range" text, '
               f'"values" int, "partition" int, "function" int, "{LONG}" int, "a.b" int, '
               '"p%%s" text, "b`t" int)')
    db.execute(f'CREATE TABLE public."{LONG}" (id int PRIMARY KEY, "{LONG}" text)')
    db.execute('INSERT INTO public."order" VALUES (1, 2, \'r\', 3, 4, 5, 6, 7, \'%s\', 8)')
    db.execute(f'INSERT INTO public."{LONG}" VALUES (1, \'l\')')
    engine = target.start(target.config(['"order"', f'"{LONG}"']))
    target.catch_up(engine)
    db.execute('UPDATE public."order" SET "rank" = 20, "p%%s" = \'%d\'')
    db.execute('ALTER TABLE public."order" ADD COLUMN "select" int')
    db.execute('INSERT INTO public."order" VALUES (2, 2, \'q\', 3, 4, 5, 6, 7, \'%%\', 8, 9)')
    db.execute(f'UPDATE public."{LONG}" SET "{LONG}" = \'m\'')
    target.catch_up(engine)
    target.assert_replicated({"public.order": ["key"], f"public.{LONG}": ["id"]})


def test_verify_with_names_that_need_quoting(target: Target) -> None:
    db = target.db
    db.execute('CREATE SCHEMA "My Schema"')
    db.execute('CREATE TABLE "My Schema"."Order Items" ("UserID" int, "key" text, "a.b" int, '
               '"p%%s" text, "q""x" int, "b`t" int, "rank" int, PRIMARY KEY ("UserID", "key"))')
    db.execute('INSERT INTO "My Schema"."Order Items" SELECT g, \'k\' || g, g, \'%%\' || g, '
               'g, g, g FROM generate_series(1, 50) g')
    config = target.config(['"My Schema"."Order Items"'], verify_max_rows_per_s=0)
    engine = target.start(config)
    target.catch_up(engine)
    db.execute('UPDATE "My Schema"."Order Items" SET "p%%s" = \'x\' WHERE "UserID" < 5')
    target.catch_up(engine)
    reader = (DuckDBTarget(target.sinks[-1].read_cursor(), owned=True)
              if target.kind == "duckdb" else open_target(config))
    try:
        report = run_verify(config, VerifyRequest(ranges=4, max_keys=100), target=reader,
                            engine=engine, write=engine.sink.write)
    finally:
        reader.close()
    assert report.equal, report.to_dict()
    assert [t.source_rows for t in report.tables] == [50]


def test_tables_whose_names_differ_only_in_case(target: Target) -> None:
    # StarRocks table names are case-sensitive: two tables. DuckDB's are not: "Orders" and
    # orders would be one table (setup failed adding a second primary key to it, blaming a
    # snapshot; with a key already there both loaded into it).
    db = target.db
    db.execute('CREATE TABLE public."Orders" (id int PRIMARY KEY, v text)')
    db.execute("CREATE TABLE public.orders (id int PRIMARY KEY, v text)")
    db.execute('INSERT INTO public."Orders" VALUES (1, \'upper\')')
    db.execute("INSERT INTO public.orders VALUES (1, 'lower'), (2, 'lower2')")
    config = target.config(['"Orders"', "orders"])
    if target.kind == "duckdb":
        with pytest.raises(SetupError, match=r"public\.Orders and public\.orders would both "
                                             r"load into DuckDB table") as error:
            target.start(config)
        assert "TABLE_MAP=public.orders:" in (error.value.hint or "")
        return
    engine = target.start(config)
    db.execute('INSERT INTO public."Orders" VALUES (3, \'upper3\')')
    target.catch_up(engine)
    target.assert_replicated({"public.Orders": ["id"], "public.orders": ["id"]})


def test_columns_whose_names_differ_only_in_case_are_refused(target: Target) -> None:
    # Both targets compare column names without case: at setup DuckDB failed with a raw
    # CatalogException; added while streaming, StarRocks retried the load for ever
    # ("Duplicate column") and DuckDB stopped on a Binder Error.
    db = target.db
    db.execute('CREATE TABLE public.a (id int PRIMARY KEY, "UserID" int, userid int)')
    with pytest.raises(SetupError, match=r"public\.a has columns whose names differ only in "
                                         r"case \(UserID and userid\)"):
        target.start(target.config(["a"]))
    db.execute("CREATE TABLE public.b (id int PRIMARY KEY, userid int)")
    db.execute("INSERT INTO public.b VALUES (1, 20)")
    engine = target.start(target.config(["b"]))
    target.catch_up(engine)
    db.execute('ALTER TABLE public.b ADD COLUMN "UserID" int')
    db.execute("INSERT INTO public.b VALUES (2, 30, 40)")
    assert "public.b has columns whose names differ only in case (userid and UserID)" in (
        target.failed(engine))
    assert [(r["id"], r["userid"]) for r in target.rows("public", "b")] == [(1, 20)]


def test_schemas_whose_names_differ_only_in_case(target: Target) -> None:
    # DuckDB has one schema for "Sales" and sales: its catalog lookups by exact name missed
    # sales.b there, and setup failed adding its primary key again ("after its snapshot").
    db = target.db
    db.execute('CREATE SCHEMA "Sales"')
    db.execute("CREATE SCHEMA sales")
    db.execute('CREATE TABLE "Sales".a (id int PRIMARY KEY, v int)')
    db.execute("CREATE TABLE sales.b (id int PRIMARY KEY, w int)")
    db.execute('INSERT INTO "Sales".a VALUES (1, 1)')
    db.execute("INSERT INTO sales.b VALUES (1, 1)")
    config = target.config(['"Sales".a', "sales.b"])
    engine = target.start(config)
    db.execute('INSERT INTO "Sales".a VALUES (2, 2)')
    target.catch_up(engine)
    target.stop(engine)
    db.execute("ALTER TABLE sales.b ADD COLUMN x int")
    db.execute("INSERT INTO sales.b VALUES (2, 2, 2)")
    engine = target.start(config)
    target.catch_up(engine)
    target.assert_replicated({"Sales.a": ["id"], "sales.b": ["id"]})


def test_table_map_with_a_quoted_source_name(target: Target) -> None:
    # Written as in TABLES, the entry matched no table and was ignored without a word: the
    # rows loaded into "Order Items", not the target asked for.
    db = target.db
    db.execute('CREATE SCHEMA "My Schema"')
    db.execute('CREATE TABLE "My Schema"."Order Items, 2024" (id int PRIMARY KEY, v text)')
    db.execute('INSERT INTO "My Schema"."Order Items, 2024" VALUES (1, \'a\')')
    engine = target.start(target.config(['"My Schema"."Order Items, 2024"'],
                                        table_map='"My Schema"."Order Items, 2024":oi'))
    db.execute('INSERT INTO "My Schema"."Order Items, 2024" VALUES (2, \'b\')')
    target.catch_up(engine)
    assert sorted((r["id"], r["v"]) for r in target.rows("My Schema", "oi")) == [
        (1, "a"), (2, "b")]


def test_columns_named_like_dbmazz_metadata_are_refused(target: Target) -> None:
    # In the decoded batch beside __dbmazz_lsn, __dbmazz_op, …: the engine failed with a raw
    # KeyError ('Field "__dbmazz_lsn" exists 2 times in schema').
    db = target.db
    db.execute('CREATE TABLE public.m (id int PRIMARY KEY, "__dbmazz_lsn" bigint)')
    with pytest.raises(SetupError, match=r"public\.m has column\(s\) __dbmazz_lsn: names "
                                         r"starting with __dbmazz_ are dbmazz's own"):
        target.start(target.config(["public.m"]))
    db.execute("CREATE TABLE public.n (id int PRIMARY KEY, v int)")
    engine = target.start(target.config(["public.n"]))
    db.execute("INSERT INTO public.n VALUES (1, 1)")
    target.catch_up(engine)
    db.execute('ALTER TABLE public.n ADD COLUMN "__dbmazz_old_id" int')
    db.execute('UPDATE public.n SET id = 2, "__dbmazz_old_id" = 1')
    assert "public.n has column(s) __dbmazz_old_id" in target.failed(engine)
    assert [(r["id"], r["v"]) for r in target.rows("public", "n")] == [(1, 1)]


@pytest.mark.parametrize("target", ["starrocks"], indirect=True)
def test_a_column_named_op_is_refused_by_starrocks_with_the_fix(target: Target) -> None:
    # StarRocks reserves __op for the load's operation; its own refusal named no fix.
    db = target.db
    db.execute('CREATE TABLE public.o (id int PRIMARY KEY, "__op" int)')
    with pytest.raises(SetupError, match=r"public\.o has column __op: StarRocks reserves") as e:
        target.start(target.config(["public.o"]))
    assert "column list on the publication" in (e.value.hint or "")
    db.execute("CREATE TABLE public.p (id int PRIMARY KEY)")
    engine = target.start(target.config(["public.p"]))
    target.catch_up(engine)
    db.execute('ALTER TABLE public.p ADD COLUMN "__OP" int')
    db.execute("INSERT INTO public.p VALUES (1, 1)")
    error = target.failed(engine)
    assert "public.p has column __OP: StarRocks reserves" in error
    assert "column list on the publication" in error


@pytest.mark.parametrize("target", ["duckdb"], indirect=True)
def test_spaces_inside_quotes_are_part_of_the_name(target: Target) -> None:
    # TABLES='"Order Items "' was read as "Order Items": the other table was replicated.
    db = target.db
    db.execute('CREATE TABLE public."Order Items" (id int PRIMARY KEY, v text)')
    db.execute('CREATE TABLE public."Order Items " (id int PRIMARY KEY, v text)')
    db.execute('INSERT INTO public."Order Items" VALUES (1, \'without\')')
    db.execute('INSERT INTO public."Order Items " VALUES (1, \'with\')')
    engine = target.start(target.config([' "Order Items " ']))
    target.catch_up(engine)
    assert [r["v"] for r in target.rows("public", "Order Items ")] == ["with"]


@pytest.mark.parametrize("target", ["duckdb"], indirect=True)
def test_a_schema_named_with_a_dot_is_refused(target: Target) -> None:
    # 'my.schema.t' read back as schema my, table schema.t: the snapshot passed the table
    # over without a word (its rows never loaded) while its changes streamed.
    db = target.db
    db.execute('CREATE SCHEMA "my.schema"')
    db.execute('CREATE TABLE "my.schema".t (id int PRIMARY KEY, v text)')
    db.execute('INSERT INTO "my.schema".t VALUES (1, \'a\')')
    with pytest.raises(SetupError, match=r"schemas whose names contain a dot are not "
                                         r"supported: my\.schema\.t"):
        target.start(target.config(['"my.schema".t']))
