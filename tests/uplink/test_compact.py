"""Compact items on narrow links: the 78-byte SOS, round trips, media, fitting, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import math
import uuid
from types import MappingProxyType

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge.errors import BadItem
from edge.item import (
    ALT_RANGE_M,
    MAX_CLOCK_MS,
    MIN_SET_CLOCK_MS,
    DataValue,
    Item,
    Kind,
    MediaRef,
    Position,
    Priority,
)
from uplink.compact import (
    DATA_KEYS,
    MIME_CODES,
    SOS_SEQ,
    count_fitting,
    figures,
    narrow_key,
    narrow_uid,
    pack_item,
    pack_items,
    sos_example,
    unpack_entries,
    unpack_items,
)
from uplink.frames import (
    MTU_BEIDOU,
    MTU_MESH,
    SINGLE_OVERHEAD,
    BadFrame,
    decode_frame,
    fragment,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KIT = 7
T0 = 1_747_031_284_000  # 2025-05-12, GNSS time
SHA = hashlib.sha256(b"photo").hexdigest()


def item(kind: Kind = Kind.SITUATION, **fields: object) -> Item:
    base: dict[str, object] = {
        "uid": uuid.uuid4(),
        "kind": kind,
        "priority": kind.default_priority,
        "created_ms": T0,
        "clock_ok": True,
        "source": "kit",
    }
    base.update(fields)
    return Item(**base)  # type: ignore[arg-type]


def round_trip(original: Item, seq: int = 1) -> Item:
    ((got_seq, got),) = unpack_items(pack_items([(seq, original)]), kit_id=KIT)
    assert got_seq == seq
    return got


# --- the hard constraint -----------------------------------------------------------------


def test_sos_with_position_count_and_chinese_note_fits_one_beidou_message() -> None:
    sos = sos_example()
    assert sos.priority is Priority.P0 and sos.text == "楼房倒塌三人被困急需救援"
    frames = fragment(0xFFFF, 0xFFFF_FFFF, pack_items([(SOS_SEQ, sos)]), MTU_BEIDOU)
    assert len(frames) == 1 and len(frames[0]) <= MTU_BEIDOU  # tag included
    ((seq, got),) = unpack_items(decode_frame(frames[0]).payload, kit_id=0xFFFF)
    assert seq == SOS_SEQ and got.text == sos.text and dict(got.data) == {"count": 3}
    assert got.position == Position(30.657812, 104.065735, 512.0)


def test_figures_report_the_sos_frame_and_header_plus_tag_overheads() -> None:
    assert figures() == {
        "sos_frame_bytes": 68,
        "sos_frames": 1,
        "sos_item_bytes": 53,
        "beidou_mtu": 77,
        "frame_overhead_bytes": 15,
        "fragment_overhead_bytes": 17,
    }


# --- round trips -------------------------------------------------------------------------

CONTROL = "".join(map(chr, [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F]))
texts = st.text(
    st.one_of(
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(codec="utf-8", exclude_characters=CONTROL),
    ),
    max_size=60,
)
sources = st.one_of(
    st.sampled_from(["kit", "web", "cli", "button"]),
    st.integers(0, 2**32 - 1).map(lambda n: f"mesh:!{n:08x}"),
    texts.filter(lambda t: 0 < len(t) <= 64),
)
positions = st.builds(
    Position,
    st.floats(-90, 90),
    st.floats(-180, 180),
    st.none() | st.floats(*ALT_RANGE_M),
    st.none() | st.floats(0, 100_000),
)
values: st.SearchStrategy[DataValue] = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 1_000_000),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
data_maps = st.dictionaries(
    st.one_of(st.sampled_from(DATA_KEYS), st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)),
    values,
    max_size=5,
)
media_refs = st.builds(
    MediaRef,
    st.just("photos/2025/a.jpg"),
    st.integers(0, 2**40),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.sampled_from([*MIME_CODES, "application/x-custom"]),
)


@st.composite
def items(draw: st.DrawFn) -> Item:
    kind = draw(st.sampled_from(Kind))
    clock_ok = draw(st.booleans())
    try:
        return Item(
            uid=uuid.uuid4(),
            kind=kind,
            priority=draw(st.sampled_from(kind.allowed_priorities)),
            created_ms=draw(st.integers(MIN_SET_CLOCK_MS if clock_ok else 0, MAX_CLOCK_MS)),
            clock_ok=clock_ok,
            source=draw(sources),
            text=draw(st.none() | texts),
            position=draw(positions) if kind is Kind.TRACK else draw(st.none() | positions),
            data=draw(data_maps),
            media=draw(media_refs) if kind.is_media else None,
            parent=draw(st.none() | st.uuids()),
        )
    except BadItem:
        assume(False)
        raise


def same_values(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


@FAST
@given(items(), st.integers(0, 2**62 - 1))
def test_compact_item_round_trip(original: Item, seq: int) -> None:
    got = round_trip(original, seq)
    assert got.uid == narrow_uid(KIT, seq)
    assert (got.kind, got.priority, got.clock_ok) == (
        original.kind,
        original.priority,
        original.clock_ok,
    )
    assert got.created_ms == original.created_ms // 1000 * 1000
    assert got.source == original.source and got.text == original.text
    assert got.parent == original.parent
    assert got.data.keys() == original.data.keys()
    assert all(same_values(got.data[k], v) for k, v in original.data.items())
    if original.position is None:
        assert got.position is None
    else:
        p, q = original.position, got.position
        assert q is not None
        assert abs(q.lat - p.lat) <= 0.5e-7 + 1e-12 and abs(q.lon - p.lon) <= 0.5e-7 + 1e-12
        assert q.alt_m == (None if p.alt_m is None else round(p.alt_m))
        assert q.accuracy_m == (None if p.accuracy_m is None else math.ceil(p.accuracy_m))
    if original.media is None:
        assert got.media is None
    else:
        assert got.media is not None
        assert (got.media.size, got.media.mime) == (original.media.size, original.media.mime)
        assert got.media.sha256[:16] == original.media.sha256[:16]


@FAST
@given(items(), st.integers(0, 2**62 - 1))
def test_packing_is_deterministic_whatever_the_data_order(original: Item, seq: int) -> None:
    reordered = item(
        original.kind,
        **{
            f: getattr(original, f)
            for f in ("priority", "created_ms", "clock_ok", "source", "text", "position")
        },
        media=original.media,
        parent=original.parent,
        data=MappingProxyType(dict(reversed(list(original.data.items())))),
    )
    assert pack_item(seq, reordered) == pack_item(seq, original)


def test_chinese_text_travels_as_gb18030_and_latin_as_utf8() -> None:
    chinese = pack_item(1, item(text="急需饮用水"))
    latin = pack_item(1, item(text="need water"))
    assert "急需饮用水".encode("gb18030") in chinese
    assert b"need water" in latin
    assert len(chinese) < len(pack_item(1, item(text="x" * 15)))  # 10 bytes, not 15
    assert round_trip(item(text="急需饮用水")).text == "急需饮用水"


def test_uid_is_dropped_and_rebuilt_from_kit_and_seq() -> None:
    original = item(text="hi")
    assert original.uid.bytes not in pack_item(5, original)
    uid = narrow_uid(KIT, 5)
    assert round_trip(original, seq=5).uid == uid
    assert uid.version == 8 and narrow_key(uid) == (KIT, 5)
    assert narrow_key(uuid.uuid4()) is None
    assert narrow_uid(KIT, 5) != narrow_uid(KIT + 1, 5)


def test_unsynchronised_clock_times_survive_from_1970() -> None:
    got = round_trip(item(created_ms=12_345_678, clock_ok=False, text="t"))
    assert (got.created_ms, got.clock_ok) == (12_345_000, False)


def test_media_reference_carries_size_sha_prefix_and_mime_only() -> None:
    photo = item(Kind.PHOTO, media=MediaRef("photos/big.jpg", 4_000_000, SHA, "image/jpeg"))
    packed = pack_item(3, photo)
    assert bytes.fromhex(SHA)[:8] in packed and bytes.fromhex(SHA)[8:16] not in packed
    assert b"big.jpg" not in packed
    got = round_trip(photo)
    assert got.media == MediaRef(f"narrow/{SHA[:16]}", 4_000_000, SHA[:16] + "0" * 48, "image/jpeg")


def test_p3_thumbnail_travels_inline_with_its_own_checksum() -> None:
    blob = bytes(range(256)) * 3
    digest = hashlib.sha256(blob).hexdigest()
    parent = uuid.uuid4()
    thumb = item(
        Kind.THUMBNAIL, media=MediaRef("t/1.webp", len(blob), digest, "image/webp"), parent=parent
    )
    payload = pack_items([(9, thumb)], blobs={9: blob})
    (entry,) = unpack_entries(payload, kit_id=KIT)
    assert entry.blob == blob and entry.item.parent == parent
    assert entry.item.media == MediaRef(f"narrow/{digest[:16]}", len(blob), digest, "image/webp")
    frames = fragment(KIT, 1, payload, MTU_MESH)
    assert len(frames) == 4 and all(len(f) <= MTU_MESH for f in frames)


def test_inline_media_is_refused_unless_it_is_p3_and_matches_its_reference() -> None:
    photo = item(
        Kind.PHOTO, media=MediaRef("p.jpg", 5, hashlib.sha256(b"photo").hexdigest(), "image/jpeg")
    )
    with pytest.raises(BadFrame) as err:
        pack_items([(1, photo)], blobs={1: b"photo"})
    assert err.value.en == "item 1: only P3 media (thumbnail, preview, voice) may travel inline"
    voice = item(Kind.VOICE, media=MediaRef("v.c2", 5, SHA, "audio/codec2"))
    with pytest.raises(BadFrame, match="does not match the media reference"):
        pack_items([(1, voice)], blobs={1: b"other"})
    big = bytes(1601)
    large = item(
        Kind.VOICE, media=MediaRef("v.c2", 1601, hashlib.sha256(big).hexdigest(), "audio/codec2")
    )
    with pytest.raises(BadFrame, match="inline content is 1601 bytes, limit 1600"):
        pack_items([(1, large)], blobs={1: big})


def test_count_fitting_reports_how_many_items_fit_an_mtu() -> None:
    reports = [(n, item(text=f"第{n}组报告：道路中断")) for n in range(1, 10)]
    size = len(pack_item(1, reports[0][1]))
    assert all(len(pack_item(n, i)) == size for n, i in reports)
    fit = (MTU_MESH - SINGLE_OVERHEAD) // size
    assert count_fitting(reports, MTU_MESH) == fit
    assert len(fragment(KIT, 1, pack_items(reports[:fit]), MTU_MESH)) == 1
    assert len(fragment(KIT, 1, pack_items(reports[: fit + 1]), MTU_MESH)) == 2
    assert count_fitting([(SOS_SEQ, sos_example())], MTU_BEIDOU) == 1
    assert count_fitting(reports, SINGLE_OVERHEAD + size - 1) == 0


def test_several_items_share_one_payload_in_order() -> None:
    entries = [
        (10, item(text="一")),
        (11, sos_example()),
        (12, item(Kind.TRACK, position=Position(1, 2))),
    ]
    got = unpack_items(pack_items(entries), kit_id=KIT)
    assert [s for s, _ in got] == [10, 11, 12]
    assert [i.kind for _, i in got] == [Kind.SITUATION, Kind.SOS, Kind.TRACK]


def test_pack_items_refuses_nothing_and_duplicate_seqs() -> None:
    with pytest.raises(BadFrame, match="no items to pack"):
        pack_items([])
    with pytest.raises(BadFrame, match="duplicate item sequence"):
        pack_items([(1, item(text="a")), (1, item(text="b"))])


# --- bad input ---------------------------------------------------------------------------

SOS_PAYLOAD = pack_items([(SOS_SEQ, sos_example())])


def with_body(body: bytes) -> bytes:
    return bytes([len(body)]) + body


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "条目载荷：没有条目 / ITEMS payload: no items"),
        (
            SOS_PAYLOAD[:-3],
            "条目载荷：第 1 个条目被截断（需要 52 字节，仅剩 49 字节） / "
            "ITEMS payload: item 1 truncated (49 of 52 bytes present)",
        ),
        (
            with_body(bytes([1, 99, 0, 0, 0, 0, 0, 0, 1])),
            "第 1 个条目：未知条目类型代码：99 / item 1: unknown kind code 99",
        ),
        (
            with_body(bytes([1, 1, 0x80, 0, 0, 0, 0, 0, 1])),
            "第 1 个条目：保留标志位不为 0：0x8000 / item 1: reserved flag bits set: 0x8000",
        ),
        (
            with_body(bytes([1, 1, 0, 5, 0, 0, 0, 0, 1])),
            "第 1 个条目：优先级代码无效：5 / item 1: invalid priority code 5",
        ),
        (
            with_body(bytes([1, 1, 0, 1, 0, 0, 0, 0, 1])),
            "第 1 个条目：sos 的优先级只能是 P0，而不是 P1 / item 1: sos must be P0, not P1",
        ),
        (
            with_body(bytes([1, 1, 0, 0, 0, 0, 0, 0, 9])),
            "第 1 个条目：未知来源代码：9 / item 1: unknown source code 9",
        ),
        (
            with_body(bytes([1, 1, 0, 0, 0, 0, 0, 0, 1, 0x1E])),
            "第 1 个条目：未知数据字段代码：30 / item 1: unknown data field code 30",
        ),
        (
            with_body(bytes([1, 9, 0, 2, 0, 0, 0, 0, 1])),
            "第 1 个条目：轨迹点需要位置 / item 1: a track needs a position",
        ),
        (
            with_body(bytes([1, 1, 0, 0x10, 0, 0, 0, 0, 1, 0x40]) + bytes(7)),
            "第 1 个条目：纬度超出范围（-90…90）：107.3741824 / "
            "item 1: latitude out of range (-90..90): 107.3741824",
        ),
        (
            SOS_PAYLOAD + SOS_PAYLOAD,
            "条目载荷：条目序号 100000 重复 / ITEMS payload: duplicate item sequence 100000",
        ),
    ],
)
def test_unpack_items_errors_are_precise(payload: bytes, message: str) -> None:
    with pytest.raises(BadFrame) as err:
        unpack_items(payload, kit_id=KIT)
    assert str(err.value) == message


@FAST
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(SOS_PAYLOAD) - 1), st.integers(0, 255)).map(
            lambda m: SOS_PAYLOAD[: m[0]] + bytes([m[1]]) + SOS_PAYLOAD[m[0] + 1 :]
        ),
        st.binary(max_size=40).map(lambda b: SOS_PAYLOAD[: len(SOS_PAYLOAD) - len(b)] + b),
    )
)
def test_unpack_items_on_arbitrary_bytes_raises_only_bad_frame(payload: bytes) -> None:
    with contextlib.suppress(BadFrame):
        unpack_entries(payload, kit_id=KIT)
