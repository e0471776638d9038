"""A simulated Tiantong-1 terminal on a real pty: 27.007/27.005 AT commands, SMS, data dial, faults.

The host opens :attr:`SimulatedModem.path` with pyserial exactly as it would open
``/dev/ttyUSB0``. Times are emulated seconds divided by ``speed`` (as in
``sim/beidou.py``). Modems text each other through an :class:`SmsCentre`, which routes
by number after ``delivery_s`` and retries a modem that cannot take a message.

Where real modules differ and no source says what a Tiantong module does, it does this:

- power-up: echo on, ``+CMEE=0``, PDU mode, no new-message indications, then ``RDY``
  (and ``+CPIN: READY`` with a SIM) after ``boot_s``; the SIM's message store survives;
- unknown commands answer ``ERROR``; an empty slot read with ``+CMGR`` answers only ``OK``;
- text mode follows 27.005 literally: with ``+CSCS="UCS2"`` every string (numbers,
  text) is UCS-2 hex; user data in 8-bit or UCS-2, or with a header, is hex octets,
  and for 7-bit text with a header ``<length>`` is TP-UDL in septets; sending 7-bit text
  with a header in text mode is refused (``+CMS ERROR: 305``: its length is ambiguous);
- ``+++`` is recognised only as one write of exactly those three bytes between guard times;
  DTR cannot be seen through a pty, so :meth:`SimulatedModem.drop_call` ends a call instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from drivers import smspdu
from drivers.device import Lifecycle
from drivers.smspdu import Alphabet, BadPdu, Segment, Submit
from sim.pty import PtyNode, write_paced

_BEIJING = timezone(timedelta(hours=8))
_TEXT_STATS = {"REC UNREAD": 0, "REC READ": 1, "STO UNSENT": 2, "STO SENT": 3, "ALL": 4}
_STAT_NAMES = {v: k for k, v in _TEXT_STATS.items()}


class SimState(Enum):
    """The SIM card in the terminal."""

    READY = "READY"
    ABSENT = "absent"
    PIN = "SIM PIN"  # locked: the kit does not enter PINs


class Fault(Enum):
    """Damage :meth:`SimulatedModem.inject` can put on the line towards the host."""

    GARBAGE = "garbage"  # a line of 32 random bytes 0x80-0xFF (line noise)
    TRUNCATED = "truncated"  # the first half of a +CMTI line, then the line end


class Reg(Enum):
    """``+CREG`` registration status."""

    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    ROAMING = 5


@dataclass(frozen=True, slots=True)
class Timing:
    """Delays in emulated seconds."""

    answer_s: float = 0.05  # any command, locally
    submit_s: float = 2.0  # +CMGS: up to the satellite and the SMSC's acknowledgement back
    register_s: float = 3.0  # searching until registered
    boot_s: float = 5.0  # silence after a reboot, before RDY
    connect_s: float = 3.0  # ATD*99# until CONNECT
    guard_s: float = 1.0  # +++ escape guard time (S12)


@dataclass(slots=True)
class Stored:
    """A message in the SIM's store: 0 unread, 1 read; the SMS-DELIVER TPDU."""

    stat: int
    tpdu: bytes


@dataclass(frozen=True, slots=True)
class Routed:
    """A segment the centre handled."""

    sender: str
    dest: str
    segment: Segment


class _Error(Exception):
    """A command's error result: ``+CME ERROR`` or ``+CMS ERROR`` (``ERROR`` with CMEE=0)."""

    def __init__(self, kind: str, code: int) -> None:
        super().__init__(f"+{kind} ERROR: {code}")
        self.kind, self.code = kind, code


def _cme(code: int) -> _Error:
    return _Error("CME", code)


def _cms(code: int) -> _Error:
    return _Error("CMS", code)


def normalise(number: str) -> str:
    """How the centre compares numbers: digits, China's 86 added to 11-digit national numbers."""
    digits = number.lstrip("+")
    return "86" + digits if len(digits) == 11 and not number.startswith("+") else digits


