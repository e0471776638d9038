"""Loopback relays that shape real traffic like an emulated link, outages included.

``LinkRelay`` carries TCP. Each accepted connection is forwarded to ``target``. Bytes
from client to target are serialized at ``rate`` (target to client at ``rate_down``),
then delayed ``rtt/2`` ± ``jitter``, in order. Time runs on the same ``Clock`` as
``sim.linkemu``.

- Loss: TCP would retransmit, so a chunk that lost any of its ``mtu``-sized segments
  arrives one ``rtt`` late (a head-of-line stall); connections are never dropped for
  loss. Congestion control's slow-down is not modelled.
- Outage: nothing moves. Bytes on the wire when it began arrive ``rtt/2`` after the link
  is back, as TCP resends them. An outage longer than ``reset_after`` resets (RST) every
  connection open at that moment, and any opened while it lasts, like a satellite
  terminal dropping its sessions.
- The client's TCP handshake with the relay is local and not delayed; the relay connects
  to the target once data can flow. ``min_interval`` and cost do not apply here.
- Duplication (``duplicate``): TCP never delivers a byte twice, but a network (a proxy, a
  retrying satellite modem, an attacker) can replay a whole request. With probability
  ``duplicate`` a connection's bytes to the target (its first ``REPLAY_MAX`` bytes) are
  sent again on a new connection once it ends; the answer is discarded. Reordering has no
  meaning at this layer: TCP puts segments back in order (loss shows as the stall above).
- A flap is a short outage; with ``reset_after=0`` it drops every session at once and
  refuses new ones until it is over.

``DatagramRelay`` carries UDP datagrams (narrow frames) through an ``EmulatedLink``, so
every condition applies, per datagram; what the link would refuse is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sim.linkemu import (
    Clock,
    EmulatedLink,
    FrameTooLarge,
    LinkConditions,
    LinkDown,
    LinkEnd,
    LinkStats,
    Outage,
    SentTooSoon,
    Switchable,
)

log = logging.getLogger(__name__)

# One chunk per ~20 ms of link time keeps pacing smooth without a wake-up per byte.
_CHUNK_TIME = 0.02
REPLAY_MAX = 1 << 20  # bytes of a connection kept for a replay


@dataclass
class RelayStats:
    """What the relay has done since it started."""

    connections: int = 0
    resets: int = 0  # by outages, including connections refused while one lasts
    replays: int = 0  # connections whose requests were sent to the target a second time
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(eq=False)
class _Connection:
    writers: list[asyncio.StreamWriter]
    task: asyncio.Task[None] | None = None
    reset: bool = False
    sent: bytearray | None = None  # what went to the target, kept for a replay


class LinkRelay(Switchable):
    """Forwards TCP from ``listen`` to ``target`` through emulated link conditions.

    ``start()`` (or ``async with``) binds ``listen`` (port 0 picks a free port, see
    ``address``) and arms the outage schedule from ``at`` (default: now); ``close()``
    stops listening, resets every connection and waits for its tasks.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        conditions: LinkConditions,
        *,
        name: str = "relay",
        clock: Clock | None = None,
        outages: Iterable[Outage] = (),
        reset_after: float = 20.0,
        connect_timeout: float = 10.0,
        duplicate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(name, clock, outages)
        self.duplicate = duplicate
        self._replays: set[asyncio.Task[None]] = set()
        self.listen = listen
        self.target = target
        self.conditions = conditions
        self.reset_after = reset_after
        self.connect_timeout = connect_timeout
        self.stats = RelayStats()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        # One link, one transmitter per direction: every connection shares its time line,
        # so N parallel connections get the link's rate between them, not N times it.
        self._tx_end = {True: -math.inf, False: -math.inf}
        self._up_since = -math.inf
        self._reset_timer: asyncio.TimerHandle | None = None
        self._refusing = False
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``listen`` with the port actually bound."""
        if self._server is None:
            raise RuntimeError("the relay is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, at: float | None = None) -> None:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        self._arm_schedule(self.clock.now() if at is None else at)

    async def close(self) -> None:
        self._disarm_schedule()
        self._closing = True
        if self._reset_timer is not None:
            self._reset_timer.cancel()
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        for connection in list(self._connections):
            self._reset(connection)
        await asyncio.gather(*tasks, return_exceptions=True)
        replays = list(self._replays)
        for task in replays:
            task.cancel()
        await asyncio.gather(*replays, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _came_up(self) -> None:
        self._up_since = self.clock.now()
        self._refusing = False
        self._closing = False
        if self._reset_timer is not None:
            self._reset_timer.cancel()
            self._reset_timer = None
        self._flowing.set()

    def _went_down(self) -> None:
        self._flowing.clear()
        self._reset_timer = self.clock.call_at(self.clock.now() + self.reset_after, self._reset_all)

    def _reset_all(self) -> None:
        self._refusing = True
        self.stats.resets += len(self._connections)
        for connection in list(self._connections):
            self._reset(connection)

    def _reset(self, connection: _Connection) -> None:
        if connection.reset:
            return
        connection.reset = True
        # Abort here too: a task cancelled before its first step never runs its cleanup.
        for writer in connection.writers:
            _abort(writer)
        if connection.task is not None:
            connection.task.cancel()
        self._connections.discard(connection)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            _abort(writer)
            return
        self.stats.connections += 1
        if self._refusing:
            self.stats.resets += 1
            _abort(writer)
            return
        connection = _Connection([writer])
        if self.duplicate and self._rng.random() < self.duplicate:
            connection.sent = bytearray()
        connection.task = asyncio.create_task(self._forward(connection, reader))
        connection.task.add_done_callback(lambda _: self._connections.discard(connection))
        self._connections.add(connection)

    async def _forward(self, connection: _Connection, client: asyncio.StreamReader) -> None:
        try:
            await self._flowing.wait()
            target, target_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.connect_timeout
            )
            connection.writers.append(target_writer)
            client_writer = connection.writers[0]
            rate_up = self.conditions.rate
            rate_down = self.conditions.rate_down or rate_up
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    self._direction(client, target_writer, rate_up, True, connection.sent)
                )
                group.create_task(self._direction(target, client_writer, rate_down, False))
        except* OSError:
            # One side failed (refused, reset, timed out): pass the failure on as a reset.
            connection.reset = True
        finally:
            for writer in connection.writers:
                if connection.reset:
                    _abort(writer)
                else:
                    writer.close()
            if connection.sent and not self._closing:
                task = asyncio.create_task(self._replay(bytes(connection.sent)))
                self._replays.add(task)
                task.add_done_callback(self._replays.discard)

    async def _replay(self, data: bytes) -> None:
        """The same requests once more, on a new connection; the answers are dropped."""
        self.stats.replays += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.connect_timeout
            )
        except (OSError, TimeoutError):
            return
        try:
            writer.write(data)
            await writer.drain()
            await asyncio.wait_for(reader.read(), self.connect_timeout)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _direction(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rate: float,
        up: bool,
        sent: bytearray | None = None,
    ) -> None:
        chunk = max(512, min(16_384, int(rate * _CHUNK_TIME)))
        on_wire = rate * (1.5 * self.conditions.rtt + self.conditions.jitter)
        # Room for every chunk on the wire, so this queue never limits the rate.
        queue: asyncio.Queue[tuple[bytes, float, int] | None] = asyncio.Queue(
            math.ceil((on_wire + self.conditions.buffer) / chunk) + 2
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._shape(reader, queue, rate, chunk, up))
            group.create_task(self._deliver(queue, writer, up, sent))

    async def _shape(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[bytes, float, int] | None],
        rate: float,
        chunk_size: int,
        up: bool,
    ) -> None:
        conditions, clock, rng = self.conditions, self.clock, self._rng
        last_arrival = -math.inf
        while chunk := await reader.read(chunk_size):
            await self._flowing.wait()
            downs = self._downs
            tx_end = max(clock.now(), self._tx_end[up]) + len(chunk) / rate
            self._tx_end[up] = tx_end
            delay = conditions.rtt / 2 + rng.uniform(-conditions.jitter, conditions.jitter)
            segments = math.ceil(len(chunk) / conditions.mtu)
            if rng.random() < 1 - (1 - conditions.loss) ** segments:
                delay += conditions.rtt
            last_arrival = max(tx_end + max(0.0, delay), last_arrival)
            await queue.put((chunk, last_arrival, downs))
            # Read no more while a buffer's worth waits: the sender feels TCP back-pressure.
            await clock.sleep_until(tx_end - conditions.buffer / rate)
        await queue.put(None)

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[bytes, float, int] | None],
        writer: asyncio.StreamWriter,
        up: bool,
        sent: bytearray | None = None,
    ) -> None:
        while (item := await queue.get()) is not None:
            chunk, arrival, downs = item
            await self.clock.sleep_until(arrival)
            while downs != self._downs:
                # An outage caught these bytes on the wire: TCP resends them once it is over.
                await self._flowing.wait()
                downs = self._downs
                await self.clock.sleep_until(max(arrival, self._up_since + self.conditions.rtt / 2))
            writer.write(chunk)
            await writer.drain()
            if sent is not None and len(sent) < REPLAY_MAX:
                sent += chunk[: REPLAY_MAX - len(sent)]
            if up:
                self.stats.bytes_up += len(chunk)
            else:
                self.stats.bytes_down += len(chunk)
        if writer.can_write_eof():
            writer.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: closing sends RST, as a peer sees a dropped satellite session.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- datagrams -----------------------------------------------------------------------------

# Datagrams waiting for the emulated link's transmit buffer, per direction; past this the
# relay drops, as a radio's full queue would.
_BACKLOG = 256
_DIRECTIONS = {"up": "kit→centre", "down": "centre→kit"}
_REASONS = {
    "mtu": "over the MTU",
    "too_soon": "within min_interval",
    "down": "link down",
    "backlog": "transmit buffer full",
    "no_kit": "no kit address yet",
}


@dataclass
class DatagramStats:
    """What the datagram relay has done: per direction as the emulated link counted it
    (sent, delivered, lost on the way, cost), plus datagrams dropped before the link.

    ``dropped`` reasons: ``mtu`` (over the MTU), ``too_soon`` (within ``min_interval``),
    ``down`` (during an outage), ``backlog`` (transmit buffer full), ``no_kit`` (an answer
    before the kit sent anything), ``refused`` (the target's port answered ICMP refused).
    """

    up: LinkStats  # kit → centre
    down: LinkStats  # centre → kit
    dropped: Counter[str] = field(default_factory=Counter)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(
        self,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.on_datagram = on_datagram
        self.on_error = on_error
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class DatagramRelay(Switchable):
    """Forwards UDP datagrams from ``listen`` to ``target`` through an ``EmulatedLink``.

    Datagrams from the kit go through the link's kit end to ``target`` (the centre's frame
    gateway); the gateway's answers go back through the centre end to the kit's address
    (the last one a datagram came from). UDP cannot refuse, so a datagram over the MTU,
    within ``min_interval`` of the previous one in its direction, or sent during an outage
    is dropped and counted in ``stats.dropped`` by reason; random loss and frames caught on
    the wire by an outage are counted by the link (``stats.up`` / ``stats.down``).
    ``start()`` (or ``async with``) binds ``listen`` (port 0 picks a free port, see
    ``address``) and arms the outage schedule from ``at`` (default: now).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        conditions: LinkConditions,
        *,
        name: str = "relay",
        clock: Clock | None = None,
        outages: Iterable[Outage] = (),
        seed: int | None = None,
    ) -> None:
        super().__init__(name, clock, outages)
        self.listen = listen
        self.target = target
        self.conditions = conditions
        self.link = EmulatedLink(conditions, name=name, clock=self.clock, seed=seed)
        self.stats = DatagramStats(up=self.link.kit.stats, down=self.link.centre.stats)
        self._kit_side: asyncio.DatagramTransport | None = None
        self._centre_side: asyncio.DatagramTransport | None = None
        self._endpoints: list[_Endpoint] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._kit_address: tuple[str, int] | None = None
        self._upward: asyncio.Queue[bytes] = asyncio.Queue(_BACKLOG)
        self._downward: asyncio.Queue[bytes] = asyncio.Queue(_BACKLOG)

    @property
    def address(self) -> tuple[str, int]:
        """Where the kit sends: ``listen`` with the port actually bound."""
        if self._kit_side is None:
            raise RuntimeError("the relay is not started")
        host, port = self._kit_side.get_extra_info("sockname")[:2]
        return host, port

    async def start(self, at: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        kit = _Endpoint(self._from_kit, lambda exc: self._socket_error("kit", exc))
        self._kit_side, _ = await loop.create_datagram_endpoint(lambda: kit, local_addr=self.listen)
        self._endpoints.append(kit)
        # Connected to the target, so the kernel reports its ICMP errors to this socket.
        centre = _Endpoint(self._from_centre, lambda exc: self._socket_error("target", exc))
        self._centre_side, _ = await loop.create_datagram_endpoint(
            lambda: centre, remote_addr=self.target
        )
        self._endpoints.append(centre)
        self.link.kit.on_receive = self._to_kit
        self.link.centre.on_receive = self._to_centre
        self._pumps = [
            asyncio.create_task(self._pump(self._upward, self.link.kit, "up")),
            asyncio.create_task(self._pump(self._downward, self.link.centre, "down")),
        ]
        self._arm_schedule(self.clock.now() if at is None else at)

    async def close(self) -> None:
        """Stop the schedule and both sockets; datagrams still on the link count as lost."""
        self._disarm_schedule()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self.link.close()
        for transport in (self._kit_side, self._centre_side):
            if transport is not None:
                transport.close()
        await asyncio.gather(*(endpoint.closed for endpoint in self._endpoints))

    def _came_up(self) -> None:
        self.link.set_online(True)

    def _went_down(self) -> None:
        self.link.set_online(False)

    def _from_kit(self, data: bytes, addr: tuple[str, int]) -> None:
        self._kit_address = addr
        self._enqueue(self._upward, data, "up")

    def _from_centre(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._kit_address is None:
            self._drop("no_kit", "down", len(data))
            return
        self._enqueue(self._downward, data, "down")

    def _enqueue(self, queue: asyncio.Queue[bytes], data: bytes, direction: str) -> None:
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            self._drop("backlog", direction, len(data))

    async def _pump(self, queue: asyncio.Queue[bytes], end: LinkEnd, direction: str) -> None:
        while True:
            data = await queue.get()
            try:
                await end.send(data)
            except FrameTooLarge:
                self._drop("mtu", direction, len(data))
            except SentTooSoon:
                self._drop("too_soon", direction, len(data))
            except LinkDown:
                self._drop("down", direction, len(data))

    def _to_centre(self, frame: bytes) -> None:
        if self._centre_side is not None and not self._centre_side.is_closing():
            self._centre_side.sendto(frame)

    def _to_kit(self, frame: bytes) -> None:
        if self._kit_side is not None and not self._kit_side.is_closing():
            self._kit_side.sendto(frame, self._kit_address)

    def _drop(self, reason: str, direction: str, size: int) -> None:
        self.stats.dropped[reason] += 1
        log.debug(
            "relay %s dropped a %d-byte datagram %s: %s",
            self.name,
            size,
            _DIRECTIONS[direction],
            _REASONS[reason],
        )

    def _socket_error(self, side: str, exc: Exception) -> None:
        # Only the connected target socket hears ICMP; each refusal is a datagram lost.
        if side == "target" and isinstance(exc, ConnectionRefusedError):
            self.stats.dropped["refused"] += 1
        log.debug("relay %s: %s socket error: %s", self.name, side, exc)
