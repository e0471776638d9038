"""Narrow-link frames: header layout, tags, fragmentation, reassembly and control payloads."""

from __future__ import annotations

import contextlib
import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import KitError
from uplink.frames import (
    FRAGMENT_OVERHEAD,
    MAX_FRAME_BYTES,
    MTU_BEIDOU,
    MTU_BEIDOU_REGIONAL,
    MTU_MESH,
    MTU_SMS,
    SINGLE_OVERHEAD,
    TAG_BYTES,
    BadFrame,
    Frame,
    FrameType,
    Order,
    Reassembler,
    Status,
    ack_ranges,
    decode_frame,
    encode_frame,
    fragment,
    pack_ack,
    pack_missing,
    pack_order,
    unpack_ack,
    unpack_missing,
    unpack_order,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MTUS = (MTU_BEIDOU, MTU_SMS, MTU_MESH, MTU_BEIDOU_REGIONAL)


def blake_tag(signed: bytes) -> bytes:
    return hashlib.blake2s(signed, digest_size=TAG_BYTES).digest()


class BlakeSealer:
    """A stand-in for security's sealers: payload in clear, a keyless hash as the tag."""

    def seal(self, frame: Frame, header: bytes) -> bytes:
        return frame.payload + blake_tag(header + frame.payload)

    def open(self, frame: Frame, header: bytes) -> bytes:
        payload, tag = frame.payload[:-TAG_BYTES], frame.payload[-TAG_BYTES:]
        if blake_tag(header + payload) != tag:
            raise BadFrame("认证标签校验失败", "authentication tag does not verify")
        return payload


class ShortSealer(BlakeSealer):
    def seal(self, frame: Frame, header: bytes) -> bytes:
        return frame.payload + b"abcd"


BLAKE = BlakeSealer()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frames_of(raw: list[bytes]) -> list[Frame]:
    return [decode_frame(b) for b in raw]


# --- header ------------------------------------------------------------------------------


def test_bad_frame_is_a_bilingual_kit_error_and_a_value_error() -> None:
    err = BadFrame("中文", "English")
    assert isinstance(err, KitError) and isinstance(err, ValueError)
    assert str(err) == "中文 / English"


def test_single_frame_costs_15_bytes_of_header_and_tag_and_a_fragment_17() -> None:
    raw = encode_frame(Frame(FrameType.ITEMS, 7, 1, b"x"))
    assert raw == bytes([0x21, 0x00, 0x07, 0, 0, 0, 1]) + b"x" + bytes(TAG_BYTES)
    assert len(raw) - 1 == SINGLE_OVERHEAD == 15
    frag = encode_frame(
        Frame(FrameType.ACK, 0x0102, 0x0A0B0C0D, b"y", downlink=True, index=1, count=3)
    )
    assert frag[:9] == bytes([0x3A, 0x01, 0x02, 0x0A, 0x0B, 0x0C, 0x0D, 1, 3])
    assert len(frag) - 1 == FRAGMENT_OVERHEAD == 17


frames = st.builds(
    lambda t, kit, seq, payload, down, frag: Frame(
        t, kit, seq, payload, down, frag[0] % frag[1] if frag[1] > 1 else 0, frag[1]
    ),
    st.sampled_from(FrameType),
    st.integers(1, 0xFFFF),
    st.integers(0, 0xFFFF_FFFF),
    st.binary(min_size=1, max_size=200),
    st.booleans(),
    st.tuples(st.integers(0, 254), st.integers(1, 255)),
)


@FAST
@given(frames, st.booleans())
def test_frame_encode_decode_round_trip(frame: Frame, tagged: bool) -> None:
    raw = encode_frame(frame, sealer=BLAKE if tagged else None)
    assert decode_frame(raw, sealer=BLAKE if tagged else None) == frame
    assert raw[-TAG_BYTES:] == (blake_tag(raw[:-TAG_BYTES]) if tagged else bytes(TAG_BYTES))


def test_sealer_rejects_a_corrupted_payload_byte() -> None:
    raw = bytearray(encode_frame(Frame(FrameType.ITEMS, 7, 9, b"hello"), sealer=BLAKE))
    raw[8] ^= 0x01
    with pytest.raises(BadFrame) as err:
        decode_frame(bytes(raw), sealer=BLAKE)
    assert str(err.value) == "认证标签校验失败 / authentication tag does not verify"


def test_a_sealer_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(BadFrame, match="sealed payload must be 9 bytes, got 5"):
        encode_frame(Frame(FrameType.ITEMS, 7, 9, b"x"), sealer=ShortSealer())


GOOD = encode_frame(Frame(FrameType.ITEMS, 7, 9, b"payload"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            GOOD[:5],
            "帧被截断：5 字节，至少需要 16 字节 / truncated frame: 5 bytes, at least 16 needed",
        ),
        (
            bytes(MAX_FRAME_BYTES + 1),
            "帧过大：1751 字节（上限 1750） / frame too large: 1751 bytes (limit 1750)",
        ),
        (
            bytes([0x41]) + GOOD[1:],
            "帧版本不受支持：2（支持 1） / unsupported frame version 2 (expected 1)",
        ),
        (bytes(20), "帧版本不受支持：0（支持 1） / unsupported frame version 0 (expected 1)"),
        (bytes([0x26]) + GOOD[1:], "未知帧类型：6 / unknown frame type 6"),
        (bytes([0x21, 0, 0]) + GOOD[3:], "套件短编号为 0 / kit short id is 0"),
        (
            bytes([0x29]) + GOOD[1:7] + bytes([0, 1]) + GOOD[7:],
            "分片编号无效：0/1 / invalid fragment index/count: 0/1",
        ),
        (
            bytes([0x29]) + GOOD[1:7] + bytes([3, 3]) + GOOD[7:],
            "分片编号无效：3/3 / invalid fragment index/count: 3/3",
        ),
        (
            bytes([0x29]) + GOOD[1:7] + bytes([0, 2]) + bytes(8),
            "分片帧被截断：17 字节，至少需要 18 字节 / "
            "truncated fragment: 17 bytes, at least 18 needed",
        ),
        ("text", "帧不是字节串：str / frame is not bytes: str"),
    ],
)
def test_bad_frames_raise_bad_frame_with_a_precise_message(raw: bytes, message: str) -> None:
    with pytest.raises(BadFrame) as err:
        decode_frame(raw)
    assert str(err.value) == message


