"""NMEA 0183 position sentences (RMC, GGA, GSV, GSA) from any GNSS talker, as typed values.

Pure functions over :class:`~drivers.sentence.Sentence` (the ``$…*hh`` codec and the
resynchronising stream parser live in ``drivers/sentence.py``). Each parser returns a
frozen dataclass or raises :class:`BadNmea` naming the field and the reason. Fields are
counted from 1 after the address, as NMEA tables count them (``$GNRMC``: 1 time,
2 status, 3 latitude …).

Speed: a receiver sends ten or more sentences a second and a benchmark replays hours
of them, so each sentence type's layout is one compiled pattern (the fields' own
patterns joined by commas) checked in one call; only when it fails are the fields
checked one by one, to say which is wrong and why. Ranges (minutes below 60, a date
that exists) are checked while converting.

How the parsers read what NMEA versions leave open:

- RMC has 11 fields before NMEA 2.3, 12 with the mode indicator, 13 with the 4.10 nav
  status; all are accepted. A fix is valid when status is ``A`` and the mode (when
  present) is not ``N`` (no fix). A valid fix without a position is an error.
- Two-digit years are 2000–2079 or 1980–1999 (GPS time starts in 1980). Time keeps
  milliseconds; further decimals are cut.
- GGA has 9 to 14 fields (receivers cut the differential fields); an empty quality
  is 0 (no fix).
- GSV may end with the 4.10 signal id (``3 + 4k + 1`` fields); groups with an empty PRN
  (padding some receivers send) are skipped. GSA may end with the 4.10 system id.
- Empty fields are ``None``: what a receiver leaves empty while it has no fix is not an
  error. A latitude without its hemisphere (or the reverse) is.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.sentence import Sentence
from edge.errors import KitError

KNOT_MPS = 1852.0 / 3600.0

# Talker id -> constellation. GN is the receiver's combined solution.
CONSTELLATIONS = {
    "GP": "GPS",
    "GL": "GLONASS",
    "GA": "Galileo",
    "GB": "BeiDou",
    "BD": "BeiDou",
    "GQ": "QZSS",
    "GI": "NavIC",
    "GN": "GNSS",
}
# NMEA 4.10 system ids in GSA.
SYSTEM_IDS = {"1": "GPS", "2": "GLONASS", "3": "Galileo", "4": "BeiDou", "5": "QZSS", "6": "NavIC"}

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000


class BadNmea(KitError, ValueError):
    """A checksummed sentence whose content is not what its type requires.

    ``index`` is the field (from 1), ``None`` when the number of fields is wrong.
    """

    def __init__(self, name: str, index: int | None, zh: str, en: str) -> None:
        self.name = name
        self.index = index
        where_zh = name if index is None else f"{name} 第 {index} 个字段"
        where_en = name if index is None else f"{name} field {index}"
        super().__init__(f"{where_zh}：{zh}", f"{where_en}: {en}")


@dataclass(frozen=True, slots=True)
class Kind:
    """What one field may hold: its pattern, and how to say it is wrong."""

    pattern: str
    zh: str
    en: str


_NUM = r"\d{1,10}(?:\.\d{0,9})?|\.\d{1,9}"
# Ranges are part of the patterns: hours 0-23, minutes 0-59, seconds 0-60 (a leap second),
# latitude at most 90° and longitude at most 180° with minutes below 60.
TIME = Kind(
    r"(?:(?:[01]\d|2[0-3])[0-5]\d(?:[0-5]\d|60)(?:\.\d{1,9})?)?",
    "时间应为 hhmmss.ss（00:00:00–23:59:60）",
    "time is not hhmmss.ss (00:00:00-23:59:60)",
)
DATE = Kind(r"(?:\d{6})?", "日期应为 ddmmyy", "date is not ddmmyy")
LAT = Kind(
    r"(?:[0-8]\d[0-5]\d(?:\.\d{0,12})?|9000(?:\.0{0,12})?)?",
    "纬度应为 ddmm.mmmm（至多 90°）",
    "latitude is not ddmm.mmmm (at most 90°)",
)
LON = Kind(
    r"(?:(?:0\d\d|1[0-7]\d)[0-5]\d(?:\.\d{0,12})?|18000(?:\.0{0,12})?)?",
    "经度应为 dddmm.mmmm（至多 180°）",
    "longitude is not dddmm.mmmm (at most 180°)",
)
NS = Kind(r"[NS]?", "纬度半球应为 N 或 S", "hemisphere is not N or S")
EW = Kind(r"[EW]?", "经度半球应为 E 或 W", "hemisphere is not E or W")
NUMBER = Kind(f"(?:{_NUM})?", "应为非负数", "not a non-negative number")
SIGNED = Kind(f"(?:-?(?:{_NUM}))?", "应为数字", "not a number")
COUNT = Kind(r"\d{0,3}", "应为整数（至多 3 位）", "not an integer of at most 3 digits")
ELEVATION = Kind(r"(?:[0-8]?\d|90)?", "仰角应为 0–90", "elevation is not 0-90")
AZIMUTH = Kind(r"(?:[0-2]?\d{1,2}|3[0-5]\d|360)?", "方位角应为 0–360", "azimuth is not 0-360")
NEEDED = Kind(r"\d{1,3}", "应为整数（1–3 位）", "not an integer of 1-3 digits")
STATUS = Kind(r"[AV]", "状态应为 A 或 V", "status is not A or V")
MODE = Kind(r"[ADEFMNPRS]?", "模式指示未知", "unknown mode indicator")
QUALITY = Kind(r"\d?", "定位质量应为 0–9", "quality is not 0-9")
SELECTION = Kind(r"[AM]", "模式应为 A 或 M", "mode is not A or M")
FIX_TYPE = Kind(r"[123]", "定位类型应为 1、2 或 3", "fix type is not 1, 2 or 3")
ANY = Kind(r"[^,]*", "", "")

SIGNAL = Kind(r"[0-9A-F]?", "信号号应为一位十六进制数", "signal id is not one hex digit")


class Layout:
    """The kinds of a sentence type's fields, for each number of fields it may have."""

    def __init__(self, forms: Sequence[tuple[Kind, ...]], expected: tuple[str, str]) -> None:
        self.expected = expected
        self._forms = {
            len(kinds): (re.compile(",".join(k.pattern for k in kinds)), kinds) for kinds in forms
        }

    def check(self, s: Sentence) -> None:
        """Every field matches its kind, or :class:`BadNmea` for the first that does not."""
        f = s.fields
        form = self._forms.get(len(f))
        if form is None:
            zh, en = self.expected
            raise BadNmea(
                s.name, None, f"字段数 {len(f)}，应为 {zh}", f"{len(f)} fields, expected {en}"
            )
        pattern, kinds = form
        if pattern.fullmatch(",".join(f)):
            return
        for index, (kind, text) in enumerate(zip(kinds, f, strict=True), 1):
            if not re.fullmatch(kind.pattern, text):
                raise _bad(s, index, kind.zh, kind.en)
        raise AssertionError("a form's pattern is its fields' patterns joined by commas")


