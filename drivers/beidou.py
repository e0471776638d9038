"""Beidou short-message terminal (4.0 RDSS and 5.0 regional): its card, sending, receiving.

What the driver reads from PROTOCOLS.md, and how it reads what is not settled there:

- 4.0 binary payloads go in mixed mode (``$CCTXA,…,2,A4<hex>``). The ``A4`` marker is
  part of the message: the receiving terminal hands it back (``$BDTXR,1,0179773,2,,A468…``),
  so it travels over the air and takes 8 of the card's bits. ``mtu`` is what is left
  for payload: ``(bits - 8) // 8`` — 77 bytes on the typical level-3 card (628 bits).
- 5.0 sends binary as coding 3 (mixed) hex without a marker (none is documented for
  ``$CCTCQ``); the regional 14,000 bits are exactly 1,750 payload bytes.
- ``$BDICP``'s layout is not settled: :class:`IcpLayout` says where the fields are (by
  default as in the public trace ``$BDICP,4238473,0,0,3,0,N,2,N,1,0,0,3,1,60,2,…``:
  interval 14th, level 15th), and the bits per regional level are a table passed in
  (by default every level gets the regional maximum, since no source gives levels).
- ``$BDFKI`` wait times: 4.0 ``mmss``; 5.0 ``remaining`` taken as seconds. After an
  accepted send the next one waits ``max(service interval, wait reported)``.
- ``$BDPWI`` (5.0) is read as ``time, n, n×(beam, power, x), m, m×(beam, power, x)…``;
  ``$BDBSI`` (4.0) as ``response beam, time-difference beam, power of beams 1–10``.
  ``card.signal`` is the strongest power the terminal reports, 0 meaning no beam.
- User ids are numbers written with varying zero padding (``04207733`` and ``4207733``
  name one user in real traces): they are compared and reported as at least 7 digits
  without extra leading zeros.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from drivers.backend import SerialBackend, serial_backend
from drivers.device import DeviceState, Lifecycle, wait_set
from drivers.sentence import Sentence, StreamParser
from drivers.serialio import DEFAULT_BACKOFF, Backoff, PortOffline, SerialPort
from edge.errors import KitError

log = logging.getLogger(__name__)

Version = Literal["4.0", "5.0"]
DEFAULT_DEVICE = "/dev/ttyUSB0"

# Bits per message by communication level (PROTOCOLS.md).
RDSS_BITS = {1: 110, 2: 408, 3: 628, 4: 848}
RDSS_BITS_ENCRYPTED = {1: 140, 2: 360, 3: 580, 4: 1680}
REGIONAL_MAX_BITS = 14_000
# Unconfirmed: no source gives regional lengths per level (0 is level 5 in one vendor's code).
REGIONAL_BITS = dict.fromkeys(range(6), REGIONAL_MAX_BITS)
MIXED_MARK = "A4"

_DIGITS = re.compile(r"[0-9]{1,11}")


class BadMessage(KitError, ValueError):
    """A message the terminal could not carry: no destination, empty, or too long for the card."""


class BadSetting(KitError, ValueError):
    """A driver setting outside what the driver supports."""


class TerminalOffline(KitError, ConnectionError):
    """The terminal cannot send now: unplugged, no card read, or no satellite signal."""


class NoFeedback(KitError, TimeoutError):
    """The terminal did not confirm or refuse a send in time; it may have transmitted."""


class Refused(KitError, RuntimeError):
    """The terminal did not transmit."""


class TooSoon(Refused):
    """The card's service interval is not over: sending now would be refused."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        secs = math.ceil(wait_s)
        super().__init__(
            f"北斗服务频度未到，还需等待 {secs} 秒",
            f"Beidou service interval not over: wait {secs} s",
        )


@dataclass(frozen=True, slots=True)
class Card:
    """What the terminal's card allows, as read from it."""

    user_id: str
    protocol: Version
    comm_level: int
    encrypted: bool
    bits: int  # message length allowed, marker included
    min_interval: float  # service interval, seconds
    signal: int | None = None  # strongest beam power reported; None before the first report

    @property
    def mtu(self) -> int:
        """Payload bytes per message."""
        marker = 4 * len(MIXED_MARK) if self.protocol == "4.0" else 0
        return max(0, (self.bits - marker) // 8)


@dataclass(frozen=True, slots=True)
class IcpLayout:
    """Positions in ``$BDICP`` (0 = first field after the name) of what the driver needs."""

    user_id: int = 0
    encrypted: int = 5
    interval: int = 13
    level: int = 14


@dataclass(frozen=True, slots=True)
class _Feedback:
    ok: bool
    too_soon: bool
    wait_s: float | None
    zh: str
    en: str
    no_card: bool = False


_REGIONAL_REASONS = {
    1: ("服务频度未到", "service interval not over"),
    2: ("发射抑制", "transmission inhibited"),
    3: ("发射静默", "radio silence"),
    4: ("功率未锁定", "power not locked"),
    5: ("未检测到北斗卡", "no card"),
    6: ("权限不足", "no permission"),
}


def user_id(text: str) -> str:
    """A Beidou user id in one spelling: digits, at least 7, no extra leading zeros."""
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"not a Beidou user id: {text!r}")
    return text.lstrip("0").zfill(7)


