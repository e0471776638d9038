"""A simulated LoRa mesh of several nodes: airtime, a shared channel, loss and managed flooding.

Kits attach their :class:`~sim.meshradio.SimulatedRadio` to a node (the unmodified
``meshtastic`` library talks to the radio over TCP or a pty as before); simulated team
members live on nodes without a host. What the model does:

- **Airtime** from the Semtech LoRa formula (AN1200.13) with explicit header, CRC on,
  preamble 16 symbols, as Meshtastic configures the chip. LongFast is SF11, 250 kHz,
  CR 4/5: a symbol takes 2^11 / 250 kHz = 8.192 ms, the preamble (16 + 4.25) symbols =
  166 ms; low-data-rate optimisation is off (it is for symbols over 16 ms). On air a
  packet is the 16-byte Meshtastic header plus the encoded ``Data`` protobuf (payload
  plus about 6 bytes): 30 B ≈ 0.48 s, 100 B ≈ 1.0 s, and a full 233-byte payload
  (255 B on air) ≈ 2.2 s. The raw rate is 11 × 250000 / 2048 × 4/5 ≈ 1074 bit/s.
- **One transmission at a time per neighbourhood**: a node sends only while neither it
  nor any neighbour is transmitting, after a random back-off (a simple CSMA). Hidden
  terminals, capture and collisions are not modelled.
- **Loss** per link (each direction drawn on its own), set by :meth:`MeshNet.join`.
- **Managed flooding**: a node that hears a packet it has not seen before delivers it
  (to its host or member) if addressed to it or broadcast, and rebroadcasts it with
  ``hop_limit - 1`` if the limit is above 0 and the packet was not addressed to it alone.
- **Reliable packets** (``want_ack``), as the firmware's reliable router: the node a packet
  is addressed to answers with a ROUTING_APP ACK (``request_id`` = the packet's id, sent
  back through the mesh, again on a repeated copy); for a broadcast, hearing a neighbour
  repeat it is the implicit ACK. A kit's radio without an answer after ``ack_timeout_s``
  sends the packet again, up to :data:`RETRANSMISSIONS` times, then tells its host
  MAX_RETRANSMIT (a NAK), as firmware does.
- **Channel utilisation** per node, as the firmware reports it: the percentage of the
  last 60 s the node's channel was busy (its own and its neighbours' transmissions);
  ``air_util_tx`` its own transmissions over the last hour. Attached radios tell their
  host both figures in their own device telemetry and local stats every ``telemetry_s``.
- **Emulated time**: ``speed`` emulated seconds pass per real second; every figure
  above is in emulated seconds.

Members on nodes transmit with :meth:`MeshNet.text`, :meth:`~MeshNet.position` and
:meth:`~MeshNet.battery`; a :class:`sim.meshradio.TeamActivity` over the net makes them
behave like a team.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from meshtastic.protobuf import mesh_pb2, telemetry_pb2

from mesh.relay import LONG_FAST, MESH_HEADER_BYTES, Preset
from sim.meshradio import (
    BROADCAST,
    POSITION_APP,
    ROUTING_APP,
    TELEMETRY_APP,
    TEXT_APP,
    Member,
    SimulatedRadio,
)

UTILISATION_WINDOW_S = 60.0  # channel utilisation covers the last minute, as in the firmware
AIR_UTIL_TX_WINDOW_S = 3600.0  # air_util_tx covers the last hour
TX_QUEUE = 16  # packets a node holds for sending; more are dropped (the firmware's queue)
SEEN_MAX = 1024  # packet ids a node remembers to stop re-flooding
BACKOFF_S = 0.3  # most random wait (emulated) before taking a clear channel
DEFAULT_HOP_LIMIT = 3
RETRANSMISSIONS = 3  # a reliable packet is sent again this often before the radio gives up
ACK_TIMEOUT_S = 15.0  # emulated seconds a radio waits for an ACK before sending again


def packet_airtime(packet: Any, preset: Preset = LONG_FAST) -> float:
    return preset.airtime(MESH_HEADER_BYTES + len(packet.decoded.SerializeToString()))


@dataclass(eq=False)
class Node:
    """One radio in the mesh: a kit's (``radio``), a member's (``member``), or a bare repeater."""

    num: int
    radio: SimulatedRadio | None = None
    member: Member | None = None
    neighbours: dict[int, float] = field(default_factory=dict)  # neighbour -> loss
    heard: list[Any] = field(default_factory=list)  # packets delivered to this node
    transmissions: int = 0
    duplicates: int = 0  # copies of a packet already seen
    dropped: int = 0  # packets refused by a full send queue
    tx_until: float = 0.0  # emulated time the node's current transmission ends
    busy: deque[tuple[float, float]] = field(default_factory=deque)  # channel busy intervals
    sent_air: deque[tuple[float, float]] = field(default_factory=deque)  # own transmissions
    queue: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(TX_QUEUE))
    seen: OrderedDict[tuple[int, int], None] = field(default_factory=OrderedDict)

    def first_time(self, packet: Any) -> bool:
        """Remember ``packet``; whether it was new to this node."""
        key = (int(getattr(packet, "from")), int(packet.id))
        if key in self.seen:
            return False
        self.seen[key] = None
        while len(self.seen) > SEEN_MAX:
            self.seen.popitem(last=False)
        return True


def _busy_in(intervals: deque[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)


class MeshNet:
    """Nodes, who hears whom, and one sender per node keeping to the shared channel."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        preset: Preset = LONG_FAST,
        seed: int = 0,
        hop_limit: int = DEFAULT_HOP_LIMIT,
        telemetry_s: float = 10.0,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        self.speed = speed
        self.ack_timeout_s = ack_timeout_s
        self.preset = preset
        self.hop_limit = hop_limit
        self.telemetry_s = telemetry_s
        self.nodes: dict[int, Node] = {}
        self._rng = random.Random(seed)
        self._ids = itertools.count(self._rng.randrange(1, 1 << 30))
        self._t0 = time.monotonic()
        self._air = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        # (origin, packet id) -> retransmission task of a radio's reliable packet.
        self._reliable: dict[tuple[int, int], asyncio.Task[None]] = {}

    # --- building the net -------------------------------------------------------------

    def add(
        self, num: int, *, radio: SimulatedRadio | None = None, member: Member | None = None
    ) -> Node:
        """A node ``num``: a kit's radio (its host's packets go on air), a member, or neither."""
        node = self.nodes[num] = Node(num, radio=radio, member=member)
        if radio is not None:
            radio.air = lambda packet: self.send(num, packet)
        return node

    def join(self, a: int, b: int, loss: float = 0.0) -> None:
        """``a`` and ``b`` hear each other; each packet is lost with probability ``loss``."""
        self.nodes[a].neighbours[b] = loss
        self.nodes[b].neighbours[a] = loss

    def chain(self, *nums: int, loss: float = 0.0) -> None:
        """Each node hears only the one before and the one after it."""
        for a, b in itertools.pairwise(nums):
            self.join(a, b, loss)

    # --- life -------------------------------------------------------------------------

    async def start(self) -> None:
        self._t0 = time.monotonic()
        for node in self.nodes.values():
            self._tasks.append(asyncio.create_task(self._sender(node), name=f"air-{node.num:x}"))
        if any(n.radio is not None for n in self.nodes.values()):
            self._tasks.append(asyncio.create_task(self._telemetry(), name="air-telemetry"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks + list(self._reliable.values()), []
        self._reliable.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def now(self) -> float:
        """Emulated seconds since the net started."""
        return (time.monotonic() - self._t0) * self.speed

    async def sleep(self, emulated_s: float) -> None:
        await asyncio.sleep(emulated_s / self.speed)

    # --- traffic ----------------------------------------------------------------------

    def send(self, num: int, packet: Any) -> bool:
        """Node ``num`` originates ``packet``; False if its send queue is full (dropped)."""
        node = self.nodes[num]
        out = mesh_pb2.MeshPacket()
        out.CopyFrom(packet)
        setattr(out, "from", num)
        if not out.id:
            out.id = next(self._ids) & 0xFFFFFFFF
        if not out.hop_limit:
            out.hop_limit = self.hop_limit
        out.hop_start = out.hop_limit
        node.first_time(out)
        queued = self._queue(node, out)
        if queued and out.want_ack and node.radio is not None:
            key = (num, int(out.id))
            self._reliable[key] = asyncio.ensure_future(self._retransmit(node, out))
        return queued

    def text(self, num: int, text: str, to: int = BROADCAST) -> bool:
        """The member on node ``num`` sends ``text`` (to the channel by default)."""
        data = mesh_pb2.Data(portnum=TEXT_APP, payload=text.encode())
        return self.send(num, mesh_pb2.MeshPacket(to=to, decoded=data))

    def position(
        self, num: int, lat: float, lon: float, alt_m: int | None = None, time_s: int | None = None
    ) -> bool:
        """The member on node ``num`` moves to (and broadcasts) a position."""
        member = self.nodes[num].member
        if member is None:
            raise ValueError(f"node {num:#x} has no member")
        member.lat, member.lon, member.alt_m = lat, lon, alt_m
        data = mesh_pb2.Data(
            portnum=POSITION_APP, payload=member.position_pb(time_s).SerializeToString()
        )
        return self.send(num, mesh_pb2.MeshPacket(to=BROADCAST, decoded=data))

    def battery(self, num: int, percent: int, voltage: float | None = None) -> bool:
        """The member on node ``num`` broadcasts its device telemetry."""
        member = self.nodes[num].member
        if member is None:
            raise ValueError(f"node {num:#x} has no member")
        member.battery, member.voltage = percent, voltage
        metrics = telemetry_pb2.DeviceMetrics(battery_level=percent)
        if voltage is not None:
            metrics.voltage = voltage
        telemetry = telemetry_pb2.Telemetry(time=int(time.time()), device_metrics=metrics)
        data = mesh_pb2.Data(portnum=TELEMETRY_APP, payload=telemetry.SerializeToString())
        return self.send(num, mesh_pb2.MeshPacket(to=BROADCAST, decoded=data))

    async def _retransmit(self, node: Node, packet: Any) -> None:
        """A radio's reliable packet: sent again until answered, then MAX_RETRANSMIT."""
        key = (node.num, int(packet.id))
        try:
            for _ in range(RETRANSMISSIONS):
                await self.sleep(self.ack_timeout_s)
                again = mesh_pb2.MeshPacket()
                again.CopyFrom(packet)
                self._queue(node, again)
            await self.sleep(self.ack_timeout_s)
        finally:
            if self._reliable.get(key) is asyncio.current_task():
                del self._reliable[key]
        if node.radio is not None:
            node.radio.answer(int(packet.id), mesh_pb2.Routing.Error.MAX_RETRANSMIT)

    def _answered(self, node: Node, request_id: int, by: int | None) -> None:
        """The reliable packet ``request_id`` of ``node``'s radio was answered: no more tries;
        an implicit ACK (``by`` None) is the radio's own news for its host."""
        task = self._reliable.pop((node.num, request_id), None)
        if task is None:
            return
        task.cancel()
        if by is None and node.radio is not None:
            node.radio.answer(request_id, mesh_pb2.Routing.Error.NONE)

    def _ack(self, node: Node, packet: Any) -> None:
        """``node`` got ``packet`` addressed to it with ``want_ack``: the ACK goes back."""
        routing = mesh_pb2.Routing(error_reason=mesh_pb2.Routing.Error.NONE)
        data = mesh_pb2.Data(
            portnum=ROUTING_APP, payload=routing.SerializeToString(), request_id=packet.id
        )
        self.send(node.num, mesh_pb2.MeshPacket(to=getattr(packet, "from"), decoded=data))

    def _queue(self, node: Node, packet: Any) -> bool:
        try:
            node.queue.put_nowait(packet)
        except asyncio.QueueFull:
            node.dropped += 1
            return False
        return True

    def utilisation(self, num: int) -> float:
        """Percent of the last minute node ``num``'s channel was busy."""
        now = self.now()
        node = self.nodes[num]
        start = now - UTILISATION_WINDOW_S
        while node.busy and node.busy[0][1] < start:
            node.busy.popleft()
        return 100.0 * _busy_in(node.busy, start, now) / UTILISATION_WINDOW_S

    def air_util_tx(self, num: int) -> float:
        """Percent of the last hour node ``num`` spent transmitting."""
        now = self.now()
        node = self.nodes[num]
        start = now - AIR_UTIL_TX_WINDOW_S
        while node.sent_air and node.sent_air[0][1] < start:
            node.sent_air.popleft()
        return 100.0 * _busy_in(node.sent_air, start, now) / AIR_UTIL_TX_WINDOW_S

    def idle(self) -> bool:
        """Nothing queued and nothing on air anywhere."""
        now = self.now()
        return all(n.queue.empty() and n.tx_until <= now for n in self.nodes.values())

    async def settle(self, timeout_s: float) -> bool:
        """Wait (real seconds) until the net is idle; whether it became idle in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.idle():
                return True
            await asyncio.sleep(0.02)
        return False

    # --- the channel --------------------------------------------------------------------

    def _clear(self, node: Node) -> bool:
        now = self.now()
        return node.tx_until <= now and all(self.nodes[n].tx_until <= now for n in node.neighbours)

    async def _sender(self, node: Node) -> None:
        while True:
            packet = await node.queue.get()
            while True:
                async with self._air:
                    await self._air.wait_for(lambda: self._clear(node))
                await self.sleep(self._rng.uniform(0, BACKOFF_S))
                if self._clear(node):
                    break
            await self._transmit(node, packet)

    async def _transmit(self, node: Node, packet: Any) -> None:
        airtime = packet_airtime(packet, self.preset)
        start = self.now()
        node.tx_until = start + airtime
        node.transmissions += 1
        node.sent_air.append((start, start + airtime))
        for num in (node.num, *node.neighbours):
            self.nodes[num].busy.append((start, start + airtime))
        try:
            await self.sleep(airtime)
        finally:
            node.tx_until = 0.0
            async with self._air:
                self._air.notify_all()
        for num, loss in node.neighbours.items():
            if self._rng.random() >= loss:
                self._heard(self.nodes[num], packet)

    def _heard(self, node: Node, packet: Any) -> None:
        origin = int(getattr(packet, "from"))
        to_us = packet.to == node.num
        if not node.first_time(packet):
            node.duplicates += 1
            if origin == node.num and packet.to == BROADCAST:
                self._answered(node, int(packet.id), None)  # a neighbour repeated it
            elif to_us and packet.want_ack:
                self._ack(node, packet)  # our first ACK may have been lost
            return
        if to_us and packet.decoded.portnum == ROUTING_APP and packet.decoded.request_id:
            self._answered(node, int(packet.decoded.request_id), origin)
        if packet.to in (node.num, BROADCAST):
            node.heard.append(packet)
            if node.radio is not None:
                node.radio.heard(packet)
            elif node.member is not None and packet.decoded.portnum == TEXT_APP:
                node.member.inbox.append(packet.decoded.payload.decode("utf-8", "replace"))
            if to_us and packet.want_ack and (node.radio is not None or node.member is not None):
                self._ack(node, packet)
        if packet.to != node.num and packet.hop_limit > 0:
            again = mesh_pb2.MeshPacket()
            again.CopyFrom(packet)
            again.hop_limit = packet.hop_limit - 1
            self._queue(node, again)

    async def _telemetry(self) -> None:
        """Each kit's radio tells its host its channel figures, as firmware does."""
        while True:
            for node in self.nodes.values():
                if node.radio is not None:
                    node.radio.telemetry(self.utilisation(node.num), self.air_util_tx(node.num))
            await self.sleep(self.telemetry_s)