class SmsCentre:
    """The network's short message service centre: routes segments between simulated modems.

    Each segment reaches the modem with its destination number after ``delivery_s``;
    a modem that cannot take it (off, unregistered, store full) is retried every
    ``retry_s`` up to ``attempts`` times. ``routed`` lists what was delivered,
    ``undeliverable`` what was given up.
    """

    def __init__(
        self,
        *,
        address: str = "+8613800100500",
        speed: float = 1.0,
        delivery_s: float = 5.0,
        retry_s: float = 30.0,
        attempts: int = 10,
    ) -> None:
        self.address = address
        self.speed = speed
        self.delivery_s = delivery_s
        self.retry_s = retry_s
        self.attempts = attempts
        self.routed: deque[Routed] = deque(maxlen=1000)
        self.undeliverable: deque[Routed] = deque(maxlen=1000)
        self._modems: dict[str, SimulatedModem] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, modem: SimulatedModem) -> None:
        self._modems[normalise(modem.number)] = modem

    def submit(self, sender: str, submit: Submit) -> None:
        """A segment a modem sent: delivered later, in the background."""
        task = asyncio.create_task(self._deliver(Routed(sender, submit.dest, submit.segment)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def send(self, sender: str, dest: str, payload: str | bytes, *, ref: int = 0) -> None:
        """A phone outside the simulation texts ``dest``."""
        for segment in smspdu.segments(payload, ref):
            self.submit(sender, Submit(dest, segment))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _deliver(self, item: Routed) -> None:
        await asyncio.sleep(self.delivery_s / self.speed)
        tpdu = smspdu.encode_deliver(item.sender, item.segment, datetime.now(_BEIJING))
        for _ in range(self.attempts):
            modem = self._modems.get(normalise(item.dest))
            if modem is not None and modem.accept(tpdu):
                self.routed.append(item)
                return
            await asyncio.sleep(self.retry_s / self.speed)
        self.undeliverable.append(item)


class _Settings:
    """What the terminal forgets when it restarts."""

    def __init__(self) -> None:
        self.echo = True
        self.cmee = 0
        self.cmgf = 0
        self.cscs = "IRA"
        self.csmp = (17, 167, 0, 0)
        self.csdh = 0
        self.cnmi_mt = 0
        self.creg_n = 0


Handler = Callable[..., Awaitable[list[str]]]


class SimulatedModem(Lifecycle):
    """A Tiantong-1 terminal: its SIM, the satellite network, an SMS store, a data call, faults.

    Wire-side controls: :meth:`preload` (messages already in the store),
    :meth:`set_signal` (CSQ; 0 or 99 loses the network), :meth:`inject`, :meth:`reboot`,
    :meth:`unplug` / :meth:`plug` (the USB device goes away and comes back at the same
    ``link``), :meth:`drop_call`; the ``sim`` attribute (takes effect at the next
    registration). ``heard`` lists every command line received, ``sent`` every segment
    submitted; ``store`` is the SIM's message store.
    """

    def __init__(
        self,
        number: str = "+8617700000001",
        *,
        centre: SmsCentre | None = None,
        sim: SimState = SimState.READY,
        csq: int = 20,
        roaming: bool = False,
        storage: int = 20,
        speed: float = 1.0,
        timing: Timing = Timing(),
        link: str | os.PathLike[str] | None = None,
        baudrate: int = 115200,
        seed: int = 0,
    ) -> None:
        self.number = number
        self.centre = SmsCentre(speed=speed) if centre is None else centre
        self.centre.attach(self)
        self.sim = sim
        self.roaming = roaming
        self.storage = storage
        self.speed = speed
        self.timing = timing
        self.link = None if link is None else Path(link)
        self.baudrate = baudrate
        self.store: dict[int, Stored] = {}
        # Bounded: a simulated terminal may run for days under KIT_BACKEND=sim.
        self.heard: deque[str] = deque(maxlen=1000)
        self.sent: deque[Submit] = deque(maxlen=1000)
        self.apn: str | None = None  # the APN of the last data call
        self.calls = 0
        self.data_received = 0
        self.reg = Reg.NOT_REGISTERED
        self._csq = csq
        self._rng = random.Random(seed)
        self._settings = _Settings()
        self._contexts: dict[int, str] = {}
        self._mr = 0
        self._mode = "command"  # or "prompt" (after "> ") or "data"
        self._call_up = False
        self._line = bytearray()
        self._body = bytearray()
        self._body_ready: asyncio.Future[str | None] | None = None
        self._held: deque[str] = deque(maxlen=50)  # URCs kept while the line is busy
        self._master: int | None = None
        self._pty = PtyNode(self.link, "simulated modem")
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._commands: asyncio.Queue[str] = asyncio.Queue(maxsize=16)
        self._tasks: set[asyncio.Task[None]] = set()
        self._booting: set[asyncio.Task[None]] = set()  # cancelled by the next reboot
        self._silent = False
        self._last_rx = 0.0
        self._handlers: list[tuple[re.Pattern[str], Handler]] = [
            (re.compile(pattern, re.IGNORECASE), handler)
            for pattern, handler in (
                (r"AT", self._ok),
                (r"ATE([01])", self._echo),
                (r"AT(?:Z|&F)", self._reset),
                (r"ATI", self._ident),
                (r"AT\+CGMR", self._ident),
                (r"AT\+GSN", self._imei),
                (r"AT\+CIMI", self._imsi),
                (r"AT\+CMEE=([012])", self._cmee),
                (r"AT\+CPIN\?", self._cpin),
                (r"AT\+CREG=([012])", self._creg_set),
                (r"AT\+CREG\?", self._creg),
                (r"AT\+CSQ", self._csq_cmd),
                (r"AT\+COPS\?", self._cops),
                (r"AT\+CMGF=([01])", self._cmgf),
                (r"AT\+CSCS=\"(GSM|IRA|UCS2)\"", self._cscs),
                (r"AT\+CSMP=(\d+),(\d+),(\d+),(\d+)", self._csmp),
                (r"AT\+CSDH=([01])", self._csdh),
                (r"AT\+CNMI=(\d)(?:,(\d))?(?:,\d){0,3}", self._cnmi),
                (r"AT\+CPMS\?", self._cpms),
                (r"AT\+CMGS=(.+)", self._cmgs),
                (r"AT\+CMGR=(\d+)", self._cmgr),
                (r"AT\+CMGL(?:=(.+))?", self._cmgl),
                (r"AT\+CMGD=(\d+)(?:,([0-4]))?", self._cmgd),
                (r"AT\+CGDCONT=(\d+),\"IP\",\"([^\"]*)\"", self._cgdcont),
                (r"ATD\*99(?:\*\*\*(\d+))?#", self._dial),
                (r"ATH0?", self._hangup),
                (r"ATO0?", self._online),
            )
        ]

    # --- life ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What the host opens: the ``link`` if given, else the pty's slave."""
        return self._pty.path

    @property
    def csq(self) -> int:
        return self._csq

    @property
    def in_call(self) -> bool:
        return self._call_up

    async def start(self) -> None:
        await self.plug()

    async def close(self) -> None:
        await self.unplug()

    async def plug(self) -> None:
        """Power and a fresh pty (a new device node), at ``link`` if given; the module boots."""
        if self._master is not None:
            return
        master = self._master = self._pty.open()
        asyncio.get_running_loop().add_reader(master, self._readable)
        self._spawn(self._write_out())
        self._boot(0.0)

    async def unplug(self) -> None:
        """The device goes away (and loses power): the host reads end-of-file, the path goes."""
        tasks = self._tasks | self._booting
        self._tasks, self._booting = set(), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._out = asyncio.Queue()
        self._call_up = False
        self.reg = Reg.NOT_REGISTERED
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            self._master = None
        self._pty.close()

    # --- wire-side controls ------------------------------------------------------------

    def reboot(self) -> None:
        """The module restarts: what it was doing is lost, it is silent for ``boot_s``, then RDY."""
        if self._master is not None:
            self._boot(self.timing.boot_s)

    def set_signal(self, csq: int) -> None:
        """The received signal (CSQ 0-31, 99 unknown): 0 or 99 loses the network and any call."""
        self._csq = csq
        if csq in (0, 99):
            self.drop_call()
            self._set_reg(Reg.SEARCHING)
        elif self.reg not in (Reg.HOME, Reg.ROAMING) and self._master is not None:
            self._spawn(self._register(), self._booting)

    def drop_call(self) -> None:
        """The data call ends from the network side (or the host dropped DTR): ``NO CARRIER``."""
        if not self._call_up:
            return
        self._call_up = False
        self._mode = "command"
        self._say("NO CARRIER")
        self._flush_held()

    def inject(self, fault: Fault | bytes) -> None:
        """Put damage on the line towards the host (or exactly ``fault`` if it is bytes)."""
        if isinstance(fault, bytes):
            self._put(fault)
        elif fault is Fault.GARBAGE:
            self._put(
                b"\r\n" + bytes(self._rng.randrange(0x80, 0x100) for _ in range(32)) + b"\r\n"
            )
        else:
            self._put(b'\r\n+CMTI: "S\r\n')

    def preload(self, sender: str, payload: str | bytes, *, ref: int = 0) -> list[int]:
        """Messages already in the SIM's store (received earlier, unread): their indexes."""
        now = datetime.now(_BEIJING)
        indexes = []
        for segment in smspdu.segments(payload, ref):
            index = self._store(smspdu.encode_deliver(sender, segment, now))
            if index is None:
                raise RuntimeError("simulated SIM store full")
            indexes.append(index)
        return indexes

    def accept(self, tpdu: bytes) -> bool:
        """The network hands over a message; False if the modem cannot take it now."""
        if self._master is None or self._silent or self.reg not in (Reg.HOME, Reg.ROAMING):
            return False
        index = self._store(tpdu)
        if index is None:
            return False
        if self._settings.cnmi_mt == 1:
            self._urc(f'+CMTI: "SM",{index}')
        return True

    # --- the module ----------------------------------------------------------------------

    def _boot(self, after_s: float) -> None:
        for task in self._booting:
            task.cancel()
        self._booting = set()
        self._silent = True
        self._settings = _Settings()
        self._mode, self._call_up = "command", False
        self._line.clear()
        self._held.clear()
        if self._body_ready is not None and not self._body_ready.done():
            self._body_ready.cancel()
        self.reg = Reg.NOT_REGISTERED
        while not self._out.empty():
            self._out.get_nowait()
        while not self._commands.empty():
            self._commands.get_nowait()
        self._spawn(self._power_on(after_s), self._booting)

    async def _power_on(self, after_s: float) -> None:
        await self._sleep(after_s)
        self._silent = False
        self._say("RDY")
        if self.sim is SimState.READY:
            self._say("+CPIN: READY")
        self._spawn(self._serve(), self._booting)
        await self._register()

    async def _register(self) -> None:
        if self.sim is not SimState.READY:
            self._set_reg(Reg.NOT_REGISTERED)
            return
        self._set_reg(Reg.SEARCHING)
        if self._csq in (0, 99):
            return
        await self._sleep(self.timing.register_s)
        if self._csq not in (0, 99):
            self._set_reg(Reg.ROAMING if self.roaming else Reg.HOME)

    def _set_reg(self, reg: Reg) -> None:
        if reg is self.reg:
            return
        self.reg = reg
        if self._settings.creg_n and not self._silent:
            self._urc("+CREG: " + self._creg_fields(location=self._settings.creg_n == 2))

    def _creg_fields(self, *, location: bool) -> str:
        text = str(self.reg.value)
        if location and self.reg in (Reg.HOME, Reg.ROAMING):
            text += ',"1A2B","00C0FFEE"'
        return text

    async def _serve(self) -> None:
        """Commands one at a time, as a module runs them."""
        while True:
            line = await self._commands.get()
            await self._sleep(self.timing.answer_s)
            try:
                lines = await self._run(line)
            except _Error as err:
                lines = [str(err) if self._settings.cmee else "ERROR"]
            self._say(*lines)
            if self._mode == "command":
                self._flush_held()

    async def _run(self, line: str) -> list[str]:
        for pattern, handler in self._handlers:
            if match := pattern.fullmatch(line):
                return await handler(*(g or "" for g in match.groups()))
        return ["ERROR"]

    # --- commands: identity, settings, network --------------------------------------------

    async def _ok(self) -> list[str]:
        return ["OK"]

    async def _echo(self, on: str) -> list[str]:
        self._settings.echo = on == "1"
        return ["OK"]

    async def _reset(self) -> list[str]:
        self._settings = _Settings()
        return ["OK"]

    async def _ident(self) -> list[str]:
        return ["SIMULATED TIANTONG-1 TERMINAL", "REVISION SIM-1.0", "OK"]

    async def _imei(self) -> list[str]:
        return ["860000000000001", "OK"]

    async def _imsi(self) -> list[str]:
        self._need_sim("CME")
        return ["460110000000001", "OK"]

    async def _cmee(self, n: str) -> list[str]:
        self._settings.cmee = int(n)
        return ["OK"]

    async def _cpin(self) -> list[str]:
        if self.sim is SimState.ABSENT:
            raise _cme(10)
        return [f"+CPIN: {self.sim.value}", "OK"]

    async def _creg_set(self, n: str) -> list[str]:
        self._settings.creg_n = int(n)
        return ["OK"]

    async def _creg(self) -> list[str]:
        n = self._settings.creg_n
        return [f"+CREG: {n}," + self._creg_fields(location=n == 2), "OK"]

    async def _csq_cmd(self) -> list[str]:
        return [f"+CSQ: {self._csq},99", "OK"]

    async def _cops(self) -> list[str]:
        if self.reg in (Reg.HOME, Reg.ROAMING):
            return ['+COPS: 0,0,"CHN-TIANTONG"', "OK"]
        return ["+COPS: 0", "OK"]

    async def _cmgf(self, n: str) -> list[str]:
        self._settings.cmgf = int(n)
        return ["OK"]

    async def _cscs(self, charset: str) -> list[str]:
        self._settings.cscs = charset.upper()
        return ["OK"]

    async def _csmp(self, fo: str, vp: str, pid: str, dcs: str) -> list[str]:
        try:
            smspdu.alphabet_of(int(dcs))
        except BadPdu:
            raise _cms(305) from None
        self._settings.csmp = (int(fo), int(vp), int(pid), int(dcs))
        return ["OK"]

    async def _csdh(self, n: str) -> list[str]:
        self._settings.csdh = int(n)
        return ["OK"]

    async def _cnmi(self, mode: str, mt: str) -> list[str]:
        self._settings.cnmi_mt = int(mt or 0)
        return ["OK"]

    async def _cpms(self) -> list[str]:
        used = f"{len(self.store)},{self.storage}"
        return [f'+CPMS: "SM",{used},"SM",{used},"SM",{used}', "OK"]

    def _need_sim(self, kind: str) -> None:
        if self.sim is SimState.ABSENT:
            raise _Error(kind, 10 if kind == "CME" else 310)
        if self.sim is SimState.PIN:
            raise _Error(kind, 11 if kind == "CME" else 311)

    # --- commands: SMS ----------------------------------------------------------------

    async def _cmgs(self, args: str) -> list[str]:
        self._need_sim("CMS")
        if self.reg not in (Reg.HOME, Reg.ROAMING):
            raise _cms(331)
        body = await self._prompt()
        if body is None:  # ESC: the host abandoned the message
            return ["OK"]
        submit = (
            self._pdu_submit(args, body)
            if self._settings.cmgf == 0
            else self._text_submit(args, body)
        )
        await self._sleep(self.timing.submit_s)
        if self.reg not in (Reg.HOME, Reg.ROAMING):
            raise _cms(332)
        self._mr = (self._mr + 1) % 256
        self.sent.append(submit)
        self.centre.submit(self.number, submit)
        return [f"+CMGS: {self._mr}", "OK"]

    async def _prompt(self) -> str | None:
        """``> ``, then the text the host types up to Ctrl-Z (None if it sent ESC)."""
        self._body.clear()
        self._body_ready = asyncio.get_running_loop().create_future()
        self._mode = "prompt"
        self._put(b"\r\n> ")
        try:
            return await self._body_ready
        finally:
            self._mode = "command"

    def _pdu_submit(self, args: str, body: str) -> Submit:
        if not args.isdigit():
            raise _cms(304)
        try:
            _smsc, tpdu = smspdu.split_smsc(smspdu.from_hex(body))
            if len(tpdu) != int(args):
                raise _cms(304)
            return smspdu.decode_submit(tpdu)
        except BadPdu:
            raise _cms(304) from None

    def _text_submit(self, args: str, body: str) -> Submit:
        match = re.fullmatch(r'"([^"]*)"(?:,(\d+))?', args)
        if match is None:
            raise _cms(305)
        fo, _vp, _pid, dcs = self._settings.csmp
        alphabet = smspdu.alphabet_of(dcs)
        try:
            dest = self._from_charset(match.group(1))
            if alphabet is Alphabet.GSM7 and not fo & 0x40:
                segment = Segment(self._from_charset(body), alphabet)
                smspdu.user_data(segment)  # every character must be in the alphabet
            elif alphabet is Alphabet.GSM7:
                raise _cms(305)
            else:
                ud = smspdu.from_hex(body)
                segment = smspdu.read_user_data(alphabet, bool(fo & 0x40), len(ud), ud)
        except (ValueError, UnicodeDecodeError):
            raise _cms(305) from None
        return Submit(dest, segment)

    async def _cmgr(self, index: str) -> list[str]:
        self._need_sim("CMS")
        stored = self.store.get(int(index))
        if stored is None:
            return ["OK"]
        lines = self._render(int(index), stored, listing=False)
        stored.stat = max(stored.stat, 1)
        return [*lines, "OK"]

    async def _cmgl(self, arg: str) -> list[str]:
        self._need_sim("CMS")
        if self._settings.cmgf == 0:
            wanted = int(arg) if arg.isdigit() else -1
        else:
            wanted = _TEXT_STATS.get(arg.strip('"'), -1)
        if wanted not in range(5):
            raise _cms(304 if self._settings.cmgf == 0 else 305)
        lines = []
        for index in sorted(self.store):
            stored = self.store[index]
            if wanted in (4, stored.stat):
                lines += self._render(index, stored, listing=True)
                stored.stat = max(stored.stat, 1)
        return [*lines, "OK"]

    async def _cmgd(self, index: str, flag: str) -> list[str]:
        self._need_sim("CMS")
        if flag == "4":
            self.store.clear()
        elif not 1 <= int(index) <= self.storage:
            raise _cms(321)
        else:
            self.store.pop(int(index), None)
        return ["OK"]

    def _render(self, index: int, stored: Stored, *, listing: bool) -> list[str]:
        """A stored message as ``+CMGR``/``+CMGL`` show it in the current mode."""
        at = f"{index}," if listing else ""
        if self._settings.cmgf == 0:
            pdu = smspdu.add_smsc(stored.tpdu, self.centre.address)
            return [
                f"+CMG{'L' if listing else 'R'}: {at}{stored.stat},,{len(stored.tpdu)}",
                pdu.hex().upper(),
            ]
        d = smspdu.decode_deliver(stored.tpdu)
        udhi, udl, ud = smspdu.user_data(d.segment)
        if udhi or d.segment.alphabet is not Alphabet.GSM7:
            data, length = ud.hex().upper(), udl
        else:
            assert isinstance(d.segment.payload, str)
            data, length = self._to_charset(d.segment.payload), len(d.segment.payload)
        tooa = smspdu.TOA_INTERNATIONAL if d.sender.startswith("+") else smspdu.TOA_UNKNOWN
        zone = int((d.timestamp.utcoffset() or timedelta()).total_seconds()) // 900
        scts = d.timestamp.strftime("%y/%m/%d,%H:%M:%S") + f"{zone:+03d}"
        head = f'"{_STAT_NAMES[stored.stat]}","{self._to_charset(d.sender)}",,"{scts}"'
        if self._settings.csdh and listing:
            head += f",{tooa},{length}"
        elif self._settings.csdh:
            fo = 0x04 | (0x40 if udhi else 0)
            sca = self._to_charset(self.centre.address)
            head += f',{tooa},{fo},0,{d.segment.alphabet.value},"{sca}",145,{length}'
        return [f"+CMG{'L' if listing else 'R'}: {at}{head}", data]

    def _store(self, tpdu: bytes) -> int | None:
        free = next((i for i in range(1, self.storage + 1) if i not in self.store), None)
        if free is not None:
            self.store[free] = Stored(0, tpdu)
        return free

    def _to_charset(self, text: str) -> str:
        return text.encode("utf-16-be").hex().upper() if self._settings.cscs == "UCS2" else text

    def _from_charset(self, text: str) -> str:
        if self._settings.cscs == "UCS2":
            return smspdu.from_hex(text).decode("utf-16-be")
        return text

    # --- commands: data ---------------------------------------------------------------

    async def _cgdcont(self, cid: str, apn: str) -> list[str]:
        self._contexts[int(cid)] = apn
        return ["OK"]

    async def _dial(self, cid: str) -> list[str]:
        self._need_sim("CME")
        await self._sleep(self.timing.connect_s)
        if self.reg not in (Reg.HOME, Reg.ROAMING):
            return ["NO CARRIER"]
        self.apn = self._contexts.get(int(cid or 1), "")
        self.calls += 1
        self._call_up = True
        return self._to_data("CONNECT 384000")

    async def _hangup(self) -> list[str]:
        self._call_up = False
        return ["OK"]

    async def _online(self) -> list[str]:
        return self._to_data("CONNECT 384000") if self._call_up else ["NO CARRIER"]

    def _to_data(self, final: str) -> list[str]:
        self._mode = "data"
        self._last_rx = asyncio.get_running_loop().time()
        return [final]

    # --- input ------------------------------------------------------------------------

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EAGAIN, or nothing more to read
            return
        if self._silent:
            return
        if self._mode == "data":
            self._data_in(data)
            return
        for byte in data:
            if self._mode == "prompt":
                self._prompt_byte(byte)
            else:
                self._command_byte(byte)

    def _command_byte(self, byte: int) -> None:
        if self._settings.echo:
            self._put(bytes([byte]))
        if byte == 0x0D:
            line = self._line.decode("ascii", "replace").strip()
            self._line.clear()
            if line[:2].upper() == "AT":
                self.heard.append(line)
                with contextlib.suppress(asyncio.QueueFull):  # a flood is ignored, as on a UART
                    self._commands.put_nowait(line)
        elif byte != 0x0A and len(self._line) < 1024:
            self._line.append(byte)

    def _prompt_byte(self, byte: int) -> None:
        ready = self._body_ready
        if ready is None or ready.done():
            return
        if byte == 0x1A:
            ready.set_result(self._body.decode("ascii", "replace").strip())
        elif byte == 0x1B:
            ready.set_result(None)
        elif len(self._body) < 1024:
            if self._settings.echo:
                self._put(bytes([byte]))
            self._body.append(byte)

    def _data_in(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_rx
        self._last_rx = at = loop.time()
        if data == b"+++" and quiet >= self.timing.guard_s / self.speed:
            self._spawn(self._escape_after_guard(at))
        else:
            self.data_received += len(data)

    async def _escape_after_guard(self, at: float) -> None:
        await self._sleep(self.timing.guard_s)
        if self._mode == "data" and self._last_rx == at:
            self._mode = "command"
            self._say("OK")
            self._flush_held()

    # --- output -----------------------------------------------------------------------

    def _urc(self, line: str) -> None:
        if self._mode == "command" and not self._silent:
            self._say(line)
        else:
            self._held.append(line)

    def _flush_held(self) -> None:
        while self._held:
            self._say(self._held.popleft())

    def _say(self, *lines: str) -> None:
        if not self._silent:
            self._put(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines))

    def _put(self, data: bytes) -> None:
        if self._master is not None:
            self._out.put_nowait(data)

    async def _write_out(self) -> None:
        await write_paced(self._pty, self._out, self.baudrate / 10)

    async def _sleep(self, emulated_s: float) -> None:
        await asyncio.sleep(emulated_s / self.speed)

    def _spawn(
        self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]] | None = None
    ) -> None:
        into = self._tasks if tasks is None else tasks
        task = asyncio.create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)
