"""Tiantong-1 (天通一号) satellite terminal: registration, signal, SMS, and the data service.

What the driver reads from PROTOCOLS.md, and how it reads what is not settled there:

- The module speaks 3GPP 27.007/27.005 (``AT+CPIN?``, ``AT+CREG``, ``AT+CSQ``, ``AT+CMGS``,
  ``AT+CMGR``/``CMGL``/``CMGD``, ``AT+CNMI=2,1,0,0,0``, URCs ``+CMTI`` and ``+CREG``).
  Its power-up banner is assumed to be ``RDY`` (see :mod:`drivers.atmodem`).
- SMS lengths are 3GPP's (unconfirmed for Tiantong): 160 GSM-7 / 70 UCS-2 characters or
  140 bytes per single message, 153 / 67 / 134 per segment of a concatenated one.
- PDU mode is the default. Text mode is supported with ``AT+CSCS="UCS2"`` and
  ``AT+CSDH=1`` (so Chinese text and the concatenation header survive); there, text
  needing more than one segment goes as UCS-2 segments, since 7-bit text with a header
  has no unambiguous length in text mode.
- Data: PPP over ``ATD*99#`` (``data_service="ppp"``), or a router terminal with its own
  Ethernet/Wi-Fi IP link (``"router"``): unconfirmed which a given terminal is, so both.
- CSQ to dBm as 27.007 8.5: ``-113 + 2 × CSQ`` for 0–31, 99 unknown.

Received segments stay in the SIM's store until the whole message has reached
``on_sms``: a kit that restarts mid-message reads them again (``AT+CMGL`` at start-up).
Parts of messages that never complete are deleted when the reassembler gives them up.
The CSQ/CREG poll runs every ``poll_interval_s`` (10 s at the fastest, for the battery);
registration changes arrive sooner as ``+CREG`` URCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Literal

from drivers import smspdu
from drivers.atmodem import (
    AtChannel,
    AtError,
    AtTimeout,
    ChannelDown,
    InDataMode,
    fields,
)
from drivers.backend import SerialBackend, serial_backend
from drivers.device import DeviceState, Lifecycle, wait_set
from drivers.serialio import DEFAULT_BACKOFF, Backoff
from drivers.smspdu import Alphabet, BadPdu, Segment
from edge.errors import KitError

log = logging.getLogger(__name__)

SmsMode = Literal["pdu", "text"]
DataService = Literal["ppp", "router"]
DEFAULT_DEVICE = "/dev/ttyUSB0"
MIN_POLL_S = 10.0  # CSQ/CREG polling wakes the module: no faster, for the battery
_APN = re.compile(r"[A-Za-z0-9.\-]{0,63}")
_SCTS = re.compile(r"(\d\d)/(\d\d)/(\d\d),(\d\d):(\d\d):(\d\d)([+-]\d\d)")
_FAILURES = (AtError, AtTimeout, ChannelDown, InDataMode)


class BadSetting(KitError, ValueError):
    """A driver setting outside what the driver supports."""


class BadMessage(KitError, ValueError):
    """A message that cannot be sent: empty."""


class ModemOffline(KitError, ConnectionError):
    """The terminal cannot send now: unplugged, no SIM, not set up, or not registered."""


class ModemBusy(KitError, RuntimeError):
    """The terminal is in a data call: no SMS until it hangs up."""


class SendFailed(KitError, RuntimeError):
    """The terminal did not send a segment: refused, no answer, or restarted meanwhile."""

    def __init__(self, segment: int, total: int, cause: KitError) -> None:
        self.segment, self.total = segment, total
        super().__init__(
            f"短信未发出（第 {segment}/{total} 段）：{cause.zh}",
            f"SMS not sent (segment {segment} of {total}): {cause.en}",
        )


class DataCallFailed(KitError, ConnectionError):
    """The data call could not be set up or ended."""


class Registration(Enum):
    """Network registration as ``+CREG`` reports it."""

    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5


class SimStatus(Enum):
    UNKNOWN = "unknown"
    READY = "ready"
    ABSENT = "absent"
    LOCKED = "locked"  # PIN or PUK needed: the kit does not enter PINs


_REG_REASONS = {
    Registration.NOT_REGISTERED: ("未注册到网络，也未在搜索", "not registered and not searching"),
    Registration.SEARCHING: ("正在搜索网络（无信号？）", "searching for the network (no signal?)"),
    Registration.DENIED: ("网络拒绝注册", "registration denied by the network"),
    Registration.UNKNOWN: ("注册状态未知", "registration state unknown"),
}

OnSms = Callable[[str, str | bytes, datetime], None]


def signal_dbm(csq: int | None) -> int | None:
    """Received signal in dBm for a CSQ value (0 means -113 or less, 31 means -51 or more)."""
    if csq is None or not 0 <= csq <= 31:
        return None
    return -113 + 2 * csq


def _ucs2(text: str) -> str:
    return text.encode("utf-16-be").hex().upper()


def _from_ucs2(text: str) -> str:
    try:
        return smspdu.from_hex(text).decode("utf-16-be")
    except UnicodeDecodeError:
        raise smspdu.bad("UCS-2 文本无效", "invalid UCS-2 text") from None


def _text_timestamp(text: str) -> datetime:
    """A text-mode ``"yy/MM/dd,hh:mm:ss±zz"`` (zone in quarter hours)."""
    match = _SCTS.fullmatch(text)
    if match is None:
        raise smspdu.bad(f"时间戳 {text!r}", f"timestamp {text!r}")
    yy, mo, dd, hh, mi, ss, zone = match.groups()
    tz = timezone(timedelta(minutes=15 * int(zone)))
    try:
        return datetime(2000 + int(yy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=tz)
    except ValueError as exc:
        raise smspdu.bad(f"时间戳无效（{exc}）", f"invalid timestamp ({exc})") from None


def _text_message(header: str, data: str) -> tuple[str, datetime, Segment]:
    """Sender, time and segment of a text-mode ``+CMGR`` (``AT+CSDH=1``, ``AT+CSCS="UCS2"``)."""
    f = fields(header.split(":", 1)[1])
    if len(f) < 11 or not (f[5].isdigit() and f[7].isdigit() and f[10].isdigit()):
        raise smspdu.bad(f"文本模式消息头 {header!r}", f"text-mode header {header!r}")
    _stat, oa, _alpha, scts, _tooa, fo, _pid, dcs, _sca, _tosca, length = f[:11]
    alphabet = smspdu.alphabet_of(int(dcs))
    udhi = bool(int(fo) & 0x40)
    if udhi or alphabet is not Alphabet.GSM7:
        segment = smspdu.read_user_data(alphabet, udhi, int(length), smspdu.from_hex(data))
    else:
        segment = Segment(_from_ucs2(data), alphabet)
    return _from_ucs2(oa), _text_timestamp(scts), segment


def _simulator() -> SerialBackend:
    # Loaded only when KIT_BACKEND=sim asks for it: a driver import must not pull in sim/.
    from sim.tiantong import SimulatedModem

    return SimulatedModem()


class TiantongModem(Lifecycle):
    """A Tiantong-1 terminal on a serial line: a :class:`~drivers.device.Device`.

    ``backend`` is a device path, a :class:`~drivers.backend.SerialBackend` (such as the
    simulator), or ``None`` for ``KIT_BACKEND``'s choice (``/dev/ttyUSB0`` or a new
    simulated modem). ``on_sms(sender, payload, sent_at)`` gets each whole incoming
    message: ``str`` for text, ``bytes`` for 8-bit data.
    """

    kind = "tiantong"

    def __init__(
        self,
        backend: SerialBackend | str | None = None,
        *,
        name: str = "tiantong",
        sms_mode: SmsMode = "pdu",
        data_service: DataService = "ppp",
        apn: str = "",
        cid: int = 1,
        poll_interval_s: float = 20.0,
        command_timeout_s: float = 5.0,
        sms_timeout_s: float = 60.0,
        dial_timeout_s: float = 60.0,
        start_timeout_s: float = 10.0,
        guard_s: float = 1.0,
        max_pending: int = 16,
        reassembly_timeout_s: float = 6 * 3600,
        baudrate: int = 115200,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        _check_settings(sms_mode, data_service, apn, cid, poll_interval_s)
        self.name = name
        self.sms_mode: SmsMode = sms_mode
        self.data_service: DataService = data_service
        self.apn = apn
        self.cid = cid
        self.backend, self._owned = serial_backend(backend, device=DEFAULT_DEVICE, sim=_simulator)
        self.on_sms: OnSms | None = None
        self.sent = 0  # messages sent, all segments accepted
        self.received = 0  # whole messages handed to on_sms
        self.restarts = 0  # times the module announced a restart
        self._poll_s = poll_interval_s
        self._timeout = command_timeout_s
        self._sms_timeout = sms_timeout_s
        self._dial_timeout = dial_timeout_s
        self._start_timeout = start_timeout_s
        self._guard_s = guard_s
        self._baudrate = baudrate
        self._backoff = backoff
        self._reassembler = smspdu.Reassembler[int](
            max_pending=max_pending, max_age_s=reassembly_timeout_s
        )
        self._dropped: Counter[str] = Counter()
        self._channel: AtChannel | None = None
        self._sim = SimStatus.UNKNOWN
        self._reg: Registration | None = None
        self._csq: int | None = None
        self._cell: tuple[str, str] | None = None
        self._set_up = False
        self._setup_needed = True
        self._next_poll = 0.0
        self._unread: deque[int] = deque(maxlen=256)  # store indexes to read
        self._ref = random.randrange(256)
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # --- what the rest of the kit reads ------------------------------------------------

    @property
    def online(self) -> bool:
        """Able to send: device open, set up, SIM ready, registered with the network."""
        return self._not_ready() is None

    @property
    def registration(self) -> Registration | None:
        return self._reg

    @property
    def sim(self) -> SimStatus:
        return self._sim

    @property
    def csq(self) -> int | None:
        """Last CSQ (0-31, 99 unknown); None before the first answer."""
        return self._csq

    @property
    def in_call(self) -> bool:
        return self._channel is not None and self._channel.data_mode

    @property
    def dropped(self) -> Counter[str]:
        """What was received and thrown away, by reason (line, message and reassembly level)."""
        channel = Counter() if self._channel is None else self._channel.dropped
        return channel + self._dropped + self._reassembler.dropped

    @property
    def reconnects(self) -> int:
        return 0 if self._channel is None else max(0, self._channel.port.opens - 1)

    def state(self) -> DeviceState:
        why = self._not_ready()
        dbm = signal_dbm(self._csq)
        if why is None:
            signal = f"{dbm} dBm (CSQ {self._csq})" if dbm is not None else "CSQ ?"
            zh, en = f"天通已注册，信号 {signal}", f"Tiantong registered, signal {signal}"
        else:
            zh, en = why.zh, why.en
        return DeviceState(
            self.name,
            self.kind,
            why is None,
            zh,
            en,
            {
                "sim": self._sim.value,
                "registration": None if self._reg is None else self._reg.name.lower(),
                "csq": self._csq,
                "signal_dbm": dbm,
                "lac": None if self._cell is None else self._cell[0],
                "cell": None if self._cell is None else self._cell[1],
                "sms_mode": self.sms_mode,
                "data_service": self.data_service,
                "in_call": self.in_call,
                "sent": self.sent,
                "received": self.received,
                "pending_messages": self._reassembler.pending,
                "dropped": sum(self.dropped.values()),
                "reconnects": self.reconnects,
                "restarts": self.restarts,
            },
        )

    # --- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the device and set the module up; returns once online or after ``start_timeout_s``.

        Not being online is not an error here: the kit boots without its terminal, and
        the driver keeps reconnecting and setting the module up.
        """
        if self._owned:
            await self.backend.start()
        self._channel = AtChannel(
            self.backend.path,
            on_urc=self._on_urc,
            on_boot=self._on_boot,
            on_state=self._on_port,
            baudrate=self._baudrate,
            backoff=self._backoff,
        )
        await self._channel.start()
        self._worker = asyncio.create_task(self._keep(), name=f"{self.name} modem")
        if not await self.wait_online(self._start_timeout):
            log.warning("%s", self._not_ready())

    async def wait_online(self, timeout: float) -> bool:
        return await wait_set(self._up, timeout)

    async def close(self) -> None:
        self._up.clear()  # a deliberate close is not an outage worth a warning
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._channel is not None:
            await self._channel.close()
        if self._owned:
            await self.backend.close()

    async def refresh(self) -> None:
        """Ask for registration and signal now (the status page's "refresh", or a test)."""
        channel = self._channel
        why = self._not_connected()
        if why is not None or channel is None:
            raise why or self._offline("驱动未启动", "driver not started")
        await self._poll(channel)

    # --- sending ---------------------------------------------------------------------

    async def send_sms(self, number: str, payload: str | bytes) -> None:
        """Send ``payload`` to ``number`` (``+86…`` or national), concatenated if it needs to be.

        Raises :class:`BadMessage`, :class:`~drivers.smspdu.BadAddress`,
        :class:`~drivers.smspdu.MessageTooLong`, :class:`ModemOffline`, :class:`ModemBusy`
        or :class:`SendFailed` (a retry sends the whole message again).
        """
        if not payload:
            raise BadMessage("短信内容为空", "empty SMS")
        smspdu.encode_address(number)
        parts = self._segments(payload)
        channel = self._ready_channel()
        for i, segment in enumerate(parts, 1):
            try:
                if self.sms_mode == "pdu":
                    await self._send_pdu(channel, number, segment)
                else:
                    await self._send_text(channel, number, segment)
            except _FAILURES as exc:
                raise SendFailed(i, len(parts), exc) from exc
        self.sent += 1

    def _segments(self, payload: str | bytes) -> list[Segment]:
        self._ref = (self._ref + 1) % 256
        parts = smspdu.segments(payload, self._ref)
        if self.sms_mode == "text" and isinstance(payload, str) and len(parts) > 1:
            parts = smspdu.segments(payload, self._ref, alphabet=Alphabet.UCS2)
        return parts

    async def _send_pdu(self, channel: AtChannel, number: str, segment: Segment) -> None:
        tpdu = smspdu.encode_submit(number, segment)
        body = smspdu.add_smsc(tpdu).hex().upper()
        await channel.command(
            f"AT+CMGS={len(tpdu)}", expect="+CMGS:", body=body, timeout=self._sms_timeout
        )

    async def _send_text(self, channel: AtChannel, number: str, segment: Segment) -> None:
        udhi, _udl, ud = smspdu.user_data(segment)
        first = 0x11 | (0x40 if udhi else 0)
        await channel.command(f"AT+CSMP={first},167,0,{segment.alphabet.value}")
        if segment.alphabet is Alphabet.GSM7 and not udhi:
            assert isinstance(segment.payload, str)
            body = _ucs2(segment.payload)
        else:
            body = ud.hex().upper()
        toa = smspdu.TOA_INTERNATIONAL if number.startswith("+") else smspdu.TOA_UNKNOWN
        await channel.command(
            f'AT+CMGS="{_ucs2(number)}",{toa}',
            expect="+CMGS:",
            body=body,
            timeout=self._sms_timeout,
        )

    # --- the data service --------------------------------------------------------------

    async def dial(self) -> None:
        """Start the data call: ``AT+CGDCONT`` with the APN, ``ATD*99#``, until ``CONNECT``.

        The line then carries the call (PPP) until :meth:`hangup`. A router terminal
        has no dialling: its IP link is its own, so this does nothing there.
        Raises :class:`ModemOffline`, :class:`ModemBusy` or :class:`DataCallFailed`.
        """
        if self.data_service == "router":
            return
        channel = self._ready_channel()
        number = "*99#" if self.cid == 1 else f"*99***{self.cid}#"
        try:
            await channel.command(f'AT+CGDCONT={self.cid},"IP","{self.apn}"')
            reply = await channel.command(f"ATD{number}", timeout=self._dial_timeout)
        except _FAILURES as exc:
            raise DataCallFailed(
                f"天通数据呼叫未接通：{exc.zh}", f"Tiantong data call not connected: {exc.en}"
            ) from exc
        log.info("Tiantong data call up (%s)", reply.final)

    async def hangup(self) -> None:
        """End the data call: ``+++`` between guard times back to commands, then ``ATH``."""
        channel = self._channel
        if self.data_service == "router" or channel is None:
            return
        try:
            await channel.escape(self._guard_s)
            await channel.command("ATH")
        except _FAILURES as exc:
            raise DataCallFailed(
                f"天通数据呼叫未能挂断：{exc.zh}", f"Tiantong data call not ended: {exc.en}"
            ) from exc
        finally:
            self._wake.set()
        log.info("Tiantong data call ended")

    # --- readiness -------------------------------------------------------------------

    def _offline(self, zh: str, en: str) -> ModemOffline:
        return ModemOffline(f"天通终端离线：{zh}", f"Tiantong terminal offline: {en}")

    def _ready_channel(self) -> AtChannel:
        """The channel to send with, or :class:`ModemOffline`/:class:`ModemBusy` saying why not."""
        if (why := self._not_ready()) is not None:
            raise why
        channel = self._channel
        assert channel is not None
        if channel.data_mode:
            raise ModemBusy(
                "天通终端正在数据通话，请先挂断",
                "the Tiantong terminal is in a data call: hang up first",
            )
        return channel

    def _not_connected(self) -> ModemOffline | None:
        # Before start() a simulated backend has no device path yet: say so, do not ask it.
        if self._channel is None:
            return self._offline("驱动未启动", "driver not started")
        if not self._channel.online:
            return self._offline("串口设备未连接", f"device not connected ({self.backend.path})")
        return None

    def _not_ready(self) -> ModemOffline | None:
        why = self._not_connected()
        if why is not None:
            return why
        if self._sim is SimStatus.ABSENT:
            return self._offline("未检测到 SIM 卡", "no SIM card")
        if self._sim is SimStatus.LOCKED:
            return self._offline(
                "SIM 卡已锁（需要 PIN 码，本设备不输入 PIN）",
                "the SIM is locked (PIN needed; the kit does not enter PINs)",
            )
        if not self._set_up:
            return self._offline("终端尚未就绪（正在初始化）", "the module is not set up yet")
        if self._reg not in (Registration.HOME, Registration.ROAMING):
            zh, en = _REG_REASONS[self._reg or Registration.UNKNOWN]
            return self._offline(
                f"未注册到天通网络：{zh}", f"not registered with the network: {en}"
            )
        return None

    def _refresh(self) -> None:
        if self.online and not self._up.is_set():
            log.info("Tiantong terminal online (CSQ %s)", self._csq)
            self._up.set()
        elif not self.online and self._up.is_set():
            log.warning("%s", self._not_ready())
            self._up.clear()

    # --- events from the channel -----------------------------------------------------

    def _on_port(self, up: bool) -> None:
        self._lose_setup()

    def _on_boot(self) -> None:
        self.restarts += 1
        self._lose_setup()

    def _lose_setup(self) -> None:
        self._set_up, self._setup_needed = False, True
        self._reg = self._csq = self._cell = None
        self._wake.set()
        self._refresh()

    def _on_urc(self, line: str) -> None:
        try:
            if line.startswith("+CMTI:"):
                _memory, index = fields(line[6:])
                self._queue_read(int(index))
            elif line.startswith("+CREG:"):
                self._registered(fields(line[6:]))
            elif line == "NO CARRIER":
                log.info("Tiantong data call ended by the network")
                self._wake.set()
            else:
                self._dropped["other_urc"] += 1
        except ValueError:
            self._dropped["bad_urc"] += 1
        self._refresh()

    def _registered(self, values: list[str]) -> None:
        """``stat[,lac,ci[,…]]`` from ``+CREG`` (the URC, or the reply without its ``n``)."""
        self._reg = Registration(int(values[0]))
        self._cell = (values[1], values[2]) if len(values) >= 3 else None

    def _queue_read(self, index: int) -> None:
        if index not in self._unread:
            self._unread.append(index)
        self._wake.set()

    # --- the worker: set-up, polls, incoming messages ----------------------------------

    async def _keep(self) -> None:
        """Set the module up whenever needed, read what arrives, poll; never dies."""
        retry = self._backoff.first_s
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                await self._step()
                retry = self._backoff.first_s
                delay = max(0.0, self._next_poll - loop.time())
            except _FAILURES as exc:
                log.warning("Tiantong terminal: %s", exc)
                if isinstance(exc, AtTimeout | ChannelDown):
                    self._lose_setup()
                delay, retry = retry, min(retry * 2, self._poll_s)
            except Exception:  # this task must outlive any fault
                log.exception("Tiantong worker failed")
                delay, retry = retry, min(retry * 2, self._poll_s)
            self._refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _step(self) -> None:
        channel = self._channel
        assert channel is not None
        now = asyncio.get_running_loop().time()
        if not channel.online or channel.data_mode:
            self._next_poll = now + self._poll_s  # woken by the port or the call's end
            return
        if self._setup_needed:
            await self._setup(channel)
            if self._setup_needed:  # no SIM, or a locked one: look again at the next poll
                return
        while self._unread:  # one that fails is read again after the next set-up's listing
            await self._read(channel, self._unread.popleft())
        if now >= self._next_poll:
            await self._poll(channel)
        await self._discard(channel)

    async def _setup(self, channel: AtChannel) -> None:
        self._set_up = False
        self._next_poll = asyncio.get_running_loop().time() + self._poll_s
        await self._sync(channel)
        await channel.command("ATE0", timeout=self._timeout)
        await channel.command("AT+CMEE=1", timeout=self._timeout)
        self._sim = await self._read_sim(channel)
        if self._sim is not SimStatus.READY:
            log.warning("%s", self._not_ready())
            return
        await channel.command("AT+CREG=2", timeout=self._timeout)
        await self._poll(channel)
        if self.sms_mode == "pdu":
            await channel.command("AT+CMGF=0", timeout=self._timeout)
        else:
            for command in ("AT+CMGF=1", 'AT+CSCS="UCS2"', "AT+CSDH=1"):
                await channel.command(command, timeout=self._timeout)
        await channel.command("AT+CNMI=2,1,0,0,0", timeout=self._timeout)
        self._setup_needed, self._set_up = False, True
        self._refresh()
        listing = "AT+CMGL=4" if self.sms_mode == "pdu" else 'AT+CMGL="ALL"'
        reply = await channel.command(listing, expect="+CMGL:", follow=True, timeout=self._timeout)
        for line in reply.lines:
            if line.startswith("+CMGL:"):
                self._queue_read(int(fields(line[6:])[0]))

    async def _sync(self, channel: AtChannel) -> None:
        """``AT`` until the module answers: the first may meet a half-typed line or a boot."""
        for attempt in range(3):
            try:
                await channel.command("AT", timeout=min(1.0, self._timeout))
                return
            except (AtError, AtTimeout):
                if attempt == 2:
                    raise

    async def _read_sim(self, channel: AtChannel) -> SimStatus:
        try:
            reply = await channel.command("AT+CPIN?", expect="+CPIN:", timeout=self._timeout)
        except AtError as exc:
            if exc.code in (10, 13):  # not inserted, failure
                return SimStatus.ABSENT
            raise
        state = reply.lines[-1].split(":", 1)[1].strip() if reply.lines else ""
        if state == "READY":
            return SimStatus.READY
        return SimStatus.LOCKED if state.startswith(("SIM P", "PH-")) else SimStatus.UNKNOWN

    async def _poll(self, channel: AtChannel) -> None:
        self._next_poll = asyncio.get_running_loop().time() + self._poll_s
        creg = await channel.command("AT+CREG?", expect="+CREG:", timeout=self._timeout)
        csq = await channel.command("AT+CSQ", expect="+CSQ:", timeout=self._timeout)
        try:
            for line in creg.lines:  # a +CREG URC may arrive among them: its 2nd value is quoted
                raw = line[6:].split(",")
                reply = len(raw) >= 2 and not raw[1].strip().startswith('"')
                self._registered(fields(line[6:])[1:] if reply else fields(line[6:]))
            if csq.lines:
                self._csq = int(fields(csq.lines[-1][5:])[0])
        except ValueError:
            self._dropped["bad_reply"] += 1
        self._reassembler.expire()
        self._refresh()

    async def _read(self, channel: AtChannel, index: int) -> None:
        """Read, decode and join stored message ``index``; delete what ``on_sms`` took."""
        reply = await channel.command(
            f"AT+CMGR={index}", expect="+CMGR:", follow=True, timeout=self._timeout
        )
        if not reply.lines:
            return  # an empty slot: already deleted
        data = reply.lines[1] if len(reply.lines) > 1 else ""
        try:
            if self.sms_mode == "pdu":
                d = smspdu.decode_deliver(smspdu.split_smsc(smspdu.from_hex(data))[1])
                sender, sent_at, segment = d.sender, d.timestamp, d.segment
            else:
                sender, sent_at, segment = _text_message(reply.lines[0], data)
        except BadPdu as exc:
            log.warning("Tiantong message %d unreadable, deleted (%s): %r", index, exc, data)
            self._dropped["bad_message"] += 1
            await channel.command(f"AT+CMGD={index}", timeout=self._timeout)
            return
        message = self._reassembler.add(sender, sent_at, segment, index)
        if message is not None and self._deliver(message):
            for part in message.parts:
                await channel.command(f"AT+CMGD={part}", timeout=self._timeout)

    def _deliver(self, message: smspdu.Message[int]) -> bool:
        if self.on_sms is None:
            self._dropped["no_listener"] += 1  # it stays stored: read again at the next start
            return False
        try:
            self.on_sms(message.sender, message.payload, message.timestamp)
        except Exception:  # kept on the SIM, read again at the next start
            log.exception("Tiantong on_sms listener failed")
            self._dropped["listener_failed"] += 1
            return False
        self.received += 1
        return True

    async def _discard(self, channel: AtChannel) -> None:
        for index in self._reassembler.take_discarded():
            await channel.command(f"AT+CMGD={index}", timeout=self._timeout)


