"""What the team sends over the mesh, turned into items: SOS, structured reports, messages, tracks.

Every text becomes exactly one item, whatever it says (the text itself is always kept):

- **SOS** — a text starting with ``SOS`` or ``求救`` (any case, after blanks) is a P0 ``sos``
  with the sender's last known position from the roster, e.g. ``SOS 被困 3 人``,
  ``sos trapped 2 @ bridge``, ``  求救！``. Counts, needs and place are read as below.
- **Report** — a text with counts or needs is a P1 report with ``data``:

  ========================  ================================================  ==========
  key                       words (Chinese / English)                         data key
  ========================  ================================================  ==========
  injured                   伤员 伤者 受伤 轻伤 重伤 伤 / casualties injured    injured
                            wounded hurt
  trapped                   被困 困 / trapped stuck                            trapped
  dead                      死亡 遇难 死 / dead deaths killed                  dead
  missing                   失踪 / missing                                     missing
  rescued                   获救 救出 / rescued saved                          rescued
  needs                     需要 需 缺 / needs need                            need
  place                     ``@`` and what follows                            place
  ========================  ================================================  ==========

  A count is a word next to a number: ``伤员 3 被困 2``, ``伤员3人，被困2人``,
  ``casualties 3 trapped 2``, or number first: ``3 injured 2 trapped``, ``3人受伤``.
  Which side the number is on is decided by whichever comes first in the text.
  Numbers may be full-width (``３``), take a unit (人 名 个 位 people persons), and
  Chinese numerals count when a unit follows (``被困三人``). Everything after a needs
  word, up to ``@``, is the list of needs, split at blanks, commas, 、 and "and":
  ``需要 水 药品 @ 桥头`` gives ``need="水,药品"``, ``place="桥头"``;
  ``casualties 3 trapped 2 needs water,medicine`` gives ``injured=3 trapped=2
  need="water,medicine"``. Full-width punctuation (``：``, ``，``, ``＠``) works too.
  The kind follows what was reported: only trapped → ``trapped``; only injured/dead →
  ``casualties``; only needs → ``needs``; anything else → ``situation``. All are P1:
  a member who needs the P0 path writes SOS first.
- **Message** — anything else is a P1 ``message``.

A position packet becomes a P2 ``track`` (the handheld's GPS time when it sent one).
Every item's source is ``mesh:!<node id>``.
"""

from __future__ import annotations

import itertools
import re
import time
import unicodedata

from edge.errors import BadItem
from edge.item import (
    MAX_CLOCK_MS,
    MAX_DATA_STR,
    MAX_TEXT_CHARS,
    MIN_SET_CLOCK_MS,
    DataValue,
    Item,
    Kind,
    Position,
    Priority,
    new_item,
)
from mesh.roster import Member, Roster

MAX_COUNT = 1_000_000  # a larger "count" is a typo or not a count at all
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SOS = re.compile(r"\s*(?:sos|求救)", re.IGNORECASE)

_COUNT_WORDS: dict[str, tuple[str, ...]] = {
    "injured": (
        *("伤员", "伤者", "受伤", "轻伤", "重伤", "伤"),
        *("casualties", "casualty", "injured", "wounded", "hurt"),
    ),
    "trapped": ("被困", "困", "trapped", "stuck"),
    "dead": ("死亡", "遇难", "死", "dead", "deaths", "killed"),
    "missing": ("失踪", "missing"),
    "rescued": ("获救", "救出", "rescued", "saved"),
}
_WORD_KEY = {word: key for key, words in _COUNT_WORDS.items() for word in words}
_UNIT = r"(?:\s*(?:人|名|个|位|people|persons|person))"
_HAN_DIGITS = "零〇一二两三四五六七八九十百千"


def _word(w: str) -> str:
    return rf"\b{re.escape(w)}(?![a-z])" if w.isascii() else re.escape(w)


_TOKEN = re.compile(
    rf"(?<!\d)(?P<num>\d{{1,7}})(?!\d){_UNIT}?"
    rf"|(?P<han>[{_HAN_DIGITS}]+){_UNIT}"
    rf"|(?P<kw>{'|'.join(_word(w) for w in sorted(_WORD_KEY, key=len, reverse=True))})"
    r"|(?P<need>需要|需|缺|\bneeds?\b)"
    r"|(?P<at>@)",
    re.IGNORECASE,
)
_NEED_SPLIT = re.compile(r"[\s,;、/.。]+|\band\b|和|及")


