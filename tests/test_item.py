"""The item model: validation with precise messages, and a lossless encoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import items

from edge.errors import BadItem
from edge.item import MAX_ENCODED_BYTES, Item, Kind, Position, Priority, decode, encode, new_item
from edge.uuid7 import uuid7


@settings(max_examples=300)
@given(items())
def test_encode_decode_round_trip(item: Item) -> None:
    assert decode(encode(item)) == item


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_raises_only_bad_item(blob: bytes) -> None:
    with contextlib.suppress(BadItem):
        decode(blob)


@settings(max_examples=300)
@given(items(), st.integers(0, 10_000), st.integers(0, 255))
def test_corrupted_encoding_raises_only_bad_item(item: Item, pos: int, byte: int) -> None:
    blob = bytearray(encode(item))
    blob[pos % len(blob)] = byte
    with contextlib.suppress(BadItem):
        decode(bytes(blob))


def _error(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(BadItem) as err:
        fn(*args, **kwargs)  # type: ignore[operator]
    return str(err.value)


def test_position_off_the_planet_is_refused_precisely() -> None:
    assert (
        _error(Position, 91.0, 0.0)
        == "纬度超出范围（-90…90）：91.0 / latitude out of range (-90..90): 91.0"
    )
    assert _error(Position, 0.0, -180.5) == (
        "经度超出范围（-180…180）：-180.5 / longitude out of range (-180..180): -180.5"
    )
    assert _error(Position, 0.0, 0.0, 40000.0) == (
        "海拔超出范围（-1000…20000 米）：40000.0 / altitude out of range (-1000..20000 m): 40000.0"
    )
    assert (
        _error(Position, float("nan"), 0.0)
        == "位置字段 lat 不是有限数 / position lat is not finite"
    )
    assert (
        _error(Position.parse, "30.1")
        == "位置格式应为 纬度,经度[,海拔]：'30.1' / position must be lat,lon[,alt]: '30.1'"
    )


def test_non_utf8_text_is_refused() -> None:
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    assert (
        _error(new_item, "message", source="cli", text=bad)
        == "文字不是有效的 UTF-8 / text is not valid UTF-8"
    )


def test_oversized_payload_is_refused() -> None:
    msg = _error(
        new_item,
        "message",
        source="cli",
        text="x" * 1000,
        data={f"k{i}": "长" * 250 for i in range(30)},
    )
    assert msg.startswith("内容过大：")
    assert f"(limit {MAX_ENCODED_BYTES}); send large content as media" in msg
    assert _error(new_item, "message", source="cli", text="长" * 2001) == (
        "文字过长：2001 字（上限 2000） / text too long: 2001 characters (limit 2000)"
    )


def test_missing_content_and_wrong_class_are_refused() -> None:
    assert _error(new_item, "situation", source="cli") == "条目没有内容 / the item has no content"
    assert (
        _error(new_item, "track", source="cli", text="x")
        == "轨迹点需要位置 / a track needs a position"
    )
    assert (
        _error(new_item, "sos", source="cli", priority="P2")
        == "sos 的优先级只能是 P0，而不是 P2 / sos must be P0, not P2"
    )
    assert (
        _error(new_item, "photo", source="cli", text="x")
        == "photo 需要媒体文件 / photo needs a media file"
    )
    assert _error(Kind.parse, "sso").startswith("类型无效：'sso'（可选：sos, trapped,")
    assert (
        _error(Priority.parse, "P9")
        == "优先级无效：'P9'（应为 P0–P4） / invalid priority 'P9' (expected P0-P4)"
    )
    assert (
        _error(new_item, "casualties", source="cli", data={"count": -1})
        == "人数无效：-1 / invalid count: -1"
    )


def test_sos_is_life_class_and_urgent_reports_may_be_raised_to_p0() -> None:
    assert new_item("sos", source="btn").priority is Priority.P0
    assert new_item("casualties", source="cli", data={"count": 2}).priority is Priority.P1
    assert (
        new_item("casualties", source="cli", data={"count": 2}, priority="p0").priority
        is Priority.P0
    )


def test_clock_flag_marks_times_not_set_from_gnss() -> None:
    item = new_item("message", source="cli", text="x", clock_ok=False, created_ms=1000)
    assert not item.clock_ok and item.created_ms == 1000
    assert _error(new_item, "message", source="cli", text="x", clock_ok=True, created_ms=1000) == (
        "创建时间不合理：1000 / implausible creation time: 1000"
    )


def test_uuid7_is_time_ordered_and_unique() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(u.version == 7 for u in ids[:10])