def _prefixes(kinds: tuple[Kind, ...], least: int) -> list[tuple[Kind, ...]]:
    return [kinds[:n] for n in range(least, len(kinds) + 1)]


_RMC = (TIME, STATUS, LAT, NS, LON, EW, NUMBER, NUMBER, DATE, NUMBER, EW, MODE, ANY)
_GGA = (TIME, LAT, NS, LON, EW, QUALITY, COUNT, NUMBER, SIGNED, ANY, SIGNED, ANY, NUMBER, ANY)
_GSA = (SELECTION, FIX_TYPE, *(COUNT,) * 12, NUMBER, NUMBER, NUMBER, ANY)
_GSV_GROUP = (COUNT, ELEVATION, AZIMUTH, COUNT)
RMC = Layout(_prefixes(_RMC, 11), ("11–13", "11-13"))
GGA = Layout(_prefixes(_GGA, 9), ("9–14", "9-14"))
GSA = Layout(_prefixes(_GSA, 17), ("17–18", "17-18"))
GSV = Layout(
    [(NEEDED,) * 3 + _GSV_GROUP * k + (SIGNAL,) * s for k in range(5) for s in (0, 1)],
    ("3 + 4k（k ≤ 4，可加信号号）", "3 + 4k (k <= 4, + signal id)"),
)


