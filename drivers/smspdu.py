"""SMS in PDU mode (3GPP 23.040 / 23.038): SUBMIT and DELIVER, alphabets, concatenation.

The kit's modem drivers send SMS-SUBMIT and read SMS-DELIVER; the simulator does the
reverse, so both directions live here. Payloads are ``str`` (GSM 7-bit default alphabet
with its extension table when every character fits, else UCS-2) or ``bytes`` (8-bit
data). Text outside the Basic Multilingual Plane travels as UTF-16 surrogate pairs
(what phones do), and a segment boundary never splits a pair or a GSM escape.

Concatenated messages carry a user data header: IEI 0x00 (8-bit reference, 6 octets
with its length, leaving 153 septets / 134 octets / 67 UCS-2 units) or IEI 0x08
(16-bit reference, 7 octets: 152 / 133 / 66). Other information elements are skipped.
Anything malformed raises :class:`BadPdu` and nothing else.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Generic, TypeVar

from edge.errors import KitError

T = TypeVar("T")

# 23.038 6.2.1: the default alphabet (0x1B is the escape to the extension table).
_GSM = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~",
            0x3E: "]", 0x40: "|", 0x65: "€"}  # fmt: skip
_ESC = 0x1B
_TO_GSM = {ch: code for code, ch in enumerate(_GSM) if code != _ESC}
_TO_GSM_EXT = {ch: code for code, ch in _GSM_EXT.items()}
_BCD = "0123456789*#abc"

MAX_SEGMENTS = 255
TOA_INTERNATIONAL = 0x91  # 145
TOA_UNKNOWN = 0x81  # 129: national or unknown numbering plan, ISDN
VALIDITY_24H = 0xA7  # relative validity period: (0xA7 - 143) * 30 min + 12 h = 24 h


class BadPdu(KitError, ValueError):
    """Bytes that are not a well-formed SMS PDU of the kind expected."""


class BadAddress(KitError, ValueError):
    """A phone number that cannot be put in an SMS address field."""


class MessageTooLong(KitError, ValueError):
    """A payload that would need more than 255 segments."""


class Alphabet(Enum):
    """Data coding of the user data; the value is the DCS octet the kit sends."""

    GSM7 = 0x00
    DATA8 = 0x04
    UCS2 = 0x08


@dataclass(frozen=True, slots=True)
class Concat:
    """Where a segment sits in a concatenated message (``seq`` counts from 1)."""

    ref: int
    total: int
    seq: int
    wide: bool = False  # 16-bit reference (IEI 0x08)


@dataclass(frozen=True, slots=True)
class Segment:
    """One SMS's user data: ``str`` for GSM7/UCS2, ``bytes`` for DATA8."""

    payload: str | bytes
    alphabet: Alphabet
    concat: Concat | None = None


@dataclass(frozen=True, slots=True)
class Submit:
    """An SMS-SUBMIT as the modem hands it to the network."""

    dest: str
    segment: Segment
    reference: int = 0


@dataclass(frozen=True, slots=True)
class Deliver:
    """An SMS-DELIVER as the network hands it to the modem."""

    sender: str
    timestamp: datetime
    segment: Segment


def bad(zh: str, en: str) -> BadPdu:
    return BadPdu(f"短信 PDU 无效：{zh}", f"invalid SMS PDU: {en}")


# --- alphabets ------------------------------------------------------------------------------


def gsm7_septets(text: str) -> list[int] | None:
    """``text`` in the default alphabet (escapes included), or None if a character is not in it."""
    out: list[int] = []
    for ch in text:
        if (code := _TO_GSM.get(ch)) is not None:
            out.append(code)
        elif (ext := _TO_GSM_EXT.get(ch)) is not None:
            out += (_ESC, ext)
        else:
            return None
    return out


def gsm7_text(septets: Sequence[int]) -> str:
    """Septets as text; an escape the receiver does not know shows the main table's character
    (23.038 6.2.1.1), and a dangling escape at the end is dropped."""
    out: list[str] = []
    escaped = False
    for code in septets:
        if escaped:
            out.append(_GSM_EXT.get(code, _GSM[code] if code != _ESC else " "))
            escaped = False
        elif code == _ESC:
            escaped = True
        else:
            out.append(_GSM[code])
    return "".join(out)