def _feedback(f: tuple[str, ...], command: str) -> _Feedback | None:
    """``$BDFKI`` in either layout (4.0 starts with the command, 5.0 with a time)."""
    if f[0].isalpha():  # 4.0: cmd, executed, interval ok, inhibit 0-3, wait mmss
        if f[0] != command:
            return None
        wait = f[4]
        wait_s = float(int(wait[:2]) * 60 + int(wait[2:])) if len(wait) == 4 else None
        inhibit = int(f[3] or 0)
        if f[1] == "Y":
            return _Feedback(True, False, wait_s, "", "")
        if inhibit:
            zh, en = f"发射抑制（代码 {inhibit}）", f"transmission inhibited (code {inhibit})"
            return _Feedback(False, False, wait_s, zh, en)
        return _Feedback(False, f[2] == "N", wait_s, "终端未执行", "not executed")
    if f[1] != command:  # 5.0: hhmmss, cmd, Y/N, reason, remaining
        return None
    reason = int(f[3] or 0)
    zh, en = _REGIONAL_REASONS.get(reason, (f"原因代码 {reason}", f"reason code {reason}"))
    wait_s = float(int(f[4])) if f[4] else None
    return _Feedback(f[2] == "Y", reason == 1, wait_s, zh, en, no_card=reason == 5)


def _unhex(text: str) -> bytes:
    payload = binascii.unhexlify(text)
    if not payload:
        raise ValueError("empty message")
    return payload


class _Rdss:
    """The 4.0 (BDS-2 RDSS) sentences."""

    protocol: Version = "4.0"
    query = Sentence("CCICA", ("0", "00"))
    names = ("BDICI", "BDFKI", "BDTXR", "BDBSI")

    def card(self, f: tuple[str, ...]) -> Card | None:
        # user id, serial, broadcast id, user type, interval s, level 1-4, E|N, subordinates
        if not f[0].strip("0"):
            return None
        encrypted = f[6] == "E"
        level = int(f[5])
        bits = (RDSS_BITS_ENCRYPTED if encrypted else RDSS_BITS)[level]
        return Card(user_id(f[0]), "4.0", level, encrypted, bits, _interval(f[4]))

    def outgoing(self, dest: str, payload: bytes) -> Sentence:
        # category 1 normal, mode 2 mixed
        return Sentence("CCTXA", (dest, "1", "2", MIXED_MARK + payload.hex().upper()))

    def feedback(self, f: tuple[str, ...]) -> _Feedback | None:
        return _feedback(f, "TXA")

    def message(self, f: tuple[str, ...]) -> tuple[str, bytes]:
        # info type, sender, form, hhmm, content; mixed (form 2) content starts with A4
        content = f[4]
        if f[2] == "2":
            if content[:2].upper() != MIXED_MARK:
                raise ValueError("mixed content without A4")
            content = content[2:]
        return user_id(f[1]), _unhex(content)

    def signal(self, f: tuple[str, ...]) -> int:
        return max((int(p) for p in f[2:] if p), default=0)


