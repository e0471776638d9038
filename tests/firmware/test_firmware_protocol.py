"""Property tests of the companion's UART framing (firmware/kitlink.py) on CPython."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firmware import kitlink

FIELD = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$,*"),
    min_size=1,
    max_size=8,
)


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, str, tuple[str, ...]]:
    kind = draw(st.sampled_from(kitlink.KINDS))
    lo, hi = kitlink.FIELD_COUNTS[kind]
    fields = tuple(draw(st.lists(FIELD, min_size=lo, max_size=hi)))
    return draw(st.integers(0, kitlink.MAX_SEQ)), kind, fields


@given(st.lists(frames(), max_size=8), st.integers(1, 40))
def test_frames_round_trip_in_any_chunking(
    sent: list[tuple[int, str, tuple[str, ...]]], chunk: int
) -> None:
    data = b"".join(kitlink.encode(*frame) for frame in sent)
    decoder = kitlink.Decoder()
    got = []
    for at in range(0, len(data), chunk):
        got += decoder.feed(data[at : at + chunk])
    assert got == sent
    assert decoder.malformed == 0 and decoder.noise == 0


@given(st.binary(max_size=600), st.integers(1, 64))
def test_any_bytes_never_raise_and_the_buffer_stays_bounded(data: bytes, chunk: int) -> None:
    decoder = kitlink.Decoder()
    for at in range(0, len(data), chunk):
        for seq, kind, fields in decoder.feed(data[at : at + chunk]):
            assert 0 <= seq <= kitlink.MAX_SEQ and kind in kitlink.KINDS
            assert kitlink.encode(seq, kind, fields)  # whatever parses re-encodes
        assert len(decoder._buf) <= kitlink.MAX_LINE + 1


@given(
    frames(),
    st.binary(max_size=60).filter(lambda b: b"$" not in b),
    frames(),
)
def test_noise_between_frames_is_skipped(
    first: tuple[int, str, tuple[str, ...]],
    noise: bytes,
    second: tuple[int, str, tuple[str, ...]],
) -> None:
    decoder = kitlink.Decoder()
    data = kitlink.encode(*first) + noise + kitlink.encode(*second)
    assert decoder.feed(data) == [first, second]


@given(frames(), st.data())
def test_a_changed_byte_is_never_taken_for_a_frame(
    frame: tuple[int, str, tuple[str, ...]], data: st.DataObject
) -> None:
    wire = bytearray(kitlink.encode(*frame))
    at = data.draw(st.integers(0, len(wire) - 2))  # any byte but the final newline
    new = data.draw(st.integers(0, 255).filter(lambda b: b != wire[at]))
    wire[at] = new
    decoder = kitlink.Decoder()
    assert decoder.feed(bytes(wire) + b"\n") == []
    assert decoder.malformed + decoder.noise >= 1


def test_crc_known_value_and_lowercase_hex_refused() -> None:
    assert kitlink.crc16(b"123456789") == 0x29B1
    frame = kitlink.encode(1, "HB")
    assert kitlink.parse(frame[:-1]) == (1, "HB", ())
    assert kitlink.parse(frame[:-1].lower()) is None