def pack7(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Septets packed LSB first after ``fill_bits`` zero bits (23.038 6.1.2.1)."""
    value = 0
    for i, septet in enumerate(septets):
        value |= septet << (fill_bits + 7 * i)
    return value.to_bytes((fill_bits + 7 * len(septets) + 7) // 8, "little")


def unpack7(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    if fill_bits + 7 * count > 8 * len(data):
        raise bad(f"7 位数据不足 {count} 个字符", f"7-bit data too short for {count} septets")
    value = int.from_bytes(data, "little")
    return [(value >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def alphabet_of(dcs: int) -> Alphabet:
    """The alphabet a data coding scheme octet names (23.038 4); compression is not supported."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding (0x) and automatic deletion (4x) groups
        if dcs & 0x20:
            raise bad(f"不支持压缩编码（DCS 0x{dcs:02X}）", f"compressed text (DCS 0x{dcs:02X})")
        return (Alphabet.GSM7, Alphabet.DATA8, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3]
    if group in (0xC, 0xD):  # message waiting indication, default alphabet
        return Alphabet.GSM7
    if group == 0xE:
        return Alphabet.UCS2
    if group == 0xF:
        return Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7
    raise bad(f"保留的 DCS 0x{dcs:02X}", f"reserved DCS 0x{dcs:02X}")


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-be")) // 2


# --- splitting ------------------------------------------------------------------------------


def segments(
    payload: str | bytes, ref: int = 0, *, wide: bool = False, alphabet: Alphabet | None = None
) -> list[Segment]:
    """``payload`` as the segments that carry it; one segment needs no header.

    ``alphabet`` forces UCS-2 for text (the default is GSM 7-bit when every character fits).
    ``ref`` is the concatenation reference (8 or 16 bits with ``wide``).
    """
    if isinstance(payload, bytes):
        chosen = Alphabet.DATA8
    elif alphabet is not None:
        chosen = alphabet
    else:
        chosen = Alphabet.GSM7 if gsm7_septets(payload) is not None else Alphabet.UCS2
    if isinstance(payload, bytes) != (chosen is Alphabet.DATA8):
        raise ValueError(f"{chosen.name} does not carry {type(payload).__name__}")
    header = 7 if wide else 6
    single, multi = _capacity(chosen, 0), _capacity(chosen, header)
    if _units(payload, chosen) <= single:
        return [Segment(payload, chosen)]
    pieces = _cut(payload, chosen, multi)
    if len(pieces) > MAX_SEGMENTS:
        raise MessageTooLong(
            f"短信过长：需要 {len(pieces)} 段，最多 {MAX_SEGMENTS} 段",
            f"message too long: {len(pieces)} segments needed, at most {MAX_SEGMENTS}",
        )
    ref &= 0xFFFF if wide else 0xFF
    n = len(pieces)
    return [Segment(p, chosen, Concat(ref, n, i + 1, wide)) for i, p in enumerate(pieces)]


def _capacity(alphabet: Alphabet, header_octets: int) -> int:
    """Units (septets, octets or UTF-16 units) left beside a header of ``header_octets``."""
    octets = 140 - header_octets
    if alphabet is Alphabet.GSM7:
        return (octets * 8) // 7 if header_octets == 0 else (octets * 8 - _fill(header_octets)) // 7
    return octets if alphabet is Alphabet.DATA8 else octets // 2


def _units(payload: str | bytes, alphabet: Alphabet) -> int:
    if isinstance(payload, bytes):
        return len(payload)
    if alphabet is Alphabet.GSM7:
        return len(gsm7_septets(payload) or ())
    return utf16_units(payload)


def _cut(payload: str | bytes, alphabet: Alphabet, size: int) -> list[str | bytes]:
    if isinstance(payload, bytes):
        return [payload[i : i + size] for i in range(0, len(payload), size)]
    pieces: list[str | bytes] = []
    start, used = 0, 0
    for i, ch in enumerate(payload):
        cost = (2 if ch in _TO_GSM_EXT else 1) if alphabet is Alphabet.GSM7 else utf16_units(ch)
        if used + cost > size:
            pieces.append(payload[start:i])
            start, used = i, 0
        used += cost
    pieces.append(payload[start:])
    return pieces


# --- user data ------------------------------------------------------------------------------


def _fill(header_octets: int) -> int:
    """Fill bits after a header so that septets start on a septet boundary."""
    return (7 - (header_octets * 8) % 7) % 7


def _header(concat: Concat | None) -> bytes:
    if concat is None:
        return b""
    if concat.wide:
        ie = bytes([0x08, 4, concat.ref >> 8, concat.ref & 0xFF, concat.total, concat.seq])
    else:
        ie = bytes([0x00, 3, concat.ref, concat.total, concat.seq])
    return bytes([len(ie)]) + ie


def user_data(segment: Segment) -> tuple[bool, int, bytes]:
    """``(udhi, udl, ud)``: the header flag, TP-UDL (septets for GSM7) and the user data."""
    udh = _header(segment.concat)
    payload = segment.payload
    if segment.alphabet is Alphabet.GSM7:
        assert isinstance(payload, str)
        septets = gsm7_septets(payload)
        if septets is None:
            raise ValueError("text not in the GSM 7-bit alphabet")
        fill = _fill(len(udh)) if udh else 0
        udl = (len(udh) * 8 + fill) // 7 + len(septets)
        return bool(udh), udl, udh + pack7(septets, fill)
    body = payload.encode("utf-16-be") if isinstance(payload, str) else payload
    return bool(udh), len(udh) + len(body), udh + body


def read_user_data(alphabet: Alphabet, udhi: bool, udl: int, ud: bytes) -> Segment:
    """The segment in user data ``ud`` whose TP-UDL is ``udl`` (see :func:`user_data`)."""
    limit = 160 if alphabet is Alphabet.GSM7 else 140
    if udl > limit:
        raise bad(f"用户数据长度 {udl} 超过 {limit}", f"user data length {udl} over {limit}")
    octets = (udl * 7 + 7) // 8 if alphabet is Alphabet.GSM7 else udl
    if len(ud) < octets:
        raise bad(
            f"用户数据 {len(ud)} 字节，应有 {octets}",
            f"user data of {len(ud)} octets, {octets} due",
        )
    ud = ud[:octets]
    concat, skip = None, 0
    if udhi:
        if not ud or ud[0] + 1 > len(ud):
            raise bad("用户数据头超出用户数据", "user data header runs past the user data")
        skip = ud[0] + 1
        concat = _concat(ud[1:skip])
    if alphabet is Alphabet.GSM7:
        fill = _fill(skip) if skip else 0
        count = udl - (skip * 8 + fill) // 7
        if count < 0:
            raise bad("用户数据头长于消息", "user data header longer than the message")
        return Segment(
            gsm7_text(unpack7(ud[skip:], count, fill) if count else []), alphabet, concat
        )
    body = ud[skip:]
    if alphabet is Alphabet.DATA8:
        return Segment(body, alphabet, concat)
    if len(body) % 2:
        raise bad("UCS-2 数据长度为奇数", "UCS-2 data of odd length")
    return Segment(body.decode("utf-16-be", "surrogatepass"), alphabet, concat)


def _concat(header: bytes) -> Concat | None:
    """The concatenation element of a header; invalid ones are ignored (23.040 9.2.3.24.1)."""
    found = None
    at = 0
    while at < len(header):
        if at + 2 > len(header) or at + 2 + header[at + 1] > len(header):
            raise bad("用户数据头信息单元被截断", "truncated information element in the header")
        iei, data = header[at], header[at + 2 : at + 2 + header[at + 1]]
        at += 2 + len(data)
        if iei == 0x00 and len(data) == 3:
            found = _valid_concat(data[0], data[1], data[2], False) or found
        elif iei == 0x08 and len(data) == 4:
            found = _valid_concat(data[0] << 8 | data[1], data[2], data[3], True) or found
    return found


def _valid_concat(ref: int, total: int, seq: int, wide: bool) -> Concat | None:
    return Concat(ref, total, seq, wide) if 0 < seq <= total else None


# --- addresses and timestamps -----------------------------------------------------------------


def encode_address(number: str) -> bytes:
    """An address field: digit count, type (145 with ``+``, else 129), swapped BCD digits."""
    digits = number[1:] if number.startswith("+") else number
    if not digits or len(digits) > 20 or any(d not in "0123456789*#" for d in digits):
        raise BadAddress(
            f"电话号码无效：{number!r}（应为至多 20 位数字，可带 +）",
            f"invalid phone number {number!r} (up to 20 digits, optionally with +)",
        )
    toa = TOA_INTERNATIONAL if number.startswith("+") else TOA_UNKNOWN
    return bytes([len(digits), toa]) + _bcd(digits)


def _bcd(digits: str) -> bytes:
    nibbles = [_BCD.index(d) for d in digits] + ([0xF] if len(digits) % 2 else [])
    return bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))