def clean_text(text: str) -> str:
    """``text`` as an item may carry it: valid UTF-8, no control characters, not too long."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", text)[:MAX_TEXT_CHARS]


def _han_number(s: str) -> int | None:
    """Chinese numerals up to the thousands: 三 → 3, 十二 → 12, 两百零五 → 205."""
    digits = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
    units = {"十": 10, "百": 100, "千": 1000}
    total, digit = 0, None
    for c in s:
        if c in digits:
            if digit:
                return None  # "三三" is no number; 零 only holds a place
            digit = digits[c]
        else:
            total += (1 if digit is None else digit) * units[c]
            digit = None
    return total + (digit or 0)


def parse_report(text: str) -> dict[str, DataValue]:
    """The counts, needs and place a text reports (empty if none); see the module docstring."""
    norm = unicodedata.normalize("NFKC", text).lower()
    data: dict[str, DataValue] = {}
    at = norm.find("@")
    if at >= 0:
        place = norm[at + 1 :].strip(" \t\n,;、。:")
        if place:
            data["place"] = clean_text(place)[:MAX_DATA_STR]
        norm = norm[:at]
    pairs: list[tuple[str, str | int]] = []
    need_from: int | None = None
    for m in _TOKEN.finditer(norm):
        if m.group("need"):
            need_from = m.end()
            break
        if m.group("kw"):
            pairs.append(("kw", _WORD_KEY[m.group("kw")]))
        else:
            value = int(m.group("num")) if m.group("num") else _han_number(m.group("han"))
            if value is not None:
                pairs.append(("num", value))
    if need_from is not None:
        needs = [w for w in _NEED_SPLIT.split(norm[need_from:]) if w.strip(" :")]
        if needs:
            data["need"] = clean_text(",".join(w.strip(" :") for w in needs))[:MAX_DATA_STR]
    first = pairs[0][0] if pairs else "kw"
    for (t1, v1), (t2, v2) in itertools.pairwise(pairs):
        if t1 != first or t2 == first:
            continue
        key, count = (v1, v2) if first == "kw" else (v2, v1)
        assert isinstance(key, str) and isinstance(count, int)
        if count <= MAX_COUNT:
            total = data.get(key, 0)
            assert isinstance(total, int)
            data[key] = min(total + count, MAX_COUNT)
    return data


def _report_kind(data: dict[str, DataValue]) -> Kind:
    keys = set(data) - {"place"}
    if keys == {"trapped"}:
        return Kind.TRAPPED
    if keys and keys <= {"injured", "dead"}:
        return Kind.CASUALTIES
    if keys == {"need"}:
        return Kind.NEEDS
    return Kind.SITUATION


def source(node_id: str) -> str:
    return f"mesh:{node_id}"


def text_item(text: str, sender: str, roster: Roster, *, now_s: float | None = None) -> Item:
    """The one item a team member's ``text`` makes (see the module docstring)."""
    now = time.time() if now_s is None else now_s
    body = clean_text(text)
    member = roster.get(sender)
    data = parse_report(body)
    is_sos = _SOS.match(unicodedata.normalize("NFKC", body)) is not None
    if not is_sos and not (set(data) - {"place"}):
        return new_item(Kind.MESSAGE, source=source(sender), text=body, data=_who(member))
    kind, priority = (Kind.SOS, Priority.P0) if is_sos else (_report_kind(data), Priority.P1)
    position = None
    if member is not None and member.position is not None:
        position = member.position
        if member.position_s is not None:
            data["position_age_s"] = max(0, round(now - member.position_s))
    data.update(_who(member))
    return new_item(
        kind, source=source(sender), priority=priority, text=body, position=position, data=data
    )


def _who(member: Member | None) -> dict[str, DataValue]:
    name = member and (member.long_name or member.short_name)
    return {"sender": clean_text(name)[:MAX_DATA_STR]} if name else {}


def position_item(
    sender: str,
    lat: float,
    lon: float,
    alt_m: float | None = None,
    *,
    time_s: int | None = None,
    battery_percent: int | None = None,
) -> Item | None:
    """The P2 track a position packet makes; ``None`` for no fix (0, 0) or an impossible one."""
    if lat == 0 and lon == 0:
        return None  # Meshtastic's "no position"
    try:
        position = Position(lat, lon, alt_m)
    except BadItem:
        try:
            position = Position(lat, lon)  # an altitude out of range is the only defect
        except BadItem:
            return None
    created_ms: int | None = None
    clock_ok: bool | None = None
    if time_s is not None and MIN_SET_CLOCK_MS <= time_s * 1000 <= MAX_CLOCK_MS:
        created_ms, clock_ok = time_s * 1000, True  # the handheld's GPS time
    data: dict[str, DataValue] = {}
    if battery_percent is not None and 0 <= battery_percent <= 101:
        data["battery"] = battery_percent
    return new_item(
        Kind.TRACK,
        source=source(sender),
        position=position,
        data=data,
        created_ms=created_ms,
        clock_ok=clock_ok,
    )
