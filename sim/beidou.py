"""A simulated Beidou short-message terminal on a real pty: 4.0 and 5.0, with wire-side faults.

The host opens :attr:`SimulatedTerminal.path` with pyserial exactly as it would open
``/dev/ttyUSB0``. Times are emulated seconds: ``speed`` 20 makes a 60 s service
interval last 3 real seconds (``now()`` is that clock, for the driver under test).
Bytes are paced as on a 115200 8N1 line (10 bits a byte) in real time, both ways.

What the sources leave open is configurable: the ``$BDICP`` layout (``icp``), the
card's message length (``SimCard.bits``), every delay (:class:`Timing`). Where no
source says what a terminal answers, it answers as documented here: no card means no
answer to a card query; a send it cannot carry for another reason (bad fields, too
long, no beam on 4.0) gets ``$BDFKI,TXA,N,Y,0,0000`` or ``$BDFKI,…,TCQ,N,0,0``.
"""

from __future__ import annotations

import asyncio
import binascii
import math
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from drivers.device import Lifecycle
from drivers.sentence import Sentence, StreamParser
from sim.pty import PtyNode, write_paced

Version = Literal["4.0", "5.0"]
RDSS_BITS = {1: 110, 2: 408, 3: 628, 4: 848}
RDSS_BITS_ENCRYPTED = {1: 140, 2: 360, 3: 580, 4: 1680}
REGIONAL_BITS = 14_000
_ID = re.compile(r"[0-9]{1,11}")


@dataclass(frozen=True, slots=True)
class SimCard:
    """The card in the terminal."""

    user_id: str = "0241636"
    comm_level: int = 3
    interval_s: int = 60
    encrypted: bool = False
    serial: str = "24000000"
    broadcast_id: str = "1933442"
    user_type: int = 6
    subordinates: int = 0
    bits: int | None = None  # length the terminal enforces; None: 4.0 table, or 14,000 on 5.0


@dataclass(frozen=True, slots=True)
class Timing:
    """Delays in emulated seconds."""

    answer_s: float = 0.2  # a card query's answer
    feedback_s: float = 0.5  # $BDFKI after a send
    delivery_s: float = 4.0  # up to the satellite, through the ground station, down to the peer
    boot_s: float = 5.0  # silence after a reboot, before the terminal announces itself
    signal_period_s: float = 1.0  # $BDBSI / $BDPWI


@dataclass(frozen=True, slots=True)
class Transmission:
    """One message the terminal put on the air."""

    sender: str
    dest: str
    payload: bytes


class Fault(Enum):
    """Damage :meth:`SimulatedTerminal.inject` can put on the line."""

    GARBAGE = "garbage"  # 32 random bytes between sentences
    TRUNCATED = "truncated"  # half a sentence, then the next one
    BAD_CHECKSUM = "bad_checksum"


Peer = Callable[[Transmission], None]


def icp_fields(card: SimCard) -> list[str]:
    """``$BDICP`` laid out as in the public trace ``$BDICP,4238473,0,0,3,0,N,2,N,1,0,0,3,1,60,2,…``.

    Interval 14th, level 15th; the fields nobody interprets keep the trace's values.
    """
    flag = "E" if card.encrypted else "N"
    return [
        card.user_id, card.broadcast_id, "0", str(card.user_type), "0", flag, "2", "N", "1",
        "0", "0", "3", "1", str(card.interval_s), str(card.comm_level), "0", "0", "0", "0",
        str(card.subordinates), "0", "0", "0",
    ]  # fmt: skip


def _same_user(a: str, b: str) -> bool:
    return bool(_ID.fullmatch(a) and _ID.fullmatch(b)) and int(a) == int(b)


def _mmss(seconds: float) -> str:
    secs = min(math.ceil(seconds), 99 * 60 + 59)
    return f"{secs // 60:02d}{secs % 60:02d}"


