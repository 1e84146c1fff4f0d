"""pgoutput protocol negotiation (the highest protocol both sides speak, or a clear error)
and what differs between server versions in the stream."""

from __future__ import annotations

import pytest

from dbmazz.errors import SourceError
from dbmazz.source.chunk import WalChunk
from dbmazz.source.empty import EmptyTransactionFilter
from dbmazz.source.protocol import drop_empty_transactions, max_protocol, negotiate_protocol


@pytest.mark.parametrize(("server", "highest"), [
    (130011, 1), (140023, 2), (150018, 3), (160014, 4), (170010, 4), (180004, 4),
])
def test_auto_picks_the_highest_protocol_of_the_server(server: int, highest: int) -> None:
    assert max_protocol(server) == highest
    assert negotiate_protocol("auto", server, "db") == highest


def test_an_explicit_protocol_is_kept_when_the_server_speaks_it() -> None:
    assert negotiate_protocol(1, 180004, "db") == 1
    assert negotiate_protocol("2", 140023, "db") == 2


def test_a_protocol_newer_than_the_server_names_the_version_and_the_fix() -> None:
    with pytest.raises(SourceError) as info:
        negotiate_protocol("4", 140023, "db.example:5432/shop")
    assert "PostgreSQL 14" in info.value.message and "up to 2" in info.value.message
    assert info.value.hint is not None and "PGOUTPUT_PROTOCOL=auto" in info.value.hint


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="auto or 1-4"):
        negotiate_protocol("5", 180004, "db")


def _chunk(kinds: str) -> WalChunk:
    return WalChunk.from_messages([k.encode() + bytes([i]) for i, k in enumerate(kinds)],
                                  range(len(kinds)))


def test_empty_transactions_of_postgresql_14_are_dropped() -> None:
    # B C = an empty transaction; B I C and B M C hold something; a lone trailing B stays.
    chunk = drop_empty_transactions(_chunk("BCBICBCBMCB"))
    assert chunk is not None
    assert [m[:1].decode() for m in chunk.messages()] == list("BICBMCB")
    assert chunk.lsns.tolist() == [2, 3, 4, 7, 8, 9, 10]
    assert drop_empty_transactions(_chunk("BCBC")) is None
    untouched = _chunk("BIC")
    assert drop_empty_transactions(untouched) is untouched


def _kinds(chunk: WalChunk | None) -> str:
    return "" if chunk is None else "".join(m[:1].decode() for m in chunk.messages())


def _reads(*kinds: str) -> list[WalChunk | None]:
    return [_chunk(k) if k else None for k in kinds]


def _hand_out(reads: list[WalChunk | None]) -> tuple[list[str], EmptyTransactionFilter]:
    """What the filter hands out, one call per read (plus the calls a held-back Begin's
    delivery needs), and the filter."""
    empties = EmptyTransactionFilter()
    pending = list(reads)
    out: list[str] = []
    while pending:
        out.append(_kinds(empties.next(lambda: pending.pop(0))))
    out.append(_kinds(empties.next(lambda: None)))
    return out, empties


def test_an_empty_transaction_split_by_a_read_is_dropped_too() -> None:
    # The read ends with the Begin; the next starts with its Commit: neither is handed out.
    out, empties = _hand_out(_reads("BIC" + "B", "C" + "BIC"))
    assert out == ["BIC", "BIC", ""]
    assert not empties.holding


def test_a_begin_split_from_its_changes_is_handed_out_before_them() -> None:
    out, _ = _hand_out(_reads("BICB", "IIC"))
    assert out == ["BIC", "B", "IIC"]
    # A read of nothing but a Begin holds it; an empty read in between changes nothing.
    out, _ = _hand_out(_reads("B", "", "IC", "B", "C"))
    assert out == ["", "", "B", "IC", "", "", ""]


def test_a_held_begin_is_reported_so_the_slot_is_not_moved_past_it() -> None:
    empties = EmptyTransactionFilter()
    assert empties.next(lambda: _chunk("BICB")) is not None
    assert empties.holding
    assert empties.next(lambda: None) is None and empties.holding
    assert _kinds(empties.next(lambda: _chunk("IC"))) == "B"
    assert not empties.holding
    assert _kinds(empties.next(lambda: None)) == "IC"
