"""Texts and positions from the team to items, and the roster: pure functions, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.item import Item, Kind, Position, Priority, decode, encode
from mesh.reports import parse_report, position_item, text_item
from mesh.roster import Roster

MEMBER = "!a1b2c3d4"


def team() -> Roster:
    roster = Roster()
    roster.update(MEMBER, heard_s=1000.0, long_name="张队长", short_name="ZDZ")
    roster.update(MEMBER, position=Position(30.01, 103.0, 620.0), position_s=1000.0)
    return roster


@pytest.mark.parametrize(
    "text",
    ["SOS 被困 3 人", "sos", "  Sos help", "求救！楼塌了", "\tＳＯＳ 伤员２", "求救"],
)
def test_sos_is_p0_with_the_senders_last_position(text: str) -> None:
    item = text_item(text, MEMBER, team(), now_s=1060.0)
    assert (item.kind, item.priority) == (Kind.SOS, Priority.P0)
    assert item.position == Position(30.01, 103.0, 620.0)
    assert item.source == "mesh:!a1b2c3d4"
    assert item.text == text
    assert item.data["sender"] == "张队长"
    assert item.data["position_age_s"] == 60


def test_sos_keeps_its_counts() -> None:
    assert text_item("SOS 被困 3 人", MEMBER, team()).data["trapped"] == 3


def test_sos_from_a_stranger_has_no_position() -> None:
    item = text_item("SOS", "!0badf00d", Roster())
    assert item.kind is Kind.SOS and item.position is None


@pytest.mark.parametrize(
    ("text", "data"),
    [
        (
            "伤员 3 被困 2 需要 水 药品 @ 桥头",
            {"injured": 3, "trapped": 2, "need": "水,药品", "place": "桥头"},
        ),
        (
            "casualties 3 trapped 2 needs water,medicine",
            {"injured": 3, "trapped": 2, "need": "water,medicine"},
        ),
        ("3 injured, 2 trapped", {"injured": 3, "trapped": 2}),
        ("伤员３人，被困２人＠村口", {"injured": 3, "trapped": 2, "place": "村口"}),
        ("受伤：4", {"injured": 4}),
        ("被困三人", {"trapped": 3}),
        ("十二名伤员 两人死亡", {"injured": 12, "dead": 2}),
        ("轻伤 2 重伤 1 失踪 5", {"injured": 3, "missing": 5}),
        ("需要 帐篷、食物 和 水", {"need": "帐篷,食物,水"}),
        ("rescued 7 @ school", {"rescued": 7, "place": "school"}),
    ],
)
def test_structured_reports_are_read(text: str, data: dict[str, object]) -> None:
    assert parse_report(text) == data


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("被困 2", Kind.TRAPPED),
        ("伤员 3 死亡 1", Kind.CASUALTIES),
        ("需要 水", Kind.NEEDS),
        ("伤员 3 被困 2 需要 水 药品 @ 桥头", Kind.SITUATION),
    ],
)
def test_reports_are_p1_of_the_kind_reported(text: str, kind: Kind) -> None:
    item = text_item(text, MEMBER, team())
    assert (item.kind, item.priority) == (kind, Priority.P1)
    assert item.position is not None


@pytest.mark.parametrize("text", ["到达桥头，一切正常", "我很伤心", "ok 123", "", "@"])
def test_anything_else_is_a_p1_message(text: str) -> None:
    item = text_item(text, MEMBER, team())
    assert (item.kind, item.priority, item.text) == (Kind.MESSAGE, Priority.P1, text)


def valid(item: Item) -> None:
    assert decode(encode(item)).uid == item.uid  # survives the wire, every check passed


@given(st.text(max_size=400))
def test_any_text_gives_exactly_one_valid_item(text: str) -> None:
    item = text_item(text, MEMBER, team())
    valid(item)
    assert item.priority in (Priority.P0, Priority.P1)


@given(
    st.sampled_from(["伤员", "受伤", "injured", "casualties", "被困", "trapped", "失踪"]),
    st.integers(0, 1_000_000),
    st.sampled_from(["", " ", "：", ":", " : "]),
    st.sampled_from(["", "人", " people", "名"]),
    st.booleans(),
)
def test_round_numbers_are_read_right(
    word: str, n: int, sep: str, unit: str, fullwidth: bool
) -> None:
    digits = (
        str(n).translate(str.maketrans("0123456789", "０１２３４５６７８９"))
        if fullwidth
        else str(n)
    )
    data = parse_report(f"{word}{sep}{digits}{unit}")
    key = {"伤员": "injured", "受伤": "injured", "casualties": "injured", "被困": "trapped"}
    assert data == {key.get(word, {"失踪": "missing"}.get(word, word)): n}


@given(st.binary(max_size=300))
def test_radio_bytes_as_text_never_break_anything(raw: bytes) -> None:
    valid(text_item(raw.decode("utf-8", "replace"), MEMBER, team()))


def test_position_is_a_p2_track_at_the_handhelds_time() -> None:
    item = position_item(MEMBER, 30.5, 103.5, 600.0, time_s=1_763_900_000, battery_percent=80)
    assert item is not None
    assert (item.kind, item.priority, item.source) == (Kind.TRACK, Priority.P2, "mesh:!a1b2c3d4")
    assert item.position == Position(30.5, 103.5, 600.0)
    assert (item.created_ms, item.clock_ok) == (1_763_900_000_000, True)
    assert item.data["battery"] == 80


@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.one_of(st.none(), st.floats()),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_any_position_gives_a_valid_track_or_none(
    lat: float, lon: float, alt: float | None, t: int | None
) -> None:
    item = position_item(MEMBER, lat, lon, alt, time_s=t)
    if item is not None:
        valid(item)
        assert item.kind is Kind.TRACK


def test_no_fix_is_no_track() -> None:
    assert position_item(MEMBER, 0.0, 0.0) is None


def test_roster_merges_what_it_learns_and_forgets_the_longest_unheard() -> None:
    roster = Roster(limit=2)
    roster.update("!00000001", heard_s=10, long_name="甲")
    roster.update("!00000002", heard_s=20, short_name="B")
    roster.update("!00000001", heard_s=30, battery_percent=55)
    assert [m.node_id for m in roster.members()] == ["!00000001", "!00000002"]
    assert roster.get("!00000001") is not None
    assert roster.get("!00000001").name == "甲"  # type: ignore[union-attr]
    assert roster.get("!00000001").battery_percent == 55  # type: ignore[union-attr]
    roster.update("!00000003", heard_s=40)
    assert "!00000002" not in roster and len(roster) == 2


def test_roster_keeps_the_newer_of_two_positions_and_never_goes_back_in_time() -> None:
    roster = Roster()
    roster.update("!00000001", heard_s=100, position=Position(1, 1), position_s=100)
    m = roster.update("!00000001", heard_s=50, position=Position(2, 2), position_s=50)
    assert (m.position, m.last_heard_s) == (Position(1, 1), 100)


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 1e9)), max_size=60))
def test_roster_is_bounded_and_evicts_in_order_of_hearing(
    updates: list[tuple[int, float]],
) -> None:
    roster = Roster(limit=5)
    for n, t in updates:
        roster.update(f"!{n:08x}", heard_s=t)
    members = roster.members()
    assert len(members) <= 5
    heard = [m.last_heard_s for m in members]
    assert heard == sorted(heard, reverse=True)  # type: ignore[type-var]