class _Regional:
    """The 5.0 (BDS-3 regional) sentences."""

    protocol: Version = "5.0"
    query = Sentence("CCICR", ("0", "00"))
    names = ("BDICP", "BDFKI", "BDTCI", "BDPWI")

    def __init__(self, layout: IcpLayout, bits: Mapping[int, int], frequency: int) -> None:
        self.layout = layout
        self.bits = bits
        self.frequency = frequency

    def card(self, f: tuple[str, ...]) -> Card | None:
        at = self.layout
        if not f[at.user_id].strip("0"):
            return None
        level = int(f[at.level])
        return Card(
            user_id(f[at.user_id]),
            "5.0",
            level,
            f[at.encrypted] == "E",
            min(self.bits[level], REGIONAL_MAX_BITS),
            _interval(f[at.interval]),
        )

    def outgoing(self, dest: str, payload: bytes) -> Sentence:
        # frequency, ack 1 (none: the centre acknowledges by item), coding 3 mixed, repeat 0
        fields = (dest, str(self.frequency), "1", "3", payload.hex().upper(), "0")
        return Sentence("CCTCQ", fields)

    def feedback(self, f: tuple[str, ...]) -> _Feedback | None:
        return _feedback(f, "TCQ")

    def message(self, f: tuple[str, ...]) -> tuple[str, bytes]:
        # sender, receiver, frequency, hhmmss, coding, flag, hex data
        return user_id(f[0]), _unhex(f[6])

    def signal(self, f: tuple[str, ...]) -> int:
        at = 2 + 3 * int(f[1])  # skip the 4.0-beam groups
        groups = int(f[at])
        return max((int(f[at + 2 + 3 * i]) for i in range(groups)), default=0)


def _interval(text: str) -> float:
    value = int(text)
    if value < 0:
        raise ValueError(f"negative service interval {value}")
    return float(value)


def _simulator(protocol: Version) -> SerialBackend:
    # Loaded only when KIT_BACKEND=sim asks for it: a driver import must not pull in sim/.
    from sim.beidou import SimulatedTerminal

    return SimulatedTerminal(protocol)