@dataclass(frozen=True, slots=True)
class Rmc:
    """Recommended minimum: validity, position, speed, course, UTC date and time."""

    talker: str
    valid: bool
    time_ms: int | None  # milliseconds since UTC midnight
    epoch_ms: int | None  # date and time as Unix milliseconds; None unless both are given
    lat: float | None
    lon: float | None
    speed_kn: float | None
    course_deg: float | None
    mode: str  # A autonomous, D differential, R/F RTK, E estimated, N none; "" before 2.3


@dataclass(frozen=True, slots=True)
class Gga:
    """Fix data: quality, satellites used, HDOP, altitude."""

    talker: str
    time_ms: int | None
    lat: float | None
    lon: float | None
    quality: int  # 0 none, 1 GNSS, 2 DGNSS, 3 PPS, 4 RTK fixed, 5 RTK float, 6 estimated …
    satellites: int | None
    hdop: float | None
    alt_m: float | None  # above mean sea level
    geoid_m: float | None


@dataclass(frozen=True, slots=True)
class SatInView:
    prn: int
    elevation_deg: int | None
    azimuth_deg: int | None
    snr_db: int | None


@dataclass(frozen=True, slots=True)
class Gsv:
    """One sentence of a satellites-in-view set (its satellites are read when asked for)."""

    talker: str
    total: int  # sentences in the set
    number: int  # this one's place, 1-based
    in_view: int
    signal_id: str | None
    groups: tuple[str, ...]  # prn, elevation, azimuth, SNR per satellite; already checked

    @property
    def constellation(self) -> str:
        return CONSTELLATIONS[self.talker]

    @property
    def satellites(self) -> tuple[SatInView, ...]:
        g = self.groups
        return tuple(
            SatInView(int(g[i]), _opt_int(g[i + 1]), _opt_int(g[i + 2]), _opt_int(g[i + 3]))
            for i in range(0, len(g), 4)
            if g[i]
        )