def _unbcd(data: bytes, count: int) -> str:
    out = []
    for i in range(count):
        nibble = (data[i // 2] >> (4 * (i % 2))) & 0xF
        if nibble == 0xF:
            raise bad("号码中有填充位", "filler inside a number")
        out.append(_BCD[nibble])
    return "".join(out)


def number_of(toa: int, digits: str) -> str:
    """A number as the kit writes it: ``+`` for the international type."""
    return "+" + digits if (toa >> 4) & 7 == 1 else digits


_FIELDS = {
    "首字节": "first octet",
    "消息参考号": "message reference",
    "目的地址": "destination address",
    "发送方地址": "originating address",
    "协议标识": "protocol identifier",
    "编码方案": "data coding scheme",
    "有效期": "validity period",
    "时间戳": "timestamp",
    "用户数据长度": "user data length",
    "短信中心地址": "SMSC address",
}


class _Reader:
    """Bytes read in order; running out is a :class:`BadPdu` naming the field (see ``_FIELDS``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > len(self.data):
            raise bad(f"{what}处数据不足", f"too short at the {_FIELDS[what]}")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]

    def address(self, what: str) -> str:
        count = self.octet(what)
        toa = self.octet(what)
        if count > 20:
            raise bad(f"{what}长度 {count}", f"{_FIELDS[what]} length {count}")
        raw = self.take((count + 1) // 2, what)
        if (toa >> 4) & 7 == 5:  # alphanumeric sender, GSM 7-bit packed
            return gsm7_text(unpack7(raw, count * 4 // 7))
        return number_of(toa, _unbcd(raw, count))


def _swapped(octet: int) -> int:
    low, high = octet & 0xF, octet >> 4
    if low > 9 or high > 9:
        raise bad(f"时间戳数字 0x{octet:02X}", f"timestamp digit 0x{octet:02X}")
    return low * 10 + high


def encode_scts(when: datetime) -> bytes:
    """A service centre time stamp: swapped BCD, zone in quarter hours (23.040 9.2.3.11)."""
    offset = when.utcoffset() or timedelta()
    quarters = int(abs(offset).total_seconds()) // 900
    zone = (quarters % 10) << 4 | quarters // 10 | (0x08 if offset < timedelta() else 0)
    fields = (when.year % 100, when.month, when.day, when.hour, when.minute, when.second)
    return bytes((v % 10) << 4 | v // 10 for v in fields) + bytes([zone])


def decode_scts(raw: bytes) -> datetime:
    yy, mm, dd, hh, mi, ss = (_swapped(b) for b in raw[:6])
    zone = raw[6]
    quarters = (zone & 0x07) * 10 + _swapped(zone & 0xF0)  # the sign bit sits in the tens digit
    offset = timedelta(minutes=15 * quarters) * (-1 if zone & 0x08 else 1)
    try:
        return datetime(2000 + yy, mm, dd, hh, mi, ss, tzinfo=timezone(offset))
    except ValueError as exc:
        raise bad(f"时间戳无效（{exc}）", f"invalid timestamp ({exc})") from None


# --- TPDUs ----------------------------------------------------------------------------------


def encode_submit(
    dest: str, segment: Segment, *, reference: int = 0, validity: int = VALIDITY_24H
) -> bytes:
    """An SMS-SUBMIT TPDU (no SMSC field) with a relative validity period."""
    udhi, udl, ud = user_data(segment)
    first = 0x11 | (0x40 if udhi else 0)  # SUBMIT, relative validity period
    head = bytes([first, reference & 0xFF]) + encode_address(dest)
    return head + bytes([0, segment.alphabet.value, validity, udl]) + ud


def decode_submit(tpdu: bytes) -> Submit:
    r = _Reader(tpdu)
    first = r.octet("首字节")
    if first & 0x03 != 0x01:
        raise bad(f"不是 SMS-SUBMIT（首字节 0x{first:02X}）", f"not SMS-SUBMIT (0x{first:02X})")
    reference = r.octet("消息参考号")
    dest = r.address("目的地址")
    r.octet("协议标识")
    alphabet = alphabet_of(r.octet("编码方案"))
    r.take((0, 7, 1, 7)[(first >> 3) & 3], "有效期")
    udl = r.octet("用户数据长度")
    segment = read_user_data(alphabet, bool(first & 0x40), udl, tpdu[r.at :])
    return Submit(dest, segment, reference)


def encode_deliver(sender: str, segment: Segment, timestamp: datetime) -> bytes:
    """An SMS-DELIVER TPDU (no SMSC field), "no more messages to send" set."""
    udhi, udl, ud = user_data(segment)
    first = 0x04 | (0x40 if udhi else 0)
    head = bytes([first]) + encode_address(sender)
    return head + bytes([0, segment.alphabet.value]) + encode_scts(timestamp) + bytes([udl]) + ud


def decode_deliver(tpdu: bytes) -> Deliver:
    r = _Reader(tpdu)
    first = r.octet("首字节")
    if first & 0x03 != 0x00:
        raise bad(f"不是 SMS-DELIVER（首字节 0x{first:02X}）", f"not SMS-DELIVER (0x{first:02X})")
    sender = r.address("发送方地址")
    r.octet("协议标识")
    alphabet = alphabet_of(r.octet("编码方案"))
    timestamp = decode_scts(r.take(7, "时间戳"))
    udl = r.octet("用户数据长度")
    return Deliver(
        sender, timestamp, read_user_data(alphabet, bool(first & 0x40), udl, r.data[r.at :])
    )


def add_smsc(tpdu: bytes, smsc: str | None = None) -> bytes:
    """The PDU a modem takes or gives: SMSC field (``00``: the SIM's own) then the TPDU."""
    if smsc is None:
        return b"\x00" + tpdu
    field = encode_address(smsc)
    return bytes([len(field) - 1]) + field[1:] + tpdu


def split_smsc(pdu: bytes) -> tuple[str | None, bytes]:
    """``(smsc, tpdu)`` of a PDU that starts with an SMSC field."""
    r = _Reader(pdu)
    size = r.octet("短信中心地址")
    if size == 0:
        return None, pdu[1:]
    if size > 11:
        raise bad(f"短信中心地址长度 {size}", f"SMSC address length {size}")
    toa = r.octet("短信中心地址")
    raw = r.take(size - 1, "短信中心地址")
    digits = 2 * len(raw) - (1 if raw and raw[-1] >> 4 == 0xF else 0)
    return number_of(toa, _unbcd(raw, digits)), pdu[r.at :]


def from_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise bad(f"不是十六进制：{text[:40]!r}", f"not hexadecimal: {text[:40]!r}") from None


# --- reassembly -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A whole message, and the tags (such as storage indexes) of every segment it came in."""

    sender: str
    payload: str | bytes
    timestamp: datetime
    parts: tuple[T, ...]


@dataclass(slots=True)
class _Pending(Generic[T]):
    started: float
    timestamp: datetime
    total: int
    pieces: dict[int, str | bytes]
    tags: list[T]


class Reassembler(Generic[T]):
    """Joins the segments of concatenated messages, within bounds.

    At most ``max_pending`` messages wait for segments (the oldest gives way) and none
    waits longer than ``max_age_s``. The tags of segments given up wait in
    :meth:`take_discarded` so their owner can free them (the driver deletes them from
    the SIM); :attr:`dropped` counts why.
    """

    def __init__(
        self,
        *,
        max_pending: int = 16,
        max_age_s: float = 6 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.dropped: Counter[str] = Counter()
        self._clock = clock
        self._pending: dict[tuple[str, int, int, bool, bool], _Pending[T]] = {}
        self._discarded: list[T] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, sender: str, timestamp: datetime, segment: Segment, tag: T) -> Message[T] | None:
        """The whole message once ``segment`` completes it, else None."""
        self.expire()
        c = segment.concat
        if c is None or c.total == 1:
            return Message(sender, _joined([segment.payload]), timestamp, (tag,))
        key = (sender, c.ref, c.total, c.wide, isinstance(segment.payload, bytes))
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_pending:
                self._give_up(next(iter(self._pending)), "evicted")
            entry = self._pending[key] = _Pending[T](self._clock(), timestamp, c.total, {}, [])
        entry.tags.append(tag)
        if c.seq in entry.pieces:
            self.dropped["duplicate"] += 1
        else:
            entry.pieces[c.seq] = segment.payload
            entry.timestamp = min(entry.timestamp, timestamp)
        if len(entry.pieces) < entry.total:
            return None
        del self._pending[key]
        payload = _joined([entry.pieces[i] for i in range(1, entry.total + 1)])
        return Message(sender, payload, entry.timestamp, tuple(entry.tags))

    def expire(self) -> None:
        """Give up messages older than ``max_age_s``."""
        limit = self._clock() - self.max_age_s
        for key in [k for k, e in self._pending.items() if e.started <= limit]:
            self._give_up(key, "expired")

    def take_discarded(self) -> list[T]:
        tags, self._discarded = self._discarded, []
        return tags

    def _give_up(self, key: tuple[str, int, int, bool, bool], why: str) -> None:
        entry = self._pending.pop(key)
        self._discarded += entry.tags
        self.dropped[why] += 1


def _joined(pieces: list[str | bytes]) -> str | bytes:
    if all(isinstance(p, bytes) for p in pieces):
        return b"".join(p for p in pieces if isinstance(p, bytes))
    text = "".join(p for p in pieces if isinstance(p, str))
    # Pairs split across segments join again; a lone surrogate becomes U+FFFD.
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")
