"""The NMEA-style sentence codec and the streaming parser, on real traces and on any bytes."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.sentence import (
    MAX_SENTENCE_BYTES,
    BadSentence,
    Sentence,
    StreamParser,
    checksum,
    decode,
)

# Real traces from PROTOCOLS.md (each checks out), plus a 5.0 card and signal line.
TRACES = [
    b"$CCICA,0,00*7B\r\n",
    b"$CCTXA,0247718,1,1,3132333435*70\r\n",
    b"$BDFKI,TXA,Y,Y,0,0040*17\r\n",
    b"$BDICI,0241636,24000000,1933442,6,60,3,N,0*30\r\n",
    b"$BDTXR,1,0179773,2,,A468656C6C6F*43\r\n",
    b"$BDICP,4238473,0,0,3,0,N,2,N,1,0,0,3,1,60,2,0,0,0,0,21,0,0,0*48\r\n",
    b"$BDPWI,000000.00,00,01,51,40,33,0*7B\r\n",
]

names = st.from_regex(r"[A-Z0-9]{1,10}", fullmatch=True)
fields = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="$*,"), max_size=40
)
sentences = st.builds(Sentence, names, st.lists(fields, max_size=12).map(tuple))


def parse_all(data: bytes, cuts: list[int] | None = None) -> tuple[list[Sentence], StreamParser]:
    parser = StreamParser()
    out: list[Sentence] = []
    edges = [0, *sorted(set(cuts or [])), len(data)]
    for a, b in itertools.pairwise(edges):
        out += parser.feed(data[a:b])
    return out, parser


def test_every_real_trace_decodes_and_encodes_back_byte_for_byte() -> None:
    for trace in TRACES:
        assert decode(trace).encode() == trace


def test_the_checksum_is_the_xor_of_the_body() -> None:
    assert checksum(b"CCICA,0,00") == 0x7B
    assert Sentence("CCICA", ("0", "00")).encode() == b"$CCICA,0,00*7B\r\n"


@given(sentences)
def test_any_sentence_round_trips(sentence: Sentence) -> None:
    raw = sentence.encode()
    assert raw.startswith(b"$") and raw.endswith(b"\r\n")
    assert int(raw[-4:-2], 16) == checksum(raw[1:-5])
    assert decode(raw) == sentence


def test_a_field_that_would_break_the_framing_is_refused() -> None:
    with pytest.raises(BadSentence) as err:
        Sentence("CCTXA", ("0247718", "a,b"))
    assert str(err.value) == (
        "CCTXA 的字段无效：'a,b'（仅限可打印 ASCII，不含 $ * ,） / "
        "invalid CCTXA field 'a,b' (printable ASCII without $ * ,)"
    )


def test_a_bad_checksum_names_the_expected_one() -> None:
    with pytest.raises(BadSentence) as err:
        decode(b"$BDFKI,TXA,Y,Y,0,0040*18\r\n")
    assert str(err.value) == "校验和错误：18，应为 17 / bad checksum 18, expected 17"
    assert err.value.reason == "bad_checksum"


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_the_parser_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    parse_all(data, cuts)


@given(st.binary(max_size=500), sentences, st.lists(st.integers(0, 600), max_size=6))
def test_after_any_garbage_the_next_valid_sentence_is_found(
    junk: bytes, sentence: Sentence, cuts: list[int]
) -> None:
    out, _ = parse_all(junk + sentence.encode(), cuts)
    assert out[-1] == sentence


@given(st.lists(st.sampled_from(TRACES) | st.binary(max_size=30), max_size=20), st.data())
def test_how_bytes_are_chunked_changes_nothing(parts: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    whole, one = parse_all(stream)
    pieces, many = parse_all(stream, cuts)
    assert pieces == whole
    assert many.dropped == one.dropped


def test_each_kind_of_damage_is_counted_under_its_own_name() -> None:
    ici = TRACES[3]
    stream = (
        b"\x00\xffjunk"  # 6 garbage bytes
        + ici[:20]  # cut short by the next "$"
        + ici[:-4] + b"00\r\n"  # bad checksum
        + b"$BD\x01X,1*" + b"%02X" % checksum(b"BD\x01X,1") + b"\r\n"  # checksum right, not a sentence
        + b"$BDICI,0241636\r\n"  # line ends before *hh
        + b"$" + b"A" * (MAX_SENTENCE_BYTES + 10) + b"\r\n"  # oversize
        + ici
    )  # fmt: skip
    out, parser = parse_all(stream, list(range(0, len(stream), 97)))
    assert out == [decode(ici)]
    assert parser.dropped == Counter(
        garbage_bytes=6, truncated=2, bad_checksum=1, malformed=1, oversize=1
    )


def test_a_sentence_that_never_ends_holds_bounded_memory() -> None:
    parser = StreamParser()
    assert parser.feed(b"$") == []
    for _ in range(100):
        assert parser.feed(b"7" * 1000) == []
    assert parser.dropped == Counter(oversize=1)
    assert parser.feed(TRACES[2]) == [decode(TRACES[2])]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One of the ways a serial line damages bytes."""
    b = bytearray(data)
    at = rng.randrange(len(b) + 1)
    match rng.randrange(6):
        case 0 if b:  # bit flip
            b[at % len(b)] ^= 1 << rng.randrange(8)
        case 1:  # insertion
            b[at:at] = rng.randbytes(rng.randrange(1, 8))
        case 2:  # deletion
            del b[at : at + rng.randrange(1, 8)]
        case 3:  # truncation
            del b[at:]
        case 4:  # splice with another trace
            b[at:at] = rng.choice(TRACES)[: rng.randrange(40)]
        case _:  # a framing character where it does not belong
            b[at:at] = rng.choice([b"$", b"*", b"\r", b"\n", b","])
    return bytes(b)


def test_mutated_real_traces_never_crash_the_parser_and_the_stream_recovers() -> None:
    rng = random.Random(20240611)
    parser = StreamParser()
    for _ in range(3000):
        damaged = rng.choice(TRACES)
        for _ in range(rng.randrange(1, 4)):
            damaged = mutate(rng, damaged)
        for sentence in parser.feed(damaged):
            assert sentence.encode()  # whatever passes is a well-formed sentence
        clean = rng.choice(TRACES)
        # the next clean sentence always gets through (a stray "$" ends any damage)
        assert parser.feed(clean)[-1:] == [decode(clean)]
    assert sum(parser.dropped.values()) > 1000


@given(st.binary(max_size=600))
def test_folded_checksum_is_the_xor_of_every_byte(body: bytes) -> None:
    expected = 0
    for byte in body:
        expected ^= byte
    assert checksum(body) == expected


@given(st.binary(max_size=200))
def test_a_decoded_sentence_is_one_the_constructor_accepts(body: bytes) -> None:
    # The fast path skips the constructor's checks; it must accept exactly what they accept.
    line = b"$%s*%02X" % (body, checksum(body))
    try:
        fast = decode(line)
    except BadSentence:
        try:
            name, *fields = body.decode("ascii").split(",")
            Sentence(name, tuple(fields))
        except (UnicodeDecodeError, BadSentence):
            return
        raise AssertionError(f"{line!r} refused, but its parts make a valid sentence") from None
    assert Sentence(fast.name, fast.fields) == fast
    assert fast.encode().rstrip(b"\r\n") == line
