"""The kit ↔ companion UART protocol: framing, checksums and parsing (MicroPython and CPython).

One frame is one ASCII line, readable on a terminal at 115200 8N1::

    $<seq>,<KIND>[,<field>...]*<CRC>\n

``seq`` is 0–65535 (wrapping, per sender), ``KIND`` one of :data:`KINDS`, each field
printable ASCII without ``$ , *``, and ``CRC`` the CRC-16/CCITT-FALSE (poly 0x1021, init
0xFFFF) of the bytes between ``$`` and ``*`` as four upper-case hex digits. ``\r`` before
the newline is allowed. A line that breaks any rule, or is longer than :data:`MAX_LINE`, is
dropped whole and counted; bytes before a ``$`` are line noise and skipped.

Kit → companion: ``HB`` (heartbeat), ``GET`` (readings), ``OFF,<s>`` (cut the Pi's power
after s seconds), ``WDT,<s>`` (heartbeat timeout; 0 turns the watchdog off).
Companion → kit: ``PWR,<mV>,<mA>,<mains 0|1>,<deci-°C>`` (readings; mA + charging),
``ACK,<seq>`` / ``NAK,<seq>,<why>`` (answers to a command's seq), ``EVT,<name>[,<arg>]``
with ``BOOT``, ``BTN,short|long``, ``CYCLED,<reason>``, ``LOW,<mV>``, ``RESTORED``.

No imports, no dataclasses, no f-strings with format specs MicroPython lacks: the same file
runs on the Pico.
"""

MAX_LINE = 96  # bytes between "$" and "\n"; longer lines are noise
MAX_SEQ = 0xFFFF
KINDS = ("HB", "GET", "OFF", "WDT", "PWR", "ACK", "NAK", "EVT")
FIELD_COUNTS = {
    "HB": (0, 0),
    "GET": (0, 0),
    "OFF": (1, 1),
    "WDT": (1, 1),
    "PWR": (4, 4),
    "ACK": (1, 1),
    "NAK": (2, 2),
    "EVT": (1, 2),
}
_FORBIDDEN = b"$,*"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: ``crc16(b"123456789") == 0x29B1``."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _field_ok(field: bytes) -> bool:
    return all(0x20 <= byte <= 0x7E and byte not in _FORBIDDEN for byte in field)


def encode(seq: int, kind: str, fields: tuple[str, ...] = ()) -> bytes:
    """One frame; raises ``ValueError`` for what :class:`Decoder` would refuse."""
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError("seq out of range")
    if kind not in FIELD_COUNTS:
        raise ValueError("unknown kind")
    lo, hi = FIELD_COUNTS[kind]
    if not lo <= len(fields) <= hi:
        raise ValueError("wrong number of fields")
    body = str(seq) + "," + kind
    for field in fields:
        body += "," + field
    data = body.encode()
    for field in fields:
        if not field or not _field_ok(field.encode()):
            raise ValueError("bad field")
    if len(data) + 5 > MAX_LINE:
        raise ValueError("frame too long")
    return b"$" + data + b"*" + f"{crc16(data):04X}".encode() + b"\n"


def parse(line: bytes) -> tuple[int, str, tuple[str, ...]] | None:
    """``(seq, kind, fields)`` of one line without its newline, or ``None`` if malformed."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) < 7 or len(line) > MAX_LINE or line[0:1] != b"$" or line[-5:-4] != b"*":
        return None
    body, check = line[1:-5], line[-4:]
    for byte in check:
        if not (0x30 <= byte <= 0x39 or 0x41 <= byte <= 0x46):
            return None
    if int(check.decode(), 16) != crc16(body):
        return None
    parts = body.split(b",")
    if len(parts) < 2 or not _digits(parts[0]) or len(parts[0]) > 5:
        return None
    seq = int(parts[0].decode())
    kind = parts[1].decode() if _field_ok(parts[1]) else ""
    if seq > MAX_SEQ or kind not in FIELD_COUNTS:
        return None
    fields = parts[2:]
    lo, hi = FIELD_COUNTS[kind]
    if not lo <= len(fields) <= hi:
        return None
    out = []
    for field in fields:
        if not field or not _field_ok(field):
            return None
        out.append(field.decode())
    return seq, kind, tuple(out)


def _digits(data: bytes) -> bool:
    return bool(data) and all(0x30 <= byte <= 0x39 for byte in data)


def number(text: str, lo: int, hi: int) -> int | None:
    """An integer field within ``lo..hi``, or ``None``."""
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not digits or len(digits) > 9 or not _digits(digits.encode()):
        return None
    value = -int(digits) if negative else int(digits)
    return value if lo <= value <= hi else None


class Decoder:
    """Bytes in, frames out: ``feed(data)`` returns the complete frames it found.

    ``malformed`` counts dropped lines (bad checksum, grammar, length); noise before a
    ``$`` is skipped and counted in ``noise`` bytes. The buffer never grows past
    :data:`MAX_LINE`: an over-long line is dropped as soon as it is too long.
    """

    def __init__(self) -> None:
        self.malformed = 0
        self.noise = 0
        self.frames = 0
        self._buf = b""
        self._skipping = False  # inside an over-long line: drop until its newline

    def feed(self, data: bytes) -> list[tuple[int, str, tuple[str, ...]]]:
        out = []
        buf = self._buf + data
        while buf:
            if self._skipping:
                end = buf.find(b"\n")
                if end < 0:
                    buf = b""
                    break
                buf = buf[end + 1 :]
                self._skipping = False
                continue
            start = buf.find(b"$")
            if start < 0:
                self.noise += len(buf.replace(b"\n", b"").replace(b"\r", b""))
                buf = b""
                break
            if start:
                self.noise += len(buf[:start].replace(b"\n", b"").replace(b"\r", b""))
                buf = buf[start:]
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE + 1:
                    self.malformed += 1
                    self._skipping = True
                    buf = b""
                break
            line, buf = buf[:end], buf[end + 1 :]
            # A "$" inside the line means the earlier frame was cut short: resync on it.
            cut = line.rfind(b"$")
            if cut > 0:
                self.malformed += 1
                line = line[cut:]
            frame = parse(line)
            if frame is None:
                self.malformed += 1
            else:
                self.frames += 1
                out.append(frame)
        self._buf = buf
        return out


class Sender:
    """Numbers outgoing frames: ``frame(kind, fields)`` → bytes with the next seq."""

    def __init__(self, first: int = 0) -> None:
        self.seq = first & MAX_SEQ

    def frame(self, kind: str, fields: tuple[str, ...] = ()) -> bytes:
        data = encode(self.seq, kind, fields)
        self.seq = (self.seq + 1) & MAX_SEQ
        return data