@FAST
@given(st.one_of(st.binary(max_size=2000), st.binary(max_size=60).map(lambda b: GOOD[:9] + b)))
def test_decode_frame_of_arbitrary_bytes_raises_only_bad_frame(raw: bytes) -> None:
    with contextlib.suppress(BadFrame):
        decode_frame(raw)


# --- fragmentation and reassembly --------------------------------------------------------


@FAST
@given(st.data(), st.sampled_from(MTUS), st.binary(min_size=1, max_size=4000))
def test_fragment_shuffle_duplicate_reassemble_round_trip(
    data: st.DataObject, mtu: int, payload: bytes
) -> None:
    raw = fragment(42, 1234, payload, mtu)
    assert all(len(b) <= mtu for b in raw)
    arrivals = data.draw(st.permutations(raw))
    arrivals += data.draw(st.lists(st.sampled_from(raw), max_size=5))  # resends, other links
    assembler = Reassembler()
    done = [o.message for o in (assembler.add(decode_frame(b)) for b in arrivals) if o.message]
    assert done and all(m.payload == payload for m in done)
    assert (done[0].kit_id, done[0].msg_seq, done[0].type) == (42, 1234, FrameType.ITEMS)
    assert len(assembler) == 0 or assembler.pending() == []


def test_a_message_that_fits_goes_as_one_frame_without_fragment_fields() -> None:
    (raw,) = fragment(7, 3, bytes(MTU_BEIDOU - SINGLE_OVERHEAD), MTU_BEIDOU)
    assert len(raw) == MTU_BEIDOU and decode_frame(raw).count == 1
    cut = fragment(7, 3, bytes(MTU_BEIDOU - SINGLE_OVERHEAD + 1), MTU_BEIDOU)
    assert [decode_frame(b).count for b in cut] == [2, 2]


