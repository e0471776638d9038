"""In-process emulation of one duplex link: rate, delay, jitter, loss, MTU, cost, interval, outages.

Time model: every emulator runs on an injected ``Clock``. ``ScaledClock(speed)`` is real
time sped up — one emulated second lasts ``1/speed`` real seconds — so one clock serves
this in-process link, the TCP relay (``sim.linkrelay``) and any other asyncio code in a
test. Links schedule by absolute emulated deadlines, so the event loop's wake-up latency
(≈0.1–1 ms real, i.e. that times ``speed`` in emulated time) blurs single timestamps but
never accumulates into rate or delay errors.

Per direction, a frame handed to ``LinkEnd.send`` waits in a bounded transmit buffer, is
serialized at ``rate`` bytes/s, then travels ``rtt/2`` ± ``jitter`` seconds and is lost
with probability ``loss``. Frames never overtake each other, as on a serial or satellite
link. Going down discards the buffer and every frame in flight.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edge.errors import KitError

Outage = tuple[float, float]


class Clock(Protocol):
    """Emulated time that links, relays and tests share."""

    def now(self) -> float:
        """Emulated seconds since the clock's origin."""

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        """Run ``callback`` on the running loop at emulated time ``when``."""

    async def sleep_until(self, when: float) -> None:
        """Return at emulated time ``when``, at once if it has passed."""


class ScaledClock:
    """Real time sped up ``speed`` times; emulated time 0 is when the clock was made."""

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        delay = max(0.0, (when - self.now()) / self.speed)
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep_until(self, when: float) -> None:
        await asyncio.sleep(max(0.0, (when - self.now()) / self.speed))


class LinkConditions(BaseModel):
    """How a link behaves; the same numbers drive the in-process link and the TCP relay."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rate: float = Field(
        gt=0, le=1e10, description="Bytes per second from kit to centre (serialization rate)."
    )
    rate_down: float | None = Field(
        default=None,
        gt=0,
        le=1e10,
        description="Bytes per second from centre to kit; unset: as rate.",
    )
    rtt: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Round-trip time in seconds; each direction adds rtt/2.",
    )
    jitter: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Each frame's one-way delay varies by up to ± this (s).",
    )
    loss: float = Field(default=0.0, ge=0, le=1, description="Probability that a frame is lost.")
    mtu: int = Field(
        default=1500, ge=1, le=65_535, description="Largest frame in bytes; larger: refused."
    )
    buffer: int = Field(
        default=65_536,
        ge=1,
        le=1 << 30,
        description="Transmit buffer per direction in bytes; when full, send() waits.",
    )
    cost_per_byte: float = Field(
        default=0.0, ge=0, le=1e6, description="Cost of each byte put on air."
    )
    cost_per_message: float = Field(
        default=0.0, ge=0, le=1e6, description="Cost of each frame put on air."
    )
    min_interval: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        description="Seconds between two frames sent from one end; earlier sends are refused.",
    )

    @field_validator("buffer")
    @classmethod
    def _buffer_holds_a_frame(cls, buffer: int, info: ValidationInfo) -> int:
        mtu = info.data.get("mtu")
        if mtu is not None and buffer < mtu:
            raise ValueError(f"a buffer of {buffer} bytes cannot hold one {mtu}-byte frame")
        return buffer


def check_outages(outages: Iterable[Outage]) -> tuple[Outage, ...]:
    """Outages as ``(start, end)`` seconds from the start, in order and not overlapping."""
    checked = tuple((float(start), float(end)) for start, end in outages)
    previous_end = 0.0
    for start, end in checked:
        if not 0 <= start < end:
            raise ValueError(f"outage [{start:g}, {end:g}] must have 0 <= start < end")
        if start < previous_end:
            raise ValueError(f"outage [{start:g}, {end:g}] overlaps or precedes the one before")
        previous_end = end
    return checked


class FrameTooLarge(KitError, ValueError):
    """A frame longer than the link's MTU."""

    def __init__(self, link: str, size: int, mtu: int) -> None:
        super().__init__(
            f"帧长 {size} 字节，超过链路 {link} 的 MTU {mtu} 字节",
            f"a {size}-byte frame exceeds the {mtu}-byte MTU of link {link!r}",
        )


