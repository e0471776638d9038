"""The SMS PDU codec: 3GPP 23.040 vectors checked by hand, round trips, and hostile input."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import smspdu
from drivers.smspdu import (
    Alphabet,
    BadAddress,
    BadPdu,
    Concat,
    MessageTooLong,
    Reassembler,
    Segment,
)

GSM_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡AZÄÖÑÜ§¿azäöñüà^{}\\[~]|€\f"
)
BEIJING = timezone(timedelta(hours=8))
WHEN = datetime(2024, 11, 23, 11, 0, 5, tzinfo=BEIJING)


# --- vectors that can be checked by hand -------------------------------------------------------


def test_hellohello_packs_into_the_23038_septets() -> None:
    septets = smspdu.gsm7_septets("hellohello")
    assert septets is not None
    assert smspdu.pack7(septets).hex().upper() == "E8329BFD4697D9EC37"
    assert smspdu.gsm7_text(smspdu.unpack7(bytes.fromhex("E8329BFD4697D9EC37"), 10)) == "hellohello"


def test_a_submit_is_encoded_byte_for_byte_as_the_textbook_example() -> None:
    # 0011000B916407281553F80000AA0AE8329BFD4697D9EC37: to +46708251358, 4 days, "hellohello".
    tpdu = smspdu.encode_submit("+46708251358", Segment("hellohello", Alphabet.GSM7), validity=0xAA)
    assert smspdu.add_smsc(tpdu).hex().upper() == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert smspdu.decode_submit(tpdu) == smspdu.Submit(
        "+46708251358", Segment("hellohello", Alphabet.GSM7)
    )


def test_a_deliver_from_a_phone_decodes_to_its_sender_time_and_text() -> None:
    pdu = bytes.fromhex(
        "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"
    )
    smsc, tpdu = smspdu.split_smsc(pdu)
    message = smspdu.decode_deliver(tpdu)
    assert smsc == "+31624000000"
    assert message.sender == "+31641600986"
    # The example's zone octet 0x08 reads, by 23.040 9.2.3.11, as minus zero quarter hours.
    assert message.timestamp == datetime(2002, 8, 26, 19, 37, 41, tzinfo=UTC)
    assert message.segment == Segment("How are you?", Alphabet.GSM7)


def test_chinese_text_goes_as_ucs2_big_endian() -> None:
    segment = smspdu.segments("你好")[0]
    assert segment.alphabet is Alphabet.UCS2
    assert smspdu.user_data(segment) == (False, 4, bytes.fromhex("4F60597D"))


def test_the_extension_table_costs_two_septets_and_is_never_split() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro sign's two septets would end at 154 of 153
    parts = smspdu.segments(text, 7)
    assert [p.payload for p in parts] == ["a" * 152, "€" + "b" * 10]
    assert smspdu.user_data(Segment("€", Alphabet.GSM7)) == (False, 2, bytes.fromhex("9B32"))


def test_timestamps_keep_their_time_zone_west_and_east() -> None:
    for hours in (8, -3.5, 0):
        when = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=hours)))
        assert smspdu.decode_scts(smspdu.encode_scts(when)) == when
    assert smspdu.encode_scts(WHEN).hex().upper() == "42113211005023"


def test_numbers_are_international_with_a_plus_and_national_without() -> None:
    assert smspdu.encode_address("+8613800138000").hex().upper() == "0D91683108108300F0"
    assert smspdu.encode_address("10086").hex().upper() == "05810180F6"
    with pytest.raises(BadAddress) as err:
        smspdu.encode_address("centre")
    assert str(err.value) == (
        "电话号码无效：'centre'（应为至多 20 位数字，可带 +） / "
        "invalid phone number 'centre' (up to 20 digits, optionally with +)"
    )


# --- splitting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "single", "per_segment"),
    [("x", 160, 153), ("中", 70, 67), (b"\x00", 140, 134)],
)
def test_segment_sizes_follow_3gpp(payload: str | bytes, single: int, per_segment: int) -> None:
    assert len(smspdu.segments(payload * single)) == 1
    parts = smspdu.segments(payload * (single + 1), 42)
    assert [len(p.payload) for p in parts] == [per_segment, single + 1 - per_segment]
    assert [p.concat for p in parts] == [Concat(42, 2, 1), Concat(42, 2, 2)]
    udhi, _, ud = smspdu.user_data(parts[0])
    assert udhi and ud[:6] == bytes([5, 0, 3, 42, 2, 1])


def test_a_16_bit_reference_takes_one_unit_more() -> None:
    parts = smspdu.segments("x" * 400, 0x1234, wide=True)
    assert [len(p.payload) for p in parts] == [152, 152, 96]
    assert smspdu.user_data(parts[2])[2][:7] == bytes([6, 8, 4, 0x12, 0x34, 3, 3])


def test_more_than_255_segments_is_refused() -> None:
    with pytest.raises(MessageTooLong) as err:
        smspdu.segments(bytes(134 * 256))
    assert str(err.value) == (
        "短信过长：需要 256 段，最多 255 段 / message too long: 256 segments needed, at most 255"
    )


# --- properties -----------------------------------------------------------------------------

texts = st.text(st.sampled_from(GSM_CHARS), max_size=700) | st.text(
    st.characters(exclude_categories=["Cs"]), max_size=300
)
payloads = texts | st.binary(max_size=700)


def _through_the_network(payload: str | bytes, ref: int, wide: bool) -> str | bytes:
    """Kit modem → SMSC → peer modem → reassembly, as bytes on each hop."""
    joiner: Reassembler[int] = Reassembler()
    result = None
    for i, segment in enumerate(smspdu.segments(payload, ref, wide=wide)):
        submit = smspdu.decode_submit(smspdu.encode_submit("+8617700000001", segment))
        smsc, tpdu = smspdu.split_smsc(
            smspdu.add_smsc(
                smspdu.encode_deliver("+8617700000002", submit.segment, WHEN), "+8613800100500"
            )
        )
        assert smsc == "+8613800100500"
        message = smspdu.decode_deliver(tpdu)
        assert (message.sender, message.timestamp) == ("+8617700000002", WHEN)
        result = joiner.add(message.sender, message.timestamp, message.segment, i)
    assert result is not None and joiner.pending == 0
    return result.payload


@settings(max_examples=150, deadline=None)
@given(payload=payloads, ref=st.integers(0, 0xFFFF), wide=st.booleans())
def test_any_payload_survives_encoding_splitting_and_reassembly(
    payload: str | bytes, ref: int, wide: bool
) -> None:
    if not payload:
        payload = b"\x00"
    assert _through_the_network(payload, ref, wide) == payload


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_bad_pdu(data: bytes) -> None:
    for decode in (smspdu.decode_deliver, smspdu.decode_submit, smspdu.split_smsc):
        with contextlib.suppress(BadPdu):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=140),
    udl=st.integers(0, 255),
    udhi=st.booleans(),
    alphabet=st.sampled_from(Alphabet),
)
def test_arbitrary_user_data_raises_only_bad_pdu(
    data: bytes, udl: int, udhi: bool, alphabet: Alphabet
) -> None:
    with contextlib.suppress(BadPdu):
        smspdu.read_user_data(alphabet, udhi, udl, data)


def test_a_bad_pdu_says_what_was_wrong() -> None:
    with pytest.raises(BadPdu) as err:
        smspdu.decode_deliver(bytes.fromhex("040B91"))
    assert (
        str(err.value)
        == "短信 PDU 无效：发送方地址处数据不足 / invalid SMS PDU: too short at the originating address"
    )


# --- reassembly -----------------------------------------------------------------------------


def test_segments_arriving_out_of_order_and_twice_join_once() -> None:
    joiner: Reassembler[int] = Reassembler()
    a, b, c = smspdu.segments("天通" * 70, 9)
    assert joiner.add("+86177", WHEN, c, 3) is None
    assert joiner.add("+86177", WHEN, a, 1) is None
    assert joiner.add("+86177", WHEN, a, 4) is None
    message = joiner.add("+86177", WHEN, b, 2)
    assert message is not None and message.payload == "天通" * 70
    assert message.parts == (3, 1, 4, 2)  # every stored copy, to delete them all
    assert joiner.dropped == {"duplicate": 1}


def test_pending_messages_are_bounded_and_expire() -> None:
    now = [0.0]
    joiner: Reassembler[int] = Reassembler(max_pending=2, max_age_s=60, clock=lambda: now[0])
    for ref in (1, 2, 3):
        joiner.add("+86177", WHEN, smspdu.segments(b"x" * 200, ref)[0], ref)
    assert joiner.pending == 2
    assert joiner.take_discarded() == [1]  # the oldest gave way
    now[0] = 61.0
    joiner.expire()
    assert joiner.pending == 0
    assert sorted(joiner.take_discarded()) == [2, 3]
    assert joiner.dropped == {"evicted": 1, "expired": 2}