def test_fragment_refuses_a_message_needing_more_than_255_fragments() -> None:
    chunk = MTU_BEIDOU - FRAGMENT_OVERHEAD
    assert len(fragment(7, 1, bytes(255 * chunk), MTU_BEIDOU)) == 255
    with pytest.raises(BadFrame) as err:
        fragment(7, 1, bytes(255 * chunk + 1), MTU_BEIDOU)
    assert err.value.en == "a 15301-byte message needs 256 fragments at MTU 77 (limit 255)"


def test_resent_fragment_is_byte_identical() -> None:
    payload = bytes(range(256)) * 2
    assert fragment(7, 55, payload, MTU_SMS) == fragment(7, 55, payload, MTU_SMS)


def test_lost_fragment_is_reported_missing_and_resent_alone() -> None:
    payload = bytes(range(200))
    sent = fragment(7, 55, payload, MTU_BEIDOU)  # 61-byte slices: 4 fragments
    assert len(sent) == 4
    centre = Reassembler()
    for i in (0, 2, 3):
        assert centre.add(decode_frame(sent[i])).status is Status.PARTIAL
    assert centre.missing(7, 55) == (1,)
    (pending,) = centre.pending()
    nack = fragment(
        7,
        900,
        pack_missing(pending.msg_seq, pending.count, pending.missing),
        MTU_BEIDOU,
        ftype=FrameType.MISSING,
        downlink=True,
    )
    assert len(nack) == 1 and len(nack[0]) == SINGLE_OVERHEAD + 4 + 1 + 1

    # The kit reads the request and re-sends exactly the fragment asked for.
    request = decode_frame(nack[0])
    assert request.type is FrameType.MISSING and request.downlink
    wanted = unpack_missing(request.payload)
    assert (wanted.msg_seq, wanted.count, wanted.indices) == (55, 4, (1,))
    resend = [
        fragment(request.kit_id, wanted.msg_seq, payload, MTU_BEIDOU)[i] for i in wanted.indices
    ]
    assert resend == [sent[1]]
    outcome = centre.add(decode_frame(resend[0]))
    assert outcome.status is Status.COMPLETE and outcome.message is not None
    assert outcome.message.payload == payload
    assert centre.missing(7, 55) == () and centre.pending() == []


def test_refragmenting_for_a_bigger_mtu_uses_a_new_message_sequence() -> None:
    payload = bytes(range(150))
    centre = Reassembler()
    beidou = fragment(7, 60, payload, MTU_BEIDOU)
    centre.add(decode_frame(beidou[0]))  # the rest is lost; a mesh link comes up

    # Re-cutting under the same sequence would put different bytes under (kit, 60, index 0):
    reused = fragment(7, 60, payload, MTU_MESH)
    assert reused[0] != beidou[0]
    ignored = centre.add(decode_frame(reused[0]))
    assert ignored.status is Status.IGNORED and ignored.reason is not None
    assert "expected 3 of type ITEMS, got 1" in ignored.reason.en

    # So a bigger MTU takes a new message sequence, and that one completes.
    (mesh,) = fragment(7, 61, payload, MTU_MESH)
    outcome = centre.add(decode_frame(mesh))
    assert outcome.message is not None and outcome.message.payload == payload


def test_a_sequence_completed_as_one_frame_is_not_reused_for_fragments() -> None:
    centre = Reassembler()
    centre.add(decode_frame(fragment(7, 70, b"short", MTU_MESH)[0]))
    late = centre.add(decode_frame(fragment(7, 70, bytes(300), MTU_MESH)[0]))
    assert late.status is Status.IGNORED and late.reason is not None
    assert late.reason.en.startswith("message 70 completed as 1 fragment(s) of type ITEMS")


def test_inconsistent_fragment_count_is_ignored_with_a_reason() -> None:
    centre = Reassembler()
    centre.add(Frame(FrameType.ITEMS, 7, 5, b"a" * 10, index=0, count=3))
    outcome = centre.add(Frame(FrameType.ITEMS, 7, 5, b"b" * 10, index=1, count=4))
    assert outcome.status is Status.IGNORED and outcome.reason is not None
    assert str(outcome.reason) == (
        "消息 5 的分片不一致：已知 3 个（ITEMS），此帧为 4 个（ITEMS） / "
        "inconsistent fragment of message 5: expected 3 of type ITEMS, got 4 of type ITEMS"
    )
    assert centre.missing(7, 5) == (1, 2)


