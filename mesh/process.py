"""`kit mesh`: the team's Meshtastic traffic into the outbox, and the radio's state on the bus.

Every text a member sends becomes one item (SOS → P0, reports → P1, the rest P1
messages) and every position a P2 track (see :mod:`mesh.reports`). Items wait in a small
in-memory hand-over queue until the edge daemon has them on disk: while the edge is away
they are retried with a growing delay, the most urgent first. The queue is bounded (a
radio can outtalk a dead edge for hours); on overflow the least urgent oldest item is
dropped and logged, and a newer track of a member replaces the one still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import zmq.asyncio

from config.schema import KitConfig
from edge import bus, topics
from edge.client import AsyncEdgeClient, EdgeRefused
from edge.daemon import RPC_SOCKET
from edge.errors import BadItem
from edge.item import Item, Kind
from edge.service import run_service
from mesh.config import MeshConfig
from mesh.radio import (
    BROADCAST,
    MAX_PAYLOAD,
    BadDownlink,
    DataReceived,
    Event,
    MeshRadio,
    PositionReceived,
    RadioOffline,
    TextReceived,
)
from mesh.relay import CentreRelay, FramePort, MeshFrames
from mesh.reports import position_item, text_item

log = logging.getLogger("mesh")

ORDERS_WAITING = 64  # orders for the team held while the radio is away
ORDER_RETRY_S = 10.0
REPORT_S = 10.0  # the radio's state is published this often, and on every change
RETRY_FIRST_S = 0.5  # first wait after the edge did not answer; doubles up to RETRY_MAX_S
RETRY_MAX_S = 30.0


class Handover:
    """Items on their way to the edge daemon: bounded, most urgent first, tracks superseded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: list[Item] = []
        self.ready = asyncio.Event()  # set while anything waits
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> Item | None:
        """Queue ``item``; returns the item dropped to make room (maybe ``item`` itself)."""
        if item.kind is Kind.TRACK:
            self._items = [
                i for i in self._items if not (i.kind is Kind.TRACK and i.source == item.source)
            ]
        self._items.append(item)
        dropped = None
        if len(self._items) > self.size:
            # The least urgent class loses its oldest item: an SOS never makes way for a track.
            dropped = max(self._items, key=lambda i: i.priority)
            self._items.remove(dropped)
            self.dropped += 1
        self.ready.set()
        return dropped

    def next(self) -> Item | None:
        """The item to hand over now: the oldest of the most urgent class."""
        return min(self._items, key=lambda i: i.priority, default=None)

    def done(self, item: Item) -> None:
        with contextlib.suppress(ValueError):  # superseded or dropped meanwhile
            self._items.remove(item)
        if not self._items:
            self.ready.clear()