def _check_settings(
    sms_mode: str, data_service: str, apn: str, cid: int, poll_interval_s: float
) -> None:
    """Every setting checked, all errors reported at once."""
    errors: list[tuple[str, str]] = []
    if sms_mode not in ("pdu", "text"):
        errors.append(
            (f"短信模式 {sms_mode!r}（应为 pdu 或 text）", f"sms_mode {sms_mode!r} (pdu or text)")
        )
    if data_service not in ("ppp", "router"):
        errors.append(
            (
                f"数据业务 {data_service!r}（应为 ppp 或 router）",
                f"data_service {data_service!r} (ppp or router)",
            )
        )
    if not _APN.fullmatch(apn):
        errors.append(
            (
                f"APN {apn!r}（字母、数字、点、连字符，至多 63 个）",
                f"APN {apn!r} (letters, digits, dots, hyphens; at most 63)",
            )
        )
    if not 1 <= cid <= 15:
        errors.append((f"PDP 上下文编号 {cid}（应为 1–15）", f"cid {cid} (1-15)"))
    if not MIN_POLL_S <= poll_interval_s <= 3600:
        errors.append(
            (
                f"轮询间隔 {poll_interval_s:g} 秒（应为 10–3600，省电）",
                f"poll_interval_s {poll_interval_s:g} (10-3600, for the battery)",
            )
        )
    if errors:
        raise BadSetting(
            "天通设置无效：" + "；".join(zh for zh, _ in errors),
            "invalid Tiantong settings: " + "; ".join(en for _, en in errors),
        )