class SentTooSoon(KitError, RuntimeError):
    """A frame sent before the link's minimum interval has passed (Beidou: 频率未到)."""

    def __init__(self, link: str, min_interval: float, wait: float) -> None:
        self.wait = wait
        # Whole seconds, rounded up, like the Beidou terminal's own feedback.
        seconds = math.ceil(wait)
        super().__init__(
            f"链路 {link} 频率未到：最小间隔 {min_interval:g} 秒，还需等待 {seconds} 秒",
            f"too soon on link {link!r}: minimum interval {min_interval:g} s, "
            f"wait {seconds} s more",
        )


class LinkDown(KitError, ConnectionError):
    """The link is down: the frame was not sent, or was waiting for buffer room."""

    def __init__(self, link: str) -> None:
        super().__init__(f"链路 {link} 已中断，帧未发出", f"link {link!r} is down; frame not sent")


@dataclass
class LinkStats:
    """Counters for one direction: ``sent == delivered + lost + pending``."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_delivered: int = 0
    bytes_delivered: int = 0
    messages_lost: int = 0
    bytes_lost: int = 0
    cost: float = 0.0

    @property
    def messages_pending(self) -> int:
        return self.messages_sent - self.messages_delivered - self.messages_lost


class Running(ABC):
    """Started and closed explicitly, or used as ``async with``."""

    @abstractmethod
    async def start(self, at: float | None = None) -> None:
        """Begin (and arm any outage schedule from ``at``)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop and release every task and socket."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Switchable(Running):
    """Online state driven by hand or by an outage schedule; base of links and relays."""

    def __init__(self, name: str, clock: Clock | None, outages: Iterable[Outage]) -> None:
        self.name = name
        self.clock: Clock = clock if clock is not None else ScaledClock()
        self.outages = check_outages(outages)
        self.on_online: Callable[[bool], None] | None = None
        self._online = True
        self._downs = 0
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def online(self) -> bool:
        return self._online

    def set_online(self, online: bool) -> None:
        """Bring the link up or down now; ``on_online`` hears of each change."""
        if online == self._online:
            return
        self._online = online
        if online:
            self._came_up()
        else:
            self._downs += 1
            self._went_down()
        if self.on_online is not None:
            self.on_online(online)

    def _came_up(self) -> None:
        """Hook: the link just came up."""

    def _went_down(self) -> None:
        """Hook: the link just went down."""

    def _arm_schedule(self, origin: float) -> None:
        elapsed = self.clock.now() - origin
        for start, end in self.outages:
            if end <= elapsed:
                continue
            if start <= elapsed:
                self.set_online(False)
            else:
                self._timers.append(self.clock.call_at(origin + start, self._down))
            if math.isfinite(end):
                self._timers.append(self.clock.call_at(origin + end, self._up))

    def _disarm_schedule(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _down(self) -> None:
        self.set_online(False)

    def _up(self) -> None:
        self.set_online(True)


class LinkEnd:
    """One side of an emulated link: sends to the other side and receives from it.

    Received frames go to ``on_receive`` when it is set, else to a queue read by ``recv``.
    """

    def __init__(self, link: EmulatedLink, rate: float, rng: random.Random) -> None:
        self.link = link
        self.stats = LinkStats()
        self.on_receive: Callable[[bytes], None] | None = None
        self.peer: LinkEnd  # the other side, set by the link
        self._rate = rate
        self._rng = rng
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer: deque[tuple[bytes, float]] = deque()
        self._buffered = 0
        self._tx: asyncio.TimerHandle | None = None
        self._tx_end = -math.inf
        self._flight: deque[tuple[bytes, asyncio.TimerHandle]] = deque()
        self._last_arrival = -math.inf
        self._last_send = -math.inf
        self._room = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        """Put a frame in the transmit buffer, waiting while the buffer is full.

        Refuses without queueing: ``FrameTooLarge`` above the MTU, ``LinkDown`` while the
        link is down (also when it goes down during the wait), ``SentTooSoon`` before
        ``min_interval`` has passed since this end's previous frame.
        """
        link = self.link
        conditions = link.conditions
        size = len(frame)
        if size > conditions.mtu:
            raise FrameTooLarge(link.name, size, conditions.mtu)
        if not link.online:
            raise LinkDown(link.name)
        now = link.clock.now()
        wait = self._last_send + conditions.min_interval - now
        if wait > 0:
            raise SentTooSoon(link.name, conditions.min_interval, wait)
        self._last_send = now
        downs = link._downs
        while self._buffered + size > conditions.buffer:
            await self._room.wait()
            if link._downs != downs or not link.online:
                raise LinkDown(link.name)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += size
        self._buffer.append((bytes(frame), link.clock.now()))
        self._buffered += size
        if self._tx is None:
            self._transmit_next()

    async def recv(self) -> bytes:
        """The next frame from the other end (only while ``on_receive`` is unset)."""
        return await self._inbox.get()

    def _transmit_next(self) -> None:
        frame, queued_at = self._buffer[0]
        # From the previous frame's scheduled end, not from when this callback ran late.
        self._tx_end = max(queued_at, self._tx_end) + len(frame) / self._rate
        self._tx = self.link.clock.call_at(self._tx_end, self._transmitted)

    def _transmitted(self) -> None:
        frame, _ = self._buffer.popleft()
        self._buffered -= len(frame)
        self._tx = None
        conditions = self.link.conditions
        self.stats.cost += conditions.cost_per_message + conditions.cost_per_byte * len(frame)
        if self._rng.random() < conditions.loss:
            self._count_lost(frame)
        else:
            delay = conditions.rtt / 2 + self._rng.uniform(-conditions.jitter, conditions.jitter)
            arrival = max(self._tx_end + max(0.0, delay), self._last_arrival)
            self._last_arrival = arrival
            self._flight.append((frame, self.link.clock.call_at(arrival, self._arrived)))
        self._wake_senders()
        if self._buffer:
            self._transmit_next()

    def _arrived(self) -> None:
        # Timers due at the same instant may fire in any order; the deque keeps FIFO.
        frame, _ = self._flight.popleft()
        self.stats.messages_delivered += 1
        self.stats.bytes_delivered += len(frame)
        self.peer._receive(frame)

    def _receive(self, frame: bytes) -> None:
        if self.on_receive is not None:
            self.on_receive(frame)
        else:
            self._inbox.put_nowait(frame)

    def _count_lost(self, frame: bytes) -> None:
        self.stats.messages_lost += 1
        self.stats.bytes_lost += len(frame)

    def _discard_all(self) -> None:
        if self._tx is not None:
            self._tx.cancel()
            self._tx = None
        for frame, _ in self._buffer:
            self._count_lost(frame)
        for frame, timer in self._flight:
            timer.cancel()
            self._count_lost(frame)
        self._buffer.clear()
        self._flight.clear()
        self._buffered = 0
        self._tx_end = self._last_arrival = -math.inf
        self._wake_senders()

    def _wake_senders(self) -> None:
        self._room.set()
        self._room = asyncio.Event()


class EmulatedLink(Switchable):
    """A duplex link between ``kit`` and ``centre``, each a ``LinkEnd``.

    ``rate`` shapes kit→centre and ``rate_down`` centre→kit; everything else is the same
    both ways. Cost is charged for every frame put on air (a randomly lost frame costs,
    one still in the buffer when the link drops does not). ``start()`` (or ``async
    with``) arms the outage schedule, with times counted from ``at`` (default: now).
    """

    def __init__(
        self,
        conditions: LinkConditions,
        *,
        name: str = "link",
        clock: Clock | None = None,
        outages: Iterable[Outage] = (),
        seed: int | None = None,
    ) -> None:
        super().__init__(name, clock, outages)
        self.conditions = conditions
        rng = random.Random(seed)
        self.kit = LinkEnd(self, conditions.rate, rng)
        self.centre = LinkEnd(self, conditions.rate_down or conditions.rate, rng)
        self.kit.peer, self.centre.peer = self.centre, self.kit
        self._closed = False

    @property
    def online(self) -> bool:
        return self._online and not self._closed

    @property
    def cost(self) -> float:
        return self.kit.stats.cost + self.centre.stats.cost

    async def start(self, at: float | None = None) -> None:
        self._arm_schedule(self.clock.now() if at is None else at)

    async def close(self) -> None:
        """Stop the schedule; frames still buffered or in flight count as lost."""
        self._closed = True
        self._disarm_schedule()
        self._went_down()

    def _went_down(self) -> None:
        self.kit._discard_all()
        self.centre._discard_all()