class BeidouTerminal(Lifecycle):
    """A Beidou short-message terminal on a serial line.

    ``backend`` is a device path, a :class:`~drivers.backend.SerialBackend` (such as the
    simulator), or ``None`` for ``KIT_BACKEND``'s choice (``/dev/ttyUSB0``, or a new
    simulated terminal). ``clock`` times the service interval; tests pass the
    simulator's accelerated clock.
    """

    def __init__(
        self,
        backend: SerialBackend | str | None = None,
        *,
        protocol: Version = "4.0",
        clock: Callable[[], float] = time.monotonic,
        feedback_timeout_s: float = 10.0,
        card_timeout_s: float = 3.0,
        start_timeout_s: float = 5.0,
        icp_layout: IcpLayout = IcpLayout(),
        regional_bits: Mapping[int, int] = REGIONAL_BITS,
        frequency: int = 2,
        backoff: Backoff = DEFAULT_BACKOFF,
        name: str = "beidou",
    ) -> None:
        if protocol not in ("4.0", "5.0"):
            raise BadSetting(
                f"北斗协议版本不受支持：{protocol!r}（应为 4.0 或 5.0）",
                f"unsupported Beidou protocol {protocol!r} (4.0 or 5.0)",
            )
        self.backend, self._owned = serial_backend(
            backend, device=DEFAULT_DEVICE, sim=lambda: _simulator(protocol)
        )
        self.name = name
        self.on_message: Callable[[str, bytes], None] | None = None
        self.on_state: Callable[[bool], None] | None = None  # online changed
        self._dialect = (
            _Rdss() if protocol == "4.0" else _Regional(icp_layout, regional_bits, frequency)
        )
        self._clock = clock
        self._feedback_timeout = feedback_timeout_s
        self._card_timeout = card_timeout_s
        self._start_timeout = start_timeout_s
        self._backoff = backoff
        self._parser = StreamParser()
        self._dropped: Counter[str] = Counter()
        self._port: SerialPort | None = None
        self._card: Card | None = None
        self._signal: int | None = None
        self._next_send_at = -math.inf
        self._feedback: asyncio.Future[_Feedback] | None = None
        self._send_lock = asyncio.Lock()
        self._card_wanted = asyncio.Event()
        self._card_seen = asyncio.Event()
        self._up = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    # --- what the rest of the kit reads ------------------------------------------------

    @property
    def online(self) -> bool:
        """Able to send: device open, card read, and a beam unless the terminal says none."""
        return self._not_ready() is None

    @property
    def card(self) -> Card | None:
        return None if self._card is None else replace(self._card, signal=self._signal)

    @property
    def mtu(self) -> int:
        """Payload bytes per message; 0 until a card has been read."""
        return 0 if self._card is None else self._card.mtu

    @property
    def min_interval(self) -> float:
        """Seconds between sends, from the card; infinite until a card has been read."""
        return math.inf if self._card is None else self._card.min_interval

    @property
    def next_send_at(self) -> float:
        """When (on ``clock``) the service interval allows the next send."""
        return self._next_send_at

    @property
    def dropped(self) -> Counter[str]:
        """What was received and thrown away, by reason (parser and sentence level)."""
        return self._parser.dropped + self._dropped

    @property
    def reconnects(self) -> int:
        return 0 if self._port is None else max(0, self._port.opens - 1)

    def state(self) -> DeviceState:
        """For ``kit status``: online, or why not; the card's figures when read."""
        card = self.card
        why = self._not_ready()
        detail: dict[str, str | int | float | bool | None] = {
            "device": None if self._port is None else self._port.path,
            "protocol": self._dialect.protocol,
            "dropped": sum(self.dropped.values()),
            "reconnects": self.reconnects,
        }
        if card is not None:
            detail |= {
                "user_id": card.user_id,
                "mtu": card.mtu,
                "interval_s": card.min_interval,
                "level": card.comm_level,
                "signal": card.signal,
            }
        if why is None and card is not None:
            zh = f"卡号 {card.user_id}，每条 {card.mtu} 字节，每 {card.min_interval:g} 秒一条"
            en = f"card {card.user_id}, {card.mtu} B per message, one per {card.min_interval:g} s"
            return DeviceState(self.name, "beidou", True, zh, en, detail)
        zh, en = (why.zh, why.en) if why is not None else ("未就绪", "not ready")
        return DeviceState(self.name, "beidou", False, zh, en, detail)

    # --- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the device and read the card; returns once online or after ``start_timeout_s``.

        Not being online is not an error here: the kit boots without its terminal, and
        the driver keeps reconnecting and asking for the card.
        """
        if self._owned:
            await self.backend.start()
        self._port = SerialPort(
            self.backend.path, self._on_data, on_state=self._on_port, backoff=self._backoff
        )
        await self._port.start()
        self._keeper = asyncio.create_task(self._keep_card(), name="beidou card")
        if not await self.wait_online(self._start_timeout):
            log.warning("%s", self._not_ready())

    async def wait_online(self, timeout: float) -> bool:
        return await wait_set(self._up, timeout)

    async def close(self) -> None:
        self._up.clear()  # a deliberate close is not an outage worth a warning
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._port is not None:
            await self._port.close()
        if self._owned:
            await self.backend.close()

    # --- sending ---------------------------------------------------------------------

    async def send(self, dest_id: str, payload: bytes) -> None:
        """Send one message and wait for the terminal's feedback.

        Raises :class:`TooSoon` (without touching the wire when the driver already knows),
        :class:`Refused`, :class:`NoFeedback`, :class:`TerminalOffline` or :class:`BadMessage`.
        """
        dest = self._destination(dest_id)
        async with self._send_lock:
            card, port = self._ready()
            if not payload or len(payload) > card.mtu:
                raise BadMessage(
                    f"北斗报文长度 {len(payload)} 字节，本卡每条可载 1–{card.mtu} 字节",
                    f"Beidou message of {len(payload)} bytes; this card carries 1-{card.mtu}",
                )
            now = self._clock()
            if now < self._next_send_at:
                raise TooSoon(self._next_send_at - now)
            waiter = self._feedback = asyncio.get_running_loop().create_future()
            try:
                await port.write(self._dialect.outgoing(dest, payload).encode())
                fb = await asyncio.wait_for(waiter, self._feedback_timeout)
            except PortOffline as exc:
                raise self._offline("串口设备断开", "the device went away") from exc
            except TimeoutError:
                self._hold(card.min_interval)  # it may have gone out: never risk an early send
                self._lose_card()  # a silent terminal has to answer a card query again
                raise NoFeedback(
                    f"北斗终端 {self._feedback_timeout:g} 秒内无回执",
                    f"no feedback from the Beidou terminal within {self._feedback_timeout:g} s",
                ) from None
            except TerminalOffline:
                self._hold(card.min_interval)
                raise
            finally:
                self._feedback = None
        if fb.ok:
            self._hold(max(card.min_interval, fb.wait_s or 0.0))
            return
        if fb.too_soon:
            wait = fb.wait_s or card.min_interval  # "too soon, wait 0" cannot be right
            self._hold(wait)
            raise TooSoon(wait)
        raise Refused(f"北斗终端拒绝发送：{fb.zh}", f"the Beidou terminal refused to send: {fb.en}")

    def _destination(self, dest_id: str) -> str:
        try:
            dest = user_id(dest_id)
        except (ValueError, TypeError):
            dest = ""
        if not dest or (self._dialect.protocol == "4.0" and len(dest) > 7):
            digits = "7" if self._dialect.protocol == "4.0" else "11"
            raise BadMessage(
                f"北斗目标号码无效：{dest_id!r}（应为至多 {digits} 位数字）",
                f"invalid Beidou destination {dest_id!r} (at most {digits} digits)",
            )
        return dest

    def _hold(self, seconds: float) -> None:
        self._next_send_at = max(self._next_send_at, self._clock() + seconds)

    def _offline(self, zh: str, en: str) -> TerminalOffline:
        return TerminalOffline(f"北斗终端离线：{zh}", f"Beidou terminal offline: {en}")

    def _ready(self) -> tuple[Card, SerialPort]:
        """The card and the port to send with, or :class:`TerminalOffline` saying what lacks."""
        card, port = self._card, self._port
        if port is None:
            raise self._offline("驱动未启动", "driver not started")
        if not port.online:
            raise self._offline("串口设备未连接", f"device not connected ({port.path})")
        if card is None:
            raise self._offline(
                "未读到北斗卡信息（无卡或终端无响应）",
                "no card information (no card, or the terminal is not answering)",
            )
        if self._signal == 0:
            raise self._offline("无卫星信号", "no satellite signal")
        return card, port

    def _not_ready(self) -> TerminalOffline | None:
        try:
            self._ready()
        except TerminalOffline as why:
            return why
        return None

    # --- receiving -------------------------------------------------------------------

    def _on_port(self, up: bool) -> None:
        self._lose_card()
        if not up and self._feedback is not None and not self._feedback.done():
            self._feedback.set_exception(self._offline("串口设备断开", "the device went away"))

    def _lose_card(self) -> None:
        self._card = self._signal = None
        self._card_wanted.set()
        self._refresh()

    def _refresh(self) -> None:
        if self.online and not self._up.is_set():
            card = self._card
            assert card is not None
            log.info(
                "Beidou terminal online: user %s, %d B per message, one per %g s",
                card.user_id,
                card.mtu,
                card.min_interval,
            )
            self._up.set()
            self._notify(True)
        elif not self.online and self._up.is_set():
            log.warning("%s", self._not_ready())
            self._up.clear()
            self._notify(False)

    def _notify(self, online: bool) -> None:
        if self.on_state is not None:
            try:
                self.on_state(online)
            except Exception:  # a listener's bug must not stop the driver
                log.exception("Beidou on_state listener failed")

    def _on_data(self, data: bytes) -> None:
        for sentence in self._parser.feed(data):
            self._dispatch(sentence)

    def _dispatch(self, s: Sentence) -> None:
        d = self._dialect
        card_name, feedback_name, message_name, signal_name = d.names
        try:
            if s.name == card_name:
                card = d.card(s.fields)
                if card is None:
                    self._lose_card()
                self._card = card
                self._card_seen.set()
            elif s.name == feedback_name:
                self._on_feedback(d.feedback(s.fields))
            elif s.name == message_name:
                sender, payload = d.message(s.fields)
                self._deliver(sender, payload)
            elif s.name == signal_name:
                self._signal = d.signal(s.fields)
            else:
                self._dropped["unknown"] += 1
        except (ValueError, LookupError):
            self._dropped["bad_fields"] += 1
        self._refresh()

    def _on_feedback(self, fb: _Feedback | None) -> None:
        if fb is None:
            self._dropped["other_feedback"] += 1
            return
        if self._feedback is None or self._feedback.done():
            self._dropped["unexpected_feedback"] += 1
            return
        self._feedback.set_result(fb)
        if fb.no_card:
            self._lose_card()

    def _deliver(self, sender: str, payload: bytes) -> None:
        if self.on_message is None:
            self._dropped["no_listener"] += 1
            return
        try:
            self.on_message(sender, payload)
        except Exception:  # a listener's bug must not cost the next message
            log.exception("Beidou on_message listener failed")

    async def _keep_card(self) -> None:
        """Ask for the card whenever it is not known and the device is open."""
        while True:
            await self._card_wanted.wait()
            self._card_wanted.clear()
            try:
                await self._read_card()
            except Exception:  # this task must outlive any fault; the next loss retries
                log.exception("Beidou card query failed")

    async def _read_card(self) -> None:
        quiet = False
        while self._port is not None and self._port.online and self._card is None:
            self._card_seen.clear()
            try:
                await self._port.write(self._dialect.query.encode())
            except PortOffline:
                return  # the port's own reconnect brings us back here
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._card_seen.wait(), self._card_timeout)
            if self._card is None:
                if not quiet:
                    log.warning("Beidou terminal gave no card information; asking again")
                    quiet = True
                if self._card_seen.is_set():  # it answered "no card": do not hammer it
                    await asyncio.sleep(self._card_timeout)
