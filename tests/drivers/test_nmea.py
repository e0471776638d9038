"""NMEA position sentences: real-world examples by hand, and any bytes at all through the stream."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.nmea import BadNmea, Gga, Gsa, Gsv, Rmc, SatInView, parse
from drivers.sentence import BadSentence, Sentence, StreamParser, decode
from sim.gnss import ddmm


def one(line: bytes) -> object:
    return parse(decode(line))


# --- real sentences, checked by hand ------------------------------------------------------


def test_a_classic_rmc_in_the_western_hemisphere_before_nmea_2_3() -> None:
    rmc = one(b"$GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*68")
    assert rmc == Rmc(
        talker="GP",
        valid=True,
        time_ms=((22 * 60 + 54) * 60 + 46) * 1000,
        epoch_ms=785_285_686_000,  # 1994-11-19 22:54:46 UTC
        lat=49 + 16.45 / 60,
        lon=-(123 + 11.12 / 60),
        speed_kn=0.5,
        course_deg=54.7,
        mode="",
    )


def test_a_gga_with_differential_fields_and_a_negative_geoid_separation() -> None:
    gga = one(
        b"$GPGGA,172814.0,3723.46587704,N,12202.26957864,W,2,6,1.2,18.893,M,-25.669,M,2.0,0031*4F"
    )
    assert isinstance(gga, Gga)
    assert (gga.quality, gga.satellites, gga.hdop, gga.alt_m, gga.geoid_m) == (
        2,
        6,
        1.2,
        18.893,
        -25.669,
    )
    assert gga.lat == pytest.approx(37.391097950667)
    assert gga.lon == pytest.approx(-122.037826310667)
    assert gga.time_ms == 62_894_000


def test_a_receiver_without_a_fix_leaves_its_fields_empty_and_that_is_no_error() -> None:
    assert one(b"$GNRMC,,V,,,,,,,,,,N*4D") == Rmc(
        "GN", False, None, None, None, None, None, None, "N"
    )
    gga = one(b"$GNGGA,,,,,,0,00,99.99,,,,,,*56")
    assert gga == Gga("GN", None, None, None, 0, 0, 99.99, None, None)


def test_southern_and_eastern_hemispheres_and_a_beidou_talker() -> None:
    line = Sentence(
        "GBRMC",
        ("235959.95", "A", "3351.8460", "S", "15112.6920", "E", "12.5", "350.0", "290224", "", "", "D", "V"),
    ).encode()  # fmt: skip
    rmc = one(line)
    assert isinstance(rmc, Rmc)
    assert rmc.lat == pytest.approx(-(33 + 51.846 / 60))
    assert rmc.lon == pytest.approx(151 + 12.692 / 60)
    assert rmc.epoch_ms == 1_709_251_199_950  # 2024-02-29 23:59:59.95 UTC, a leap day
    assert (rmc.valid, rmc.mode) == (True, "D")


def test_satellites_in_view_and_in_use() -> None:
    gsv = one(b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74")
    assert isinstance(gsv, Gsv)
    assert (gsv.total, gsv.number, gsv.in_view, gsv.constellation) == (3, 1, 11, "GPS")
    assert gsv.satellites[0] == SatInView(3, 3, 111, 0)
    assert len(gsv.satellites) == 4
    gsa = one(b"$GPGSA,A,3,,,,,,16,18,,22,24,,,3.6,2.1,2.2*3C")
    assert gsa == Gsa("GP", 3, (16, 18, 22, 24), 3.6, 2.1, 2.2, None)
    tagged = Sentence("GNGSA", ("A", "3", "01", *[""] * 11, "1.6", "0.9", "1.3", "4")).encode()
    gsa = one(tagged)
    assert isinstance(gsa, Gsa) and gsa.constellation == "BeiDou"


def test_other_sentences_are_not_this_modules_business() -> None:
    assert (
        one(Sentence("GNVTG", ("", "T", "", "M", "0.004", "N", "0.008", "K", "A")).encode()) is None
    )
    assert parse(Sentence("BDICI", ("0241636",))) is None
    assert parse(Sentence("PUBX", ("00",))) is None


# --- precise errors -----------------------------------------------------------------------

RMC_OK = (
    "083559.00",
    "A",
    "4717.11437",
    "N",
    "00833.91522",
    "E",
    "0.004",
    "77.52",
    "091202",
    "",
    "",
    "A",
)


def bad(fields: tuple[str, ...], name: str = "GNRMC") -> str:
    with pytest.raises(BadNmea) as err:
        parse(Sentence(name, fields))
    return str(err.value)


def test_errors_name_the_field_and_the_reason_in_both_languages() -> None:
    assert bad((*RMC_OK[:4], "18033.91522", *RMC_OK[5:])) == (
        "GNRMC 第 5 个字段：经度应为 dddmm.mmmm（至多 180°）：'18033.91522' / "
        "GNRMC field 5: longitude is not dddmm.mmmm (at most 180°): '18033.91522'"
    )
    assert bad((*RMC_OK[:2], "4760.0", *RMC_OK[3:])) == (
        "GNRMC 第 3 个字段：纬度应为 ddmm.mmmm（至多 90°）：'4760.0' / "
        "GNRMC field 3: latitude is not ddmm.mmmm (at most 90°): '4760.0'"
    )
    assert bad(("246000", *RMC_OK[1:])).startswith("GNRMC 第 1 个字段：时间应为 hhmmss.ss")
    assert bad((*RMC_OK[:8], "300223", *RMC_OK[9:])) == (
        "GNRMC 第 9 个字段：日期不存在：'300223' / GNRMC field 9: no such date: '300223'"
    )
    assert bad((*RMC_OK[:5], "", *RMC_OK[6:])) == (
        "GNRMC 第 6 个字段：数值与半球须同时给出：'' / "
        "GNRMC field 6: value and hemisphere go together: ''"
    )
    assert bad((*RMC_OK[:2], "", "", "", "", *RMC_OK[6:])) == (
        "GNRMC 第 3 个字段：有效定位却无位置 / GNRMC field 3: a valid fix without a position"
    )
    assert bad(RMC_OK[:6]) == "GNRMC：字段数 6，应为 11–13 / GNRMC: 6 fields, expected 11-13"
    assert bad(("2", "3", "08"), "GPGSV") == (
        "GPGSV 第 2 个字段：序号应为 1–2：'3' / GPGSV field 2: sentence number not 1-2: '3'"
    )


# --- properties ---------------------------------------------------------------------------

TOKENS = st.sampled_from(
    ["", "A", "V", "N", "S", "E", "W", "M", "0", "1", "3", "9", "60", "99", "-1", "1.5", ".5",
     "5.", "4717.11437", "00833.91522", "9000.0", "18000", "083559.00", "240000", "091202",
     "290223", "x", "1e5", "nan", "1_0", " 1", "1234567"]
)  # fmt: skip
NAMES = st.sampled_from(["GNRMC", "GPGGA", "GBGSV", "BDGSA", "GLRMC", "GAGGA", "GNGSV"])


@settings(max_examples=400, deadline=None)
@given(NAMES, st.lists(TOKENS, max_size=22))
def test_any_fields_give_a_value_or_a_precise_error_never_anything_else(
    name: str, fields: list[str]
) -> None:
    try:
        message = parse(Sentence(name, tuple(fields)))
    except BadNmea as err:
        assert err.name == name
        assert err.index is None or 1 <= err.index <= len(fields)
        return
    assert message is not None
    for attr in ("lat", "lon"):
        value = getattr(message, attr, None)
        assert value is None or abs(value) <= (90 if attr == "lat" else 180)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=120) | st.sampled_from([b"$GNRMC,", b"*", b"\r\n"]), max_size=12)
)
def test_arbitrary_bytes_never_raise_and_the_next_valid_sentence_is_found(
    chunks: list[bytes],
) -> None:
    parser = StreamParser()
    for chunk in chunks:
        for sentence in parser.feed(chunk):
            with contextlib.suppress(BadNmea, BadSentence):
                parse(sentence)
    before = sum(parser.dropped.values())
    good = b"$GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*68\r\n"
    found = [parse(s) for s in parser.feed(b"\r\n" + good)]
    assert isinstance(found[-1], Rmc) and found[-1].lat == pytest.approx(49.274166666)
    assert sum(parser.dropped.values()) >= before


def test_damage_is_counted_by_the_stream_parser() -> None:
    parser = StreamParser()
    good = b"$GNRMC,,V,,,,,,,,,,N*4D\r\n"
    out = parser.feed(b"\x00\x01junk" + good[:10] + good + good[:-4] + b"00\r\n" + good)
    assert [s.name for s in out] == ["GNRMC", "GNRMC"]
    assert parser.dropped == {"garbage_bytes": 6, "truncated": 1, "bad_checksum": 1}


@given(st.floats(-89.999, 89.999, allow_nan=False), st.floats(-179.999, 179.999, allow_nan=False))
def test_positions_survive_the_trip_through_ddmm_mmmmm(lat: float, lon: float) -> None:
    y, ns = ddmm(lat, 2, "NS")
    x, ew = ddmm(lon, 3, "EW")
    fields = ("120000.00", "A", y, ns, x, ew, "0", "0", "010125", "", "", "A")
    rmc = parse(Sentence("GNRMC", fields))
    assert isinstance(rmc, Rmc)
    assert rmc.lat == pytest.approx(lat, abs=1e-6) and rmc.lon == pytest.approx(lon, abs=1e-6)