@dataclass(frozen=True, slots=True)
class Gsa:
    """DOP and the satellites used in the solution."""

    talker: str
    fix_type: int  # 1 none, 2 2D, 3 3D
    prns: tuple[int, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None
    system_id: str | None

    @property
    def constellation(self) -> str:
        if self.system_id is not None:
            return SYSTEM_IDS.get(self.system_id, "GNSS")
        return CONSTELLATIONS[self.talker]


Message = Rmc | Gga | Gsv | Gsa


# --- checking -------------------------------------------------------------------------------


def _bad(s: Sentence, index: int, zh: str, en: str) -> BadNmea:
    value = s.fields[index - 1]
    return BadNmea(s.name, index, f"{zh}：{value!r}", f"{en}: {value!r}")


# --- converting checked fields -------------------------------------------------------------


def _opt_float(text: str) -> float | None:
    return float(text) if text else None


def _opt_int(text: str) -> int | None:
    return int(text) if text else None


def _time(text: str) -> int | None:
    """Milliseconds since midnight of a checked ``hhmmss[.sss]``."""
    if not text:
        return None
    ms = int((text[7:10] + "00")[:3]) if len(text) > 7 else 0
    return ((int(text[:2]) * 60 + int(text[2:4])) * 60 + int(text[4:6])) * 1000 + ms


@functools.lru_cache(maxsize=4)  # the date changes once a day
def _days(text: str) -> int | None:
    """Days since 1970-01-01 of a checked ``ddmmyy``; ``None`` if no such day exists."""
    yy = int(text[4:])
    try:
        day = dt.date(2000 + yy if yy < 80 else 1900 + yy, int(text[2:4]), int(text[:2]))
    except ValueError:
        return None
    return day.toordinal() - _EPOCH_ORDINAL


def _position(s: Sentence, index: int, fixed: bool) -> tuple[float | None, float | None]:
    """Degrees of the checked ``ddmm.mmmm,N,dddmm.mmmm,E`` starting at field ``index``."""
    lat, ns, lon, ew = s.fields[index - 1 : index + 3]
    if (not lat) != (not ns) or (not lon) != (not ew):
        at = next(
            i for i, pair in enumerate(((lat, ns), (lon, ew))) if (not pair[0]) != (not pair[1])
        )
        where = index + 2 * at + (0 if not (lat, lon)[at] else 1)
        raise _bad(s, where, "数值与半球须同时给出", "value and hemisphere go together")
    if fixed and not (lat and lon):
        raise BadNmea(s.name, index, "有效定位却无位置", "a valid fix without a position")
    return _degrees(lat, 2, ns == "S"), _degrees(lon, 3, ew == "W")


def _degrees(text: str, width: int, negative: bool) -> float | None:
    if not text:
        return None
    value = int(text[:width]) + float(text[width:]) / 60.0
    return -value if negative else value


# --- the sentences -------------------------------------------------------------------------


def parse_rmc(s: Sentence) -> Rmc:
    RMC.check(s)
    f = s.fields
    mode = f[11] if len(f) > 11 else ""
    valid = f[1] == "A" and mode != "N"
    lat, lon = _position(s, 3, valid)
    time_ms = _time(f[0])
    days = _days(f[8]) if f[8] else None
    if f[8] and days is None:
        raise _bad(s, 9, "日期不存在", "no such date")
    return Rmc(
        s.name[:2],
        valid,
        time_ms,
        None if time_ms is None or days is None else days * _MS_PER_DAY + time_ms,
        lat,
        lon,
        _opt_float(f[6]),
        _opt_float(f[7]),
        mode,
    )


def parse_gga(s: Sentence) -> Gga:
    GGA.check(s)
    f = s.fields
    quality = int(f[5] or 0)
    lat, lon = _position(s, 2, quality > 0)
    return Gga(
        s.name[:2],
        _time(f[0]),
        lat,
        lon,
        quality,
        _opt_int(f[6]),
        _opt_float(f[7]),
        _opt_float(f[8]),
        _opt_float(f[10]) if len(f) > 10 else None,
    )


def parse_gsv(s: Sentence) -> Gsv:
    GSV.check(s)
    f = s.fields
    groups, signal = divmod(len(f) - 3, 4)
    total, number = int(f[0]), int(f[1])
    if not 1 <= number <= total:
        raise _bad(s, 2, f"序号应为 1–{total}", f"sentence number not 1-{total}")
    signal_id = (f[-1] or None) if signal else None
    return Gsv(s.name[:2], total, number, int(f[2]), signal_id, f[3 : 3 + 4 * groups])


def parse_gsa(s: Sentence) -> Gsa:
    GSA.check(s)
    f = s.fields
    return Gsa(
        s.name[:2],
        int(f[1]),
        tuple(int(p) for p in f[2:14] if p),
        _opt_float(f[14]),
        _opt_float(f[15]),
        _opt_float(f[16]),
        (f[17] or None) if len(f) > 17 else None,
    )


_PARSERS: dict[str, Callable[[Sentence], Message]] = {
    "RMC": parse_rmc,
    "GGA": parse_gga,
    "GSV": parse_gsv,
    "GSA": parse_gsa,
}


def parse(s: Sentence) -> Message | None:
    """The sentence as a typed value; ``None`` for a type or talker this module does not read."""
    name = s.name
    if len(name) != 5 or name[:2] not in CONSTELLATIONS:
        return None
    parser = _PARSERS.get(name[2:])
    return None if parser is None else parser(s)