class SimulatedTerminal(Lifecycle):
    """A Beidou terminal: its card, the service interval, the satellite hop, its faults.

    Wire-side controls: :meth:`receive` (a message comes down from the satellite),
    :meth:`inject`, :meth:`reboot`, :meth:`unplug` / :meth:`plug` (the USB device goes
    away and comes back at the same ``link`` path), and the ``card`` (``None``: no card)
    and ``signal`` (0: no beam) attributes. ``heard`` lists every sentence that reached
    the terminal, ``sent`` every message it transmitted; ``peer`` gets each one after
    ``delivery_s``: another simulated terminal (if the destination is its card) or a callback.
    """

    def __init__(
        self,
        protocol: Version = "4.0",
        card: SimCard | None = SimCard(),
        *,
        speed: float = 1.0,
        timing: Timing = Timing(),
        link: str | os.PathLike[str] | None = None,
        peer: SimulatedTerminal | Peer | None = None,
        baudrate: int = 115200,
        icp: Callable[[SimCard], Sequence[str]] = icp_fields,
        signal: int | None = None,
        seed: int = 0,
    ) -> None:
        self.protocol = protocol
        self.card = card
        self.speed = speed
        self.timing = timing
        self.link = None if link is None else Path(link)
        self.peer = peer
        self.baudrate = baudrate
        self.icp = icp
        self.signal = (4 if protocol == "4.0" else 40) if signal is None else signal
        # Bounded: a simulated terminal may run for days under KIT_BACKEND=sim.
        self.heard: deque[Sentence] = deque(maxlen=1000)
        self.sent: deque[Transmission] = deque(maxlen=1000)
        self._rng = random.Random(seed)
        self._t0 = time.monotonic()
        self._parser = StreamParser()
        self._master: int | None = None
        self._pty = PtyNode(self.link, "simulated terminal")
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._air: set[asyncio.Task[None]] = set()  # messages in flight outlive an unplug
        self._rx_at = 0.0  # when (loop time) the last byte received has fully arrived
        self._last_tx = -math.inf
        self._boot = 0  # bumped by each reboot: a command from before it is forgotten
        self._silent_until = -math.inf

    # --- life ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What the host opens: the ``link`` if given, else the pty's slave."""
        return self._pty.path

    def now(self) -> float:
        """Emulated seconds since the terminal was made."""
        return (time.monotonic() - self._t0) * self.speed

    async def start(self) -> None:
        await self.plug()

    async def close(self) -> None:
        for task in self._air:
            task.cancel()
        await asyncio.gather(*self._air, return_exceptions=True)
        await self.unplug()

    async def plug(self) -> None:
        """A fresh pty (a new device node), at ``link`` if given."""
        if self._master is not None:
            return
        master = self._master = self._pty.open()
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)
        self._spawn(self._write_out())
        self._spawn(self._report_signal())
        self._spawn(self._announce(self._boot, 0.0))

    async def unplug(self) -> None:
        """The device goes away: the host reads end-of-file and the path disappears."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._out = asyncio.Queue()
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            self._master = None
        self._pty.close()

    # --- wire-side controls ------------------------------------------------------------

    def receive(self, sender: str, payload: bytes, *, dest: str | None = None) -> bool:
        """A message comes down from the satellite; False if this terminal cannot take it."""
        card = self.card
        if card is None or self._silent() or self._master is None:
            return False
        if dest is not None and not _same_user(dest, card.user_id):
            return False
        if self.protocol == "4.0":
            stamp = time.strftime("%H%M", time.gmtime())
            self._emit("BDTXR", "1", sender, "2", stamp, "A4" + payload.hex().upper())
        else:
            stamp = time.strftime("%H%M%S", time.gmtime())
            self._emit("BDTCI", sender, card.user_id, "2", stamp, "3", "0", payload.hex().upper())
        return True

    def inject(self, fault: Fault | bytes) -> None:
        """Put damage on the line towards the host (or exactly ``fault`` if it is bytes)."""
        if isinstance(fault, bytes):
            self._put(fault)
            return
        sample = Sentence("BDFKI", ("TXA", "Y", "Y", "0", "0000")).encode()
        if fault is Fault.GARBAGE:
            junk = bytes(b for b in self._rng.randbytes(64) if b not in b"$\r\n")
            self._put(junk[:32])
        elif fault is Fault.TRUNCATED:
            self._put(sample[: len(sample) // 2])
        else:
            self._put(sample[:-4] + b"%02X\r\n" % (int(sample[-4:-2], 16) ^ 0x5A))

    def reboot(self) -> None:
        """Power-cycle: silent (commands in progress are lost) for ``boot_s``, then announce."""
        self._boot += 1
        self._silent_until = self.now() + self.timing.boot_s
        while not self._out.empty():
            self._out.get_nowait()
        self._spawn(self._announce(self._boot, self.timing.boot_s))

    # --- the terminal ------------------------------------------------------------------

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EAGAIN, or nothing more to read
            return
        loop = asyncio.get_running_loop()
        self._rx_at = max(loop.time(), self._rx_at) + len(data) * 10 / self.baudrate
        for sentence in self._parser.feed(data):
            self.heard.append(sentence)
            self._spawn(self._command(sentence, self._rx_at, self._boot))

    async def _command(self, s: Sentence, arrived: float, boot: int) -> None:
        await asyncio.sleep(max(0.0, arrived - asyncio.get_running_loop().time()))
        if self._silent() or boot != self._boot:
            return
        if s.name == ("CCICA" if self.protocol == "4.0" else "CCICR"):
            await self._sleep(self.timing.answer_s)
            if boot == self._boot:
                self._send_card()
        elif s.name == ("CCTXA" if self.protocol == "4.0" else "CCTCQ"):
            await self._sleep(self.timing.feedback_s)
            if boot == self._boot:
                self._transmit(s.fields)

    def _send_card(self) -> None:
        card = self.card
        if card is None:
            return
        if self.protocol == "4.0":
            flag = "E" if card.encrypted else "N"
            self._emit(
                "BDICI", card.user_id, card.serial, card.broadcast_id, str(card.user_type),
                str(card.interval_s), str(card.comm_level), flag, str(card.subordinates),
            )  # fmt: skip
        else:
            self._emit("BDICP", *self.icp(card))

    def _transmit(self, f: tuple[str, ...]) -> None:
        card = self.card
        parsed = self._parse_send(f)
        if card is None:
            self._feedback(refusal=5)
        elif self.signal <= 0:
            self._feedback(refusal=4)
        elif parsed is None:
            self._feedback(refusal=0)
        elif (wait := self._last_tx + card.interval_s - self.now()) > 0:
            self._feedback(refusal=1, wait_s=wait)
        elif parsed[1] > self._bits(card):
            self._feedback(refusal=0)
        else:
            self._last_tx = self.now()
            self._feedback(wait_s=card.interval_s)
            sent = Transmission(card.user_id, parsed[0], parsed[2])
            self.sent.append(sent)
            self._spawn(self._deliver(sent), self._air)

    def _parse_send(self, f: tuple[str, ...]) -> tuple[str, int, bytes] | None:
        """(destination, bits on the air, payload) of a send command, None if malformed."""
        try:
            if self.protocol == "4.0":
                dest, _category, mode, content = f
                ok = (
                    len(dest) == 7
                    and mode in {"0", "1", "2"}
                    and (mode != "2" or content[:2] == "A4")
                )
                body = content[2:] if mode == "2" else content
            else:
                dest, _freq, _ack, coding, content, _repeat = f
                ok, body = coding in {"1", "2", "3", "4", "5"}, content
            payload = binascii.unhexlify(body)
        except (ValueError, TypeError):
            return None
        if not ok or not _ID.fullmatch(dest) or not payload:
            return None
        return dest, 4 * len(content), payload

    def _bits(self, card: SimCard) -> int:
        if card.bits is not None:
            return card.bits
        if self.protocol == "5.0":
            return REGIONAL_BITS
        return (RDSS_BITS_ENCRYPTED if card.encrypted else RDSS_BITS)[card.comm_level]

    def _feedback(self, *, refusal: int | None = None, wait_s: float = 0.0) -> None:
        if self.protocol == "4.0":
            if refusal is None:
                self._emit("BDFKI", "TXA", "Y", "Y", "0", _mmss(wait_s))
            elif refusal == 1:
                self._emit("BDFKI", "TXA", "N", "N", "0", _mmss(wait_s))
            else:
                self._emit("BDFKI", "TXA", "N", "Y", "0", "0000")
            return
        stamp = time.strftime("%H%M%S", time.gmtime())
        if refusal is None:
            self._emit("BDFKI", stamp, "TCQ", "Y", "0", "0")
        else:
            self._emit("BDFKI", stamp, "TCQ", "N", str(refusal), str(math.ceil(wait_s)))

    async def _deliver(self, sent: Transmission) -> None:
        await self._sleep(self.timing.delivery_s)
        if isinstance(self.peer, SimulatedTerminal):
            self.peer.receive(sent.sender, sent.payload, dest=sent.dest)
        elif self.peer is not None:
            self.peer(sent)

    async def _announce(self, boot: int, after_s: float) -> None:
        """Power-on output: the card, unasked (the host may have missed the reboot)."""
        await self._sleep(after_s)
        if boot == self._boot:
            self._send_card()

    async def _report_signal(self) -> None:
        while True:
            await self._sleep(self.timing.signal_period_s)
            if self._silent():
                continue
            sig = max(0, self.signal)
            if self.protocol == "4.0":
                # response beam, time-difference beam, power of beams 1-10 (0-4)
                beams = ("1", "2") if sig else ("0", "0")
                powers = [str(sig), str(max(0, sig - 1))] + ["0"] * 8
                self._emit("BDBSI", *beams, *powers)
            else:
                stamp = time.strftime("%H%M%S.00", time.gmtime())
                if sig:  # no 4.0 beams; two 5.0 beams (id, power, second power); a trailing flag
                    groups = ["21", str(sig), str(sig - 5), "22", str(sig - 3), "0"]
                    self._emit("BDPWI", stamp, "00", "02", *groups, "0")
                else:
                    self._emit("BDPWI", stamp, "00", "00")

    # --- plumbing ----------------------------------------------------------------------

    def _silent(self) -> bool:
        return self.now() < self._silent_until

    async def _sleep(self, emulated_s: float) -> None:
        await asyncio.sleep(emulated_s / self.speed)

    def _emit(self, name: str, *fields: str) -> None:
        if not self._silent():
            self._put(Sentence(name, fields).encode())

    def _put(self, data: bytes) -> None:
        if self._master is not None:
            self._out.put_nowait(data)

    async def _write_out(self) -> None:
        await write_paced(self._pty, self._out, self.baudrate / 10)

    def _spawn(
        self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]] | None = None
    ) -> None:
        into = self._tasks if tasks is None else tasks
        task = asyncio.create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)
