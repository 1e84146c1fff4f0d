"""Primary Key table semantics: upsert/delete, __op, partial update, merge_condition,
atomic loads, labels."""

from __future__ import annotations

import pytest

from dbmazz.testing.starrocks import ManualClock, StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, make_table, request, stream_load

WIDE_DDL = (
    "CREATE TABLE w (id INT NOT NULL, name VARCHAR(10) NULL, score INT NOT NULL,"
    " bonus INT NOT NULL DEFAULT '5', note STRING NULL DEFAULT 'n/a', ver BIGINT NULL)"
    " PRIMARY KEY (id) DISTRIBUTED BY HASH(id)"
)


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    make_table(starrocks, WIDE_DDL)
    return starrocks


def test_upsert_replaces_the_row_by_key(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t2\n")
    stream_load(sr, "d", "t", "2\tB\t20\n3\tc\t3\n")
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 1}, {"id": 2, "name": "B", "score": 20},
        {"id": 3, "name": "c", "score": 3},
    ]


def test_last_change_wins_within_a_load(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n1\tb\t2\n1\tc\t3\n")
    assert sr.rows("d", "t") == [{"id": 1, "name": "c", "score": 3}]


def test_op_from_a_source_column(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t2\n3\tc\t3\n")
    reply = stream_load(sr, "d", "t", "1,x,9,1\n2,y,8,0\n4,z,7,upsert\n",
                        column_separator=",", columns="id,name,score,tmp,__op=tmp")
    assert reply["NumberLoadedRows"] == 3
    assert sr.rows("d", "t") == [
        {"id": 2, "name": "y", "score": 8}, {"id": 3, "name": "c", "score": 3},
        {"id": 4, "name": "z", "score": 7},
    ]


def test_op_constant_delete_for_the_whole_load(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t2\n3\tc\t3\n")
    stream_load(sr, "d", "t", "1\n3\n", columns="id,__op='delete'")
    assert [r["id"] for r in sr.rows("d", "t")] == [2]


def test_delete_of_missing_key_is_a_no_op(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", '{"id": 9, "__op": 1}', format="json")
    assert (reply["Status"], reply["NumberLoadedRows"]) == ("Success", 1)
    assert sr.rows("d", "t") == []


def test_invalid_op_value_is_filtered(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", '{"id": 9, "__op": 7}', format="json",
                        max_filter_ratio="1")
    assert reply["NumberFilteredRows"] == 1


def test_partial_update_keeps_unlisted_columns(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "1\ta\t10\t1\tx\t1\n")
    reply = stream_load(sr, "d", "w", "1,99\n2,50\n", column_separator=",",
                        columns="id,score", partial_update="true")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "w") == [
        {"id": 1, "name": "a", "score": 99, "bonus": 1, "note": "x", "ver": 1},
        # A new row gets defaults, NULL, or the type's zero value for NOT NULL columns.
        {"id": 2, "name": None, "score": 50, "bonus": 5, "note": "n/a", "ver": None},
    ]


def test_partial_update_new_row_not_null_without_default_gets_zero(sr: StarRocksEmulator
                                                                   ) -> None:
    stream_load(sr, "d", "w", "3,c\n", column_separator=",", columns="id,name",
                partial_update="true")
    assert sr.rows("d", "w")[0]["score"] == 0


def test_partial_update_json_uses_the_keys_present(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "1\ta\t10\t1\tx\t1\n")
    stream_load(sr, "d", "w", '[{"id": 1, "note": "y"}]', format="json",
                strip_outer_array="true", partial_update="true")
    assert sr.rows("d", "w")[0] == {"id": 1, "name": "a", "score": 10, "bonus": 1,
                                    "note": "y", "ver": 1}


def test_partial_update_must_list_the_key(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "w", "x\n", columns="name", partial_update="true")
    assert reply["Status"] == "Fail"
    assert "primary key" in reply["Message"]


def test_partial_update_needs_a_primary_key_table(sr: StarRocksEmulator) -> None:
    make_table(sr, "CREATE TABLE dup (k INT, v INT) DUPLICATE KEY (k)")
    reply = stream_load(sr, "d", "dup", "1\t2\n", partial_update="true")
    assert reply["Message"] == "Only primary key table support partial update"


def test_duplicate_key_table_appends(sr: StarRocksEmulator) -> None:
    make_table(sr, "CREATE TABLE dup (k INT, v INT) DUPLICATE KEY (k)")
    stream_load(sr, "d", "dup", "1\t2\n1\t2\n")
    assert sr.rows("d", "dup") == [{"k": 1, "v": 2}, {"k": 1, "v": 2}]


def test_merge_condition_applies_only_newer_versions(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "101\tv2\t1\t1\tx\t2\n102\tv2\t1\t1\tx\t2\n")
    stream_load(sr, "d", "w", "101\tv1\t1\t1\tx\t1\n102\tv3\t1\t1\tx\t3\n"
                "103\tnew\t1\t1\tx\t1\n", merge_condition="ver")
    assert [(r["id"], r["name"], r["ver"]) for r in sr.rows("d", "w")] == [
        (101, "v2", 2), (102, "v3", 3), (103, "new", 1),
    ]


def test_merge_condition_equal_version_applies(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "1\told\t1\t1\tx\t5\n")
    stream_load(sr, "d", "w", "1\tsame\t1\t1\tx\t5\n", merge_condition="ver")
    assert sr.rows("d", "w")[0]["name"] == "same"


def test_merge_condition_does_not_guard_deletes(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "1\ta\t1\t1\tx\t9\n")
    stream_load(sr, "d", "w", '{"id": 1, "ver": 1, "__op": 1}', format="json",
                merge_condition="ver")
    assert sr.rows("d", "w") == []


@pytest.mark.parametrize(
    ("column", "message"),
    [("id", "primary key"), ("nope", "not found")],
)
def test_merge_condition_validation(sr: StarRocksEmulator, column: str, message: str) -> None:
    reply = stream_load(sr, "d", "w", "1\ta\t1\t1\tx\t1\n", merge_condition=column)
    assert reply["Status"] == "Fail"
    assert message in reply["Message"]


def test_partial_update_with_merge_condition(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "w", "1\ta\t1\t1\tx\t5\n")
    stream_load(sr, "d", "w", "1,old,4\n", column_separator=",", columns="id,name,ver",
                partial_update="true", merge_condition="ver")
    assert sr.rows("d", "w")[0]["name"] == "a"
    stream_load(sr, "d", "w", "1,new,6\n", column_separator=",", columns="id,name,ver",
                partial_update="true", merge_condition="ver")
    assert sr.rows("d", "w")[0] == {"id": 1, "name": "new", "score": 1, "bonus": 1,
                                    "note": "x", "ver": 6}


def test_failed_load_changes_nothing(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1\ta\t1\n")
    reply = stream_load(sr, "d", "t", "1\tz\t9\n2\tb\t2\n3\tc\n")
    assert reply["Status"] == "Fail"
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 1}]


def test_column_names_are_case_insensitive(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1,a\n", column_separator=",", columns="ID,Name")
    stream_load(sr, "d", "t", '{"Id": 2, "NAME": "b", "SCORE": 3}', format="json")
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 7}, {"id": 2, "name": "b", "score": 3},
    ]


def test_table_and_database_names_are_case_sensitive(sr: StarRocksEmulator) -> None:
    assert stream_load(sr, "d", "T", "1\ta\t1\n")["Message"] == 'unknown table "d.T"'
    assert stream_load(sr, "D", "t", "1\ta\t1\n")["Message"] == "unknown database, database=D"


def test_primary_key_size_limit(sr: StarRocksEmulator) -> None:
    make_table(sr, "CREATE TABLE big (k VARCHAR(200) NOT NULL, v INT) PRIMARY KEY (k)")
    reply = stream_load(sr, "d", "big", "x" * 129 + "\t1\n")
    assert reply["Status"] == "Fail"
    assert "primary key size exceed the limit" in reply["Message"]


def test_aborted_label_can_be_reused(sr: StarRocksEmulator) -> None:
    assert stream_load(sr, "d", "t", "1\tbad\n", label="L")["Status"] == "Fail"
    assert sr.label_state("d", "L") == "ABORTED"
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="L")["Status"] == "Success"
    again = stream_load(sr, "d", "t", "1\ta\t1\n", label="L")
    assert (again["Status"], again["ExistingJobStatus"]) == ("Label Already Exists", "FINISHED")


def test_labels_are_per_database(sr: StarRocksEmulator) -> None:
    make_table(sr, BASIC_DDL, db="other")
    assert stream_load(sr, "d", "t", "1\ta\t1\n", label="L")["Status"] == "Success"
    assert stream_load(sr, "other", "t", "1\ta\t1\n", label="L")["Status"] == "Success"


def test_label_retention_with_manual_clock() -> None:
    clock = ManualClock()
    with StarRocksEmulator(clock=clock, label_keep_max_second=60) as sr:
        make_table(sr, BASIC_DDL)
        stream_load(sr, "d", "t", "1\ta\t1\n", label="keep")
        clock.advance(59)
        assert stream_load(sr, "d", "t", "1\ta\t1\n", label="keep")["Status"] == (
            "Label Already Exists"
        )
        assert sr.label_state("d", "keep") == "VISIBLE"
        clock.advance(2)
        assert sr.label_state("d", "keep") == "UNKNOWN"
        assert stream_load(sr, "d", "t", "2\tb\t2\n", label="keep")["Status"] == "Success"
        state = request(f"{sr.url}/api/d/get_load_state?label=keep", method="GET").json
        assert state["state"] == "VISIBLE"