def test_conflicting_or_misshapen_fragments_are_ignored() -> None:
    centre = Reassembler()
    centre.add(Frame(FrameType.ITEMS, 7, 5, b"a" * 10, index=0, count=3))
    assert (
        centre.add(Frame(FrameType.ITEMS, 7, 5, b"a" * 10, index=0, count=3)).status
        is Status.DUPLICATE
    )
    clash = centre.add(Frame(FrameType.ITEMS, 7, 5, b"z" * 10, index=0, count=3))
    assert (
        clash.reason is not None
        and clash.reason.en == "fragment 0 of message 5 differs from the one held"
    )
    short = centre.add(Frame(FrameType.ITEMS, 7, 5, b"a" * 9, index=1, count=3))
    assert short.reason is not None and "9 bytes, others 10" in short.reason.en
    long_tail = centre.add(Frame(FrameType.ITEMS, 7, 5, b"a" * 11, index=2, count=3))
    assert long_tail.reason is not None and "longer than the others" in long_tail.reason.en
    kind = centre.add(Frame(FrameType.ORDER, 7, 5, b"a" * 10, index=1, count=3, downlink=False))
    assert kind.status is Status.IGNORED
    assert centre.missing(7, 5) == (1, 2)


def test_downlink_and_uplink_sequences_are_separate_messages() -> None:
    centre = Reassembler()
    centre.add(Frame(FrameType.ITEMS, 7, 5, b"u" * 10, index=0, count=2))
    centre.add(Frame(FrameType.ORDER, 7, 5, b"d" * 10, downlink=True, index=0, count=2))
    assert centre.missing(7, 5) == (1,) and centre.missing(7, 5, downlink=True) == (1,)
    assert len(centre) == 2


def test_reassembler_keeps_at_most_max_partials_evicting_the_least_recently_active() -> None:
    centre = Reassembler(max_partials=2)
    for seq in (1, 2, 3):
        centre.add(Frame(FrameType.ITEMS, 7, seq, b"x", index=0, count=2))
    assert len(centre) == 2
    assert [p.msg_seq for p in centre.pending()] == [2, 3]


def test_reassembler_refuses_a_message_over_its_byte_limit() -> None:
    centre = Reassembler(max_message_bytes=1000)
    outcome = centre.add(Frame(FrameType.ITEMS, 7, 1, bytes(100), index=0, count=11))
    assert outcome.status is Status.IGNORED and outcome.reason is not None
    assert outcome.reason.en == ("message 1 is at least 1001 bytes, over the reassembly limit 1000")
    assert len(centre) == 0
    assert (
        centre.add(Frame(FrameType.ITEMS, 7, 2, bytes(100), index=0, count=10)).status
        is Status.PARTIAL
    )


def test_partial_messages_expire_after_max_age_on_the_injected_clock() -> None:
    clock = Clock()
    centre = Reassembler(clock=clock, max_age_s=60.0)
    centre.add(Frame(FrameType.ITEMS, 7, 1, b"x", index=0, count=2))
    clock.now += 30
    centre.add(Frame(FrameType.ITEMS, 7, 2, b"x", index=0, count=2))
    clock.now += 31  # message 1 idle 61 s, message 2 idle 31 s
    (left,) = centre.pending()
    assert left.msg_seq == 2 and left.age_s == 31
    assert centre.missing(7, 1) == ()


def test_late_duplicate_of_a_completed_message_is_redelivered_but_never_reported_missing() -> None:
    payload = bytes(range(100))
    sent = fragment(7, 9, payload, MTU_BEIDOU)
    centre = Reassembler()
    for raw in sent:
        centre.add(decode_frame(raw))
    assert centre.add(decode_frame(sent[0])).status is Status.PARTIAL
    assert centre.pending() == []  # no MISSING request for something already received
    again = centre.add(decode_frame(sent[1]))  # a whole re-send after a lost ACK
    assert again.status is Status.COMPLETE and again.repeat
    assert again.message is not None and again.message.payload == payload