class MeshService:
    """The radio, its items on their way to the edge, and its state on the bus."""

    def __init__(
        self,
        mesh: MeshConfig,
        edge: AsyncEdgeClient,
        publisher: bus.Publisher,
        radio: MeshRadio | None = None,
    ) -> None:
        self.edge = edge
        self.publisher = publisher
        self.radio = radio if radio is not None else MeshRadio(mesh)
        self.radio.on_event = self.on_event
        self.radio.on_change = self._note_change
        self.queue = Handover(mesh.queue_size)
        self.frames = relay_frames(mesh, self.radio)
        self.accepted = 0
        self.orders_sent = 0
        self.orders_waiting: deque[topics.OrderReceived] = deque(maxlen=ORDERS_WAITING)
        self.links: dict[str, topics.LinkState] = {}
        self.battery: topics.BatteryLevel | None = None
        self._order_came = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    def _note_change(self) -> None:
        self._changed.set()

    def on_event(self, event: Event) -> None:
        """A member's text or position becomes an item in the hand-over queue."""
        item: Item | None = None
        if isinstance(event, DataReceived):
            self.frames.heard(event)
        elif isinstance(event, TextReceived):
            if event.to_kit and is_status_query(event.text):
                task = asyncio.get_running_loop().create_task(self.reply_status(event.sender))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            try:
                item = text_item(event.text, event.sender, self.radio.roster)
            except Exception:  # text_item is total: this is a bug, and the text must be seen
                log.exception("text from %s not filed: %r", event.sender, event.text)
                return
        elif isinstance(event, PositionReceived):
            member = self.radio.roster.get(event.sender)
            item = position_item(
                event.sender,
                event.lat,
                event.lon,
                event.alt_m,
                time_s=event.time_s,
                battery_percent=member.battery_percent if member else None,
            )
        if item is None:
            return
        log.info("%s from %s: %s %s", item.kind.value, item.source, item.priority.name, item.text)
        dropped = self.queue.put(item)
        if dropped is not None:
            log.error(
                "交接队列已满，丢弃 / hand-over queue full, dropped %s %s from %s: %r",
                dropped.priority.name,
                dropped.kind.value,
                dropped.source,
                dropped.text or dropped.position,
            )

    async def deliver(self) -> None:
        """Hand queued items to the edge daemon until cancelled; retry while it is away."""
        delay = RETRY_FIRST_S
        while True:
            await self.queue.ready.wait()
            item = self.queue.next()
            if item is None:
                self.queue.ready.clear()
                continue
            try:
                answer = await self.edge.accept(item)
            except (BadItem, EdgeRefused) as err:  # will never be taken: keep it in the log
                log.error("edge refused %s from %s (%s): %r", item.kind, item.source, err, item)
                self.queue.done(item)
                continue
            except Exception as err:
                log.warning("edge unavailable, retry in %.1f s: %s", delay, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            self.queue.done(item)
            self.accepted += 1
            log.info("accepted #%s: %s from %s", answer.get("seq"), item.kind.value, item.source)

    async def report(self) -> None:
        """Publish the radio's state on change and every ``REPORT_S``, until cancelled."""
        while True:
            self._changed.clear()
            try:
                await self.publisher.publish(topics.DEVICE_STATE, self.radio.state())
            except Exception:
                log.exception("radio state not published")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), REPORT_S)

    async def follow_bus(self, sub: bus.Subscriber) -> None:
        """Links and battery (for status replies) and the centre's orders, from the bus."""
        while True:
            topic, message = await sub.receive()
            if topic is topics.LINK_STATE:
                self.links[message.name] = message
            elif topic is topics.BATTERY_LEVEL:
                self.battery = message
            elif topic is topics.ORDER_RECEIVED and (
                message.target == BROADCAST or message.target.startswith("!")
            ):
                self.orders_waiting.append(message)
                self._order_came.set()

    async def pass_orders(self) -> None:
        """The centre's orders for the team (``^all``) or a member (``!a1b2c3d4``) go out
        over LoRa; while the radio is away they wait (bounded) and are tried again."""
        waiting = self.orders_waiting
        while True:
            self._order_came.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._order_came.wait(), ORDER_RETRY_S if waiting else None)
            while waiting:
                order = waiting[0]
                try:
                    await self.radio.send_text(order_text(order), order.target)
                except RadioOffline as err:
                    log.info("order %d waits for the radio: %s", order.order_id, err)
                    break
                except BadDownlink as err:
                    log.error("order %d cannot go over the mesh: %s", order.order_id, err)
                else:
                    self.orders_sent += 1
                    log.info("order %d sent to %s", order.order_id, order.target)
                waiting.popleft()

    async def reply_status(self, member: str) -> None:
        """Answer a member's "状态"/"status" with the kit's links, queue and battery."""
        try:
            status = await self.edge.call({"op": "status"})
            queued: dict[str, int] | None = status["queued"]
        except Exception:  # the edge restarting: answer with what is known here
            queued = None
        text = status_text(self.links.values(), queued, self.battery)
        try:
            await self.radio.send_text(text, member)
        except (RadioOffline, BadDownlink) as err:
            log.info("status reply to %s not sent: %s", member, err)

    async def run(self, stop: asyncio.Event, bus_in: bus.Subscriber | None = None) -> None:
        await self.radio.start()
        tasks = [
            asyncio.create_task(self.deliver()),
            asyncio.create_task(self.report()),
            asyncio.create_task(self.frames.run()),
        ]
        if bus_in is not None:
            tasks.append(asyncio.create_task(self.follow_bus(bus_in)))
            tasks.append(asyncio.create_task(self.pass_orders()))
        try:
            await stop.wait()
        finally:
            for t in [*tasks, *self._tasks]:
                t.cancel()
            await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
            await self.radio.close()
            if len(self.queue):
                log.error("%d mesh items not handed over at exit", len(self.queue))


