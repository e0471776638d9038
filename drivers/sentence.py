"""NMEA-style ``$…*hh<CR><LF>`` sentences: the codec and a streaming parser that resynchronises."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from edge.errors import KitError

# NMEA 0183 says 82 characters; Beidou 5.0 carries up to 1,750 bytes as hex in one sentence.
MAX_SENTENCE_BYTES = 4096

_NAME = re.compile(r"[A-Z0-9]{1,10}")
# A whole valid body at once: a name, then printable ASCII without $ and * (commas split).
_BODY = re.compile(rb"[A-Z0-9]{1,10}(?:,[\x20-\x23\x25-\x29\x2B-\x7E]*)?")
_FORBIDDEN = frozenset("$*,\r\n")
_HEX = b"0123456789ABCDEFabcdef"
_ENDS = b"\r\n"


class BadSentence(KitError, ValueError):
    """Bytes or fields that do not make one well-formed sentence.

    ``reason`` names the :attr:`StreamParser.dropped` counter the defect counts under.
    """

    def __init__(self, zh: str, en: str, reason: str = "malformed") -> None:
        super().__init__(zh, en)
        self.reason = reason


def checksum(body: bytes) -> int:
    """XOR of every byte between ``$`` and ``*``.

    Folded as one integer, halves XORed together until one byte is left: a handful of
    C-level operations instead of a Python step per byte (NMEA arrives all day long).
    """
    n = len(body)
    value = int.from_bytes(body, "little")
    while n > 1:
        half = (n + 1) // 2
        bits = 8 * half
        value = (value & ((1 << bits) - 1)) ^ (value >> bits)
        n = half
    return value


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence: its address (``BDICI``: talker ``BD``, type ``ICI``) and its fields."""

    name: str
    fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise BadSentence(
                f"语句名无效：{self.name!r}（应为 1–10 个大写字母或数字）",
                f"invalid sentence name {self.name!r} (1-10 upper-case letters or digits)",
            )
        for field in self.fields:
            if not field.isascii() or not field.isprintable() or _FORBIDDEN.intersection(field):
                raise BadSentence(
                    f"{self.name} 的字段无效：{field!r}（仅限可打印 ASCII，不含 $ * ,）",
                    f"invalid {self.name} field {field!r} (printable ASCII without $ * ,)",
                )

    def encode(self) -> bytes:
        body = ",".join((self.name, *self.fields)).encode("ascii")
        return b"$%s*%02X\r\n" % (body, checksum(body))


def decode(line: bytes) -> Sentence:
    """One sentence from ``$…*hh`` (line end optional); any defect raises :class:`BadSentence`."""
    return _parse(line.rstrip(_ENDS))


def _parse(line: bytes) -> Sentence:
    star = line.rfind(b"*")
    if not line.startswith(b"$") or star < 0 or len(line) - star != 3:
        raise BadSentence(
            "语句不完整（缺少 $ 或 *hh 校验和）", "incomplete sentence (no $ or *hh)", "truncated"
        )
    body, given = line[1:star], line[star + 1 :]
    if given[0] not in _HEX or given[1] not in _HEX or int(given, 16) != checksum(body):
        raise BadSentence(
            f"校验和错误：{given.decode('ascii', 'replace')}，应为 {checksum(body):02X}",
            f"bad checksum {given.decode('ascii', 'replace')}, expected {checksum(body):02X}",
            "bad_checksum",
        )
    if _BODY.fullmatch(body) is None:
        try:
            name, *fields = body.decode("ascii").split(",")
        except UnicodeDecodeError:
            raise BadSentence("语句含非 ASCII 字节", "sentence contains non-ASCII bytes") from None
        return Sentence(name, tuple(fields))  # raises, saying which part is wrong
    name, *fields = body.decode("ascii").split(",")
    return _checked(name, tuple(fields))


def _checked(name: str, fields: tuple[str, ...]) -> Sentence:
    """A sentence whose parts :data:`_BODY` has already validated (no second check)."""
    sentence = object.__new__(Sentence)
    object.__setattr__(sentence, "name", name)
    object.__setattr__(sentence, "fields", fields)
    return sentence


class StreamParser:
    """Cuts sentences out of a byte stream of any quality.

    ``feed`` never raises and holds at most :data:`MAX_SENTENCE_BYTES`: a ``$`` always
    starts a new sentence (fields cannot contain one), so after any damage the next
    valid sentence is found. What is dropped is counted in ``dropped``:
    ``garbage_bytes`` (bytes outside any sentence, line ends aside), ``truncated``
    (cut short by the next ``$`` or a line end before ``*hh``), ``bad_checksum``,
    ``malformed`` (checksum right, content not a sentence) and ``oversize``.
    """

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self._buf = b""
        self._skipping = False  # inside the tail of an oversize sentence

    def feed(self, data: bytes) -> list[Sentence]:
        buf = self._buf + data
        out: list[Sentence] = []
        pos, size = 0, len(buf)
        while pos < size:
            if buf[pos] != 0x24:  # "$"
                nxt = buf.find(b"$", pos)
                end = size if nxt < 0 else nxt
                chunk = buf[pos:end]
                garbage = len(chunk) - chunk.count(b"\r") - chunk.count(b"\n")
                if garbage and not self._skipping:
                    self.dropped["garbage_bytes"] += garbage
                if nxt < 0:
                    pos = size
                    break
                pos, self._skipping = nxt, False
                continue
            self._skipping = False
            eol = _line_end(buf, pos)
            nxt = buf.find(b"$", pos + 1, size if eol < 0 else eol)
            if nxt >= 0:
                self.dropped["truncated"] += 1
                pos = nxt
                continue
            if eol < 0:
                if size - pos > MAX_SENTENCE_BYTES:
                    self.dropped["oversize"] += 1
                    pos, self._skipping = size, True
                break
            if eol - pos > MAX_SENTENCE_BYTES:
                self.dropped["oversize"] += 1
            else:
                self._take(buf[pos:eol], out)
            pos = eol + 1
        self._buf = buf[pos:]
        return out

    def _take(self, line: bytes, out: list[Sentence]) -> None:
        try:
            out.append(_parse(line))
        except BadSentence as err:
            self.dropped[err.reason] += 1


def _line_end(buf: bytes, start: int) -> int:
    """Index of the first CR or LF at or after ``start``, -1 if none yet."""
    cr, lf = buf.find(b"\r", start), buf.find(b"\n", start)
    if cr < 0 or 0 <= lf < cr:
        return lf
    return cr