def test_a_repeated_single_frame_is_delivered_again_so_it_can_be_re_acknowledged() -> None:
    centre = Reassembler()
    frame = Frame(FrameType.ITEMS, 7, 4, b"sos")
    first, second = centre.add(frame), centre.add(frame)
    assert first.status is second.status is Status.COMPLETE
    assert not first.repeat and second.repeat


# --- ACK, ORDER, MISSING -----------------------------------------------------------------


def test_ack_ranges_are_delta_varint_pairs() -> None:
    assert ack_ranges([10, 5, 6, 7, 300]) == [range(5, 8), range(10, 11), range(300, 301)]
    # start 5 len 3 | gap 10-8=2 → 1, len 1 → 0 | gap 300-11=289 → 288 (0xA0 0x02), len 0
    assert pack_ack([10, 5, 6, 7, 300]) == bytes([5, 2, 1, 0, 0xA0, 0x02, 0])


@FAST
@given(st.sets(st.one_of(st.integers(0, 500), st.integers(0, 2**62 - 1)), min_size=1, max_size=80))
def test_ack_range_round_trip(seqs: set[int]) -> None:
    ranges = unpack_ack(pack_ack(seqs))
    assert {s for r in ranges for s in r} == seqs
    assert all(a.stop < b.start for a, b in itertools.pairwise(ranges))


def test_an_ack_too_long_for_the_link_keeps_the_lowest_ranges_that_fit() -> None:
    seqs = range(0, 400, 2)  # 200 single-item ranges
    payload = pack_ack(seqs, max_bytes=MTU_BEIDOU - SINGLE_OVERHEAD)
    assert len(payload) <= MTU_BEIDOU - SINGLE_OVERHEAD
    acked = [s for r in unpack_ack(payload) for s in r]
    assert acked == list(range(0, 2 * len(acked), 2))


def test_order_round_trip_with_chinese_target_and_text() -> None:
    order = Order(17, "一组", "立即前往东侧救援点集合")
    payload = pack_order(order)
    assert len(payload) == 1 + 1 + 4 + 1 + 22  # GB18030: two bytes a character
    assert unpack_order(payload) == order
    (raw,) = fragment(7, 3, payload, MTU_BEIDOU, ftype=FrameType.ORDER, downlink=True)
    frame = decode_frame(raw)
    assert frame.downlink and frame.type is FrameType.ORDER
    assert unpack_order(frame.payload) == order


def test_order_text_must_be_present_and_printable() -> None:
    with pytest.raises(BadFrame, match="invalid order text"):
        Order(1, "", "")
    with pytest.raises(BadFrame, match="invalid order target"):
        Order(1, "a\x00", "go")


def test_missing_request_is_a_bitmap_of_lost_fragments() -> None:
    payload = pack_missing(0x01020304, 10, [9, 0, 3])
    assert payload == bytes([1, 2, 3, 4, 10, 0b0000_1001, 0b0000_0010])
    assert unpack_missing(payload).indices == (0, 3, 9)
    with pytest.raises(BadFrame) as err:
        unpack_missing(bytes([1, 2, 3, 4, 10, 0, 0b0000_0100]))
    assert (
        str(err.value) == "缺片请求：位图的填充位不为 0 / MISSING: bitmap padding bits are not zero"
    )
    with pytest.raises(BadFrame, match="no fragment requested"):
        unpack_missing(bytes([1, 2, 3, 4, 2, 0]))


@FAST
@given(st.binary(max_size=120))
def test_control_payload_parsers_on_arbitrary_bytes_raise_only_bad_frame(raw: bytes) -> None:
    for parse in (unpack_ack, unpack_order, unpack_missing):
        with contextlib.suppress(BadFrame):
            parse(raw)


def test_truncated_ack_names_the_field() -> None:
    with pytest.raises(BadFrame) as err:
        unpack_ack(bytes([5]))
    assert str(err.value) == (
        "确认：区间长度被截断（需要 1 字节，仅剩 0 字节） / "
        "ACK: range length truncated (0 of 1 bytes present)"
    )
    with pytest.raises(BadFrame, match="varint not minimally encoded"):
        unpack_ack(bytes([0x85, 0x00, 0x00]))