STATUS_WORDS = frozenset({"状态", "狀態", "status", "zt"})


def is_status_query(text: str) -> bool:
    """A member asking the kit how it is: "状态" or "status" alone (any case, a ? allowed)."""
    return text.strip().strip("?？!！").strip().casefold() in STATUS_WORDS


def status_text(
    links: Iterable[topics.LinkState],
    queued: Mapping[str, int] | None,
    battery: topics.BatteryLevel | None,
) -> str:
    """The kit's state in one LoRa packet, Chinese first: links, waiting items, battery."""
    parts = ["套件状态"]
    shown = sorted(links, key=lambda ln: ln.name)
    if shown:
        parts.append("链路 " + " ".join(f"{ln.name}{'✓' if ln.online else '✗'}" for ln in shown))
    else:
        parts.append("链路 未知")
    if queued is not None:
        waiting = " ".join(f"{p}:{n}" for p, n in sorted(queued.items()) if n)
        parts.append(f"待发 {waiting or 0}")
    if battery is not None:
        source = "市电" if battery.on_mains else "电池"
        parts.append(f"电量 {battery.percent:.0f}% {source}")
    return _fit("｜".join(p.strip() for p in parts))


def _fit(text: str) -> str:
    raw = text.encode()
    if len(raw) <= MAX_PAYLOAD:
        return text
    return raw[: MAX_PAYLOAD - 3].decode(errors="ignore") + "…"


def order_text(order: topics.OrderReceived) -> str:
    """How an order reads on a handheld: marked as the centre's, cut to one packet."""
    return _fit(f"【指挥中心】{order.text}")


def relay_frames(mesh: MeshConfig, radio: MeshRadio) -> MeshFrames:
    """The frame port for this kit's meshrelay link and the relay for other kits, as configured."""
    port = FramePort(radio, mesh.frame_port) if mesh.frame_port else None
    relay = None
    if mesh.relay_url:
        relay = CentreRelay(radio, mesh.relay_url, mesh.relay_gateway, queue_size=mesh.relay_queue)
    return MeshFrames(port, relay)


async def serve(
    config: KitConfig, stop: asyncio.Event, mesh_config: MeshConfig | None = None
) -> None:
    """Run the team mesh until ``stop``; ``mesh_config`` is the ``[mesh]`` section."""
    mesh = mesh_config if mesh_config is not None else MeshConfig()
    if not mesh.enabled:
        log.info("Mesh 未启用 / mesh disabled: set [mesh] enabled = true to use the radio")
        await stop.wait()
        return
    edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s)
    ctx = zmq.asyncio.Context.instance()
    publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
    bus_in = bus.Subscriber(
        ctx,
        config.endpoint(bus.SUB_SOCKET),
        topics.ORDER_RECEIVED,
        topics.LINK_STATE,
        topics.BATTERY_LEVEL,
    )
    try:
        await MeshService(mesh, edge, publisher).run(stop, bus_in)
    finally:
        bus_in.close()
        publisher.close()
        await edge.close()


def main(config_path: Path | None = None) -> int:
    async def serve_mesh(config: KitConfig, stop: asyncio.Event) -> None:
        await serve(config, stop, config.mesh)

    return run_service("mesh", serve_mesh, config_path)
