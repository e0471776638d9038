"""The link contract: one way out of the kit, with the numbers the scheduler reasons with."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from edge.errors import KitError
from edge.item import Priority
from edge.topics import DeviceState

log = logging.getLogger(__name__)

STABLE_MIN_S = 2.0


class LinkDown(KitError, ConnectionError):
    """The link is offline or failed mid-send; the frame may not have left."""


class LinkRefused(KitError, RuntimeError):
    """The link (or its device) refused this send: too large, too soon, over budget."""


@dataclass
class LinkStats:
    """What a link has done, for status pages and the run summary."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    errors: int = 0
    cost: float = 0.0
    last_success: float | None = None  # wall-clock time of the last good exchange
    online_since: float | None = None
    reconnects: int = 0
    last_error: str = ""


@dataclass
class Estimate:
    """Exponentially weighted estimate of a measured quantity, seeded from config."""

    value: float
    weight: float = 0.2
    samples: int = 0

    def update(self, sample: float) -> None:
        # Nonsense from a device (negative, NaN, absurd) must not poison the scheduler.
        if not (0.0 < sample < 1e12):
            return
        self.value = (
            sample if self.samples == 0 else (1 - self.weight) * self.value + self.weight * sample
        )
        self.samples += 1


@dataclass
class LinkParams:
    """The contract's static numbers, from the link's config."""

    name: str
    classes: frozenset[Priority]
    mtu: int  # bytes per frame (narrow) or per request body (IP)
    rate: float  # bytes/s, initial estimate until measured
    rtt: float  # seconds, initial estimate until measured
    cost_per_byte: float = 0.0
    cost_per_message: float = 0.0
    min_interval: float = 0.0  # seconds between sends (Beidou: from the card)
    budget: float | None = None  # most cost this link may spend (None: unlimited)


class Link(ABC):
    """Common part of every link kind.

    Subclasses implement :meth:`connect` (bring the device/session up, raise on failure)
    and :meth:`receive_loop` (read inbound traffic until an error). :meth:`run` wraps them
    in the loop that never dies silently: on error go offline, log, wait, reconnect.
    """

    kind: str = "abstract"
    narrow: bool = True

    def __init__(self, params: LinkParams) -> None:
        self.params = params
        self.name = params.name
        self.classes = params.classes
        self.rate = Estimate(params.rate)
        self.rtt = Estimate(params.rtt)
        self.stats = LinkStats()
        self._online = False
        self._last_send = -1e18
        self.on_state: Callable[[Link], None] | None = None
        self.reconnect_delay = 1.0
        self.max_reconnect_delay = 30.0

    # -- numbers the scheduler uses ---------------------------------------------------------

    @property
    def online(self) -> bool:
        return self._online

    @property
    def mtu(self) -> int:
        return self.params.mtu

    @property
    def min_interval(self) -> float:
        return self.params.min_interval

    def next_send_at(self) -> float:
        """Monotonic time at which the next send is allowed by ``min_interval``."""
        return self._last_send + self.min_interval

    def over_budget(self, nbytes: int, messages: int = 1) -> bool:
        if self.params.budget is None:
            return False
        cost = nbytes * self.params.cost_per_byte + messages * self.params.cost_per_message
        return self.stats.cost + cost > self.params.budget

    def _set_online(self, online: bool) -> None:
        if online != self._online:
            self._online = online
            self.stats.online_since = time.time() if online else None
            log.info("link %s %s", self.name, "online" if online else "offline")
            if self.on_state:
                self.on_state(self)

    def record_send(self, nbytes: int, messages: int = 1) -> None:
        self._last_send = time.monotonic()
        self.stats.frames_sent += messages
        self.stats.bytes_sent += nbytes
        self.stats.cost += (
            nbytes * self.params.cost_per_byte + messages * self.params.cost_per_message
        )

    def record_success(self) -> None:
        self.stats.last_success = time.time()

    # -- the loop that never dies silently -------------------------------------------------

    @abstractmethod
    async def connect(self) -> None:
        """Bring the link up; raise :class:`LinkDown` (or OSError) if it cannot."""

    @abstractmethod
    async def receive_loop(self) -> None:
        """Read inbound traffic until the link fails (raise) or is closed (return)."""

    async def disconnect(self) -> None:
        """Release what :meth:`connect` took. Default: nothing to release."""
        return None

    async def close(self) -> None:
        """Release the link's device for good (the uplink is stopping). Default: nothing."""
        return None

    def device_state(self) -> DeviceState | None:
        """The state of the device behind the link, if it has one (a terminal, a modem)."""
        return None

    async def run(self) -> None:
        delay = self.reconnect_delay
        last_reason = ""
        while True:
            up_at: float | None = None
            try:
                await self.connect()
                self._set_online(True)
                up_at = time.monotonic()
                await self.receive_loop()
                reason = "closed by peer"
            except asyncio.CancelledError:
                self._set_online(False)
                await self.disconnect()
                raise
            except Exception as exc:  # any failure: offline, log, reconnect — never die
                reason = f"{type(exc).__name__}: {exc}"
            self.stats.errors += 1
            self.stats.last_error = reason
            if up_at is not None:
                self.stats.reconnects += 1
                # Only a link that stayed up a while earns a quick retry; one that fails
                # right after connecting (a UDP "connect" always succeeds) backs off.
                if time.monotonic() - up_at > max(STABLE_MIN_S, 2 * delay):
                    delay = self.reconnect_delay
            self._set_online(False)
            await self.disconnect()
            # The same failure again (a long outage) is news only once: the log is in RAM.
            level = logging.INFO if reason == last_reason else logging.WARNING
            last_reason = reason
            log.log(level, "link %s down (%s); reconnecting in %.1f s", self.name, reason, delay)
            await asyncio.sleep(delay)
            delay = min(self.max_reconnect_delay, delay * 2)


class FrameLink(Link):
    """A narrow link carrying binary frames of at most ``mtu`` bytes (Beidou, SMS, LoRa)."""

    narrow = True

    def __init__(self, params: LinkParams) -> None:
        super().__init__(params)
        self.on_frame: Callable[[bytes], None] | None = None

    async def send(self, frame: bytes) -> None:
        """Send one frame; raises :class:`LinkDown` or :class:`LinkRefused`."""
        if not self.online:
            raise LinkDown(f"链路 {self.name} 不在线", f"link {self.name} is offline")
        if len(frame) > self.mtu:
            raise LinkRefused(
                f"帧 {len(frame)} 字节超过 {self.name} 的 MTU {self.mtu}",
                f"frame of {len(frame)} bytes exceeds {self.name}'s MTU {self.mtu}",
            )
        wait = self.next_send_at() - time.monotonic()
        if wait > 0:
            raise LinkRefused(
                f"{self.name} 发送间隔未到，还需 {wait:.1f} 秒",
                f"{self.name}: too soon, {wait:.1f} s until the next send",
            )
        await self.transmit(frame)
        self.record_send(len(frame))

    @abstractmethod
    async def transmit(self, frame: bytes) -> None:
        """Put one frame on the wire (the device-specific part)."""

    def deliver(self, frame: bytes) -> None:
        """Called by the receive loop for each inbound frame."""
        self.stats.frames_received += 1
        self.stats.bytes_received += len(frame)
        self.record_success()
        if self.on_frame:
            self.on_frame(frame)
