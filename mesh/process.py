"""`kit mesh`: the team's Meshtastic traffic into the outbox, and the radio's state on the bus.

Every text a member sends becomes one item (SOS → P0, reports → P1, the rest P1
messages) and every position a P2 track (see :mod:`mesh.reports`). Items wait in a small
in-memory hand-over queue until the edge daemon has them on disk: while the edge is away
they are retried with a growing delay, the most urgent first. The queue is bounded (a
radio can outtalk a dead edge for hours); on overflow the least urgent oldest item is
dropped and logged, and a newer track of a member replaces the one still waiting.

The centre's orders for the team or a member go out with ``want_ack``: the member's
routing ACK (for the channel: the radio's implicit ACK) files a P1 delivery receipt for
the centre (:func:`delivery_receipt`); a NAK or no answer in ``order_ack_timeout_s`` sends
the order again, up to ``order_tries`` times, then the receipt says why it failed. The
team roster goes on the bus (``mesh.team``) when it changes, at most every
:data:`TEAM_MIN_S`, and every :data:`TEAM_EVERY_S`, for ``kit status`` and the web page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import OrderedDict, deque
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from config.schema import KitConfig
from edge import bus, topics
from edge.client import AsyncEdgeClient, EdgeRefused
from edge.daemon import RPC_SOCKET
from edge.errors import BadItem
from edge.item import DataValue, Item, Kind, new_item
from edge.service import run_service
from mesh.config import MeshConfig
from mesh.radio import (
    BROADCAST,
    MAX_PAYLOAD,
    AckReceived,
    BadDownlink,
    ChannelReport,
    DataReceived,
    Event,
    MeshRadio,
    PositionReceived,
    RadioOffline,
    TextReceived,
)
from mesh.relay import CentreRelay, FramePort, MeshFrames
from mesh.reports import position_item, text_item
from mesh.roster import team_roster
from security import tlsid
from security.cli import kit_security

log = logging.getLogger("mesh")

ORDERS_WAITING = 64  # orders for the team held while the radio is away
ORDER_RETRY_S = 10.0
REPORT_S = 10.0  # the radio's state is published this often, and on every change
RETRY_FIRST_S = 0.5  # first wait after the edge did not answer; doubles up to RETRY_MAX_S
RETRY_MAX_S = 30.0
TEAM_MIN_S = 5.0  # the team roster is published at most this often …
TEAM_EVERY_S = 30.0  # … and at least this often
EARLY_ACKS = 64  # the mesh's answers kept for a packet id the kit has not noted yet


@dataclass(slots=True)
class OrderTry:
    """An order for the team or a member on its way over the mesh, and how often it was sent."""

    order: topics.OrderReceived
    tries: int = 0


def delivery_receipt(attempt: OrderTry, delivered: bool, error: str = "") -> Item:
    """The P1 receipt telling the centre an order reached its member (or the channel), or not.

    ``data``: ``order_id``, ``link`` (how the order reached the kit), ``member`` (``^all``
    or ``!a1b2c3d4``), ``delivered``; when not delivered also ``error`` (the mesh's routing
    error, ``TIMEOUT`` or ``BAD_DESTINATION``) and ``tries``.
    """
    order = attempt.order
    data: dict[str, DataValue] = {
        "order_id": order.order_id,
        "link": order.link,
        "member": order.target,
        "delivered": delivered,
    }
    if not delivered:
        data |= {"error": error, "tries": attempt.tries}
    return new_item("receipt", source="mesh", data=data)


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
        *,
        team_min_s: float = TEAM_MIN_S,
        team_every_s: float = TEAM_EVERY_S,
        relay_tls: tuple[ssl.SSLContext, str] | None = None,
    ) -> None:
        self.mesh = mesh
        self.edge = edge
        self.publisher = publisher
        self.radio = radio if radio is not None else MeshRadio(mesh)
        self.radio.on_event = self.on_event
        self.radio.on_change = self._note_change
        self.queue = Handover(mesh.queue_size)
        self.frames = relay_frames(mesh, self.radio, relay_tls)
        self.accepted = 0
        self.orders_sent = 0
        self.orders_delivered = 0
        self.orders_failed = 0
        self.orders_waiting: deque[OrderTry] = deque(maxlen=ORDERS_WAITING)
        self.team_min_s = team_min_s
        self.team_every_s = team_every_s
        self.team_published = 0
        self._team_changed = asyncio.Event()
        # Packet id -> (the order's target, the mesh's answer to come).
        self._acks: dict[int, tuple[str, asyncio.Future[AckReceived]]] = {}
        self._early_acks: OrderedDict[int, AckReceived] = OrderedDict()
        self.links: dict[str, topics.LinkState] = {}
        self.battery: topics.BatteryLevel | None = None
        self._order_came = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    def _note_change(self) -> None:
        self._changed.set()
        if self.radio.online and self.orders_waiting:
            self._order_came.set()  # the radio is back: orders waiting for it go now

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_event(self, event: Event) -> None:
        """A member's text or position becomes an item in the hand-over queue."""
        item: Item | None = None
        if not isinstance(event, AckReceived | ChannelReport | DataReceived):
            self._team_changed.set()  # the roster learnt something
        if isinstance(event, AckReceived):
            self._heard_ack(event)
        elif isinstance(event, ChannelReport):
            self.frames.channel_changed()
        elif isinstance(event, DataReceived):
            self.frames.heard(event)
        elif isinstance(event, TextReceived):
            if event.to_kit and is_status_query(event.text):
                self._spawn(self.reply_status(event.sender))
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
        self._hand_over(item)

    def _hand_over(self, item: Item) -> None:
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

    async def report_team(self) -> None:
        """Publish the team roster when it changed (at most every ``team_min_s``) and every
        ``team_every_s``, until cancelled."""
        while True:
            self._team_changed.clear()
            try:
                await self.publisher.publish(topics.TEAM_ROSTER, team_roster(self.radio.roster))
                self.team_published += 1
            except Exception:
                log.exception("team roster not published")
            await asyncio.sleep(self.team_min_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._team_changed.wait(), max(0.0, self.team_every_s - self.team_min_s)
                )

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
                self.orders_waiting.append(OrderTry(message))
                self._order_came.set()

    async def pass_orders(self) -> None:
        """The centre's orders for the team (``^all``) or a member (``!a1b2c3d4``) go out
        over LoRa; while the radio is away they wait (bounded) and are tried again.

        Each is sent with ``want_ack``; the mesh's answer (:meth:`_await_ack`) decides
        whether it was delivered, is sent again, or is reported undeliverable.
        """
        waiting = self.orders_waiting
        while True:
            self._order_came.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._order_came.wait(), ORDER_RETRY_S if waiting else None)
            while waiting:
                attempt = waiting[0]
                order = attempt.order
                try:
                    packet_id = await self.radio.send_text(order_text(order), order.target)
                except RadioOffline as err:
                    log.info("order %d waits for the radio: %s", order.order_id, err)
                    break
                except BadDownlink as err:
                    log.error("order %d cannot go over the mesh: %s", order.order_id, err)
                    self._delivered(attempt, False, "BAD_DESTINATION")
                else:
                    attempt.tries += 1
                    self.orders_sent += 1
                    log.info(
                        "order %d sent to %s (try %d, packet %d)",
                        order.order_id,
                        order.target,
                        attempt.tries,
                        packet_id,
                    )
                    self._spawn(self._await_ack(attempt, packet_id))
                waiting.popleft()

    def _heard_ack(self, ack: AckReceived) -> None:
        waiter = self._acks.get(ack.packet_id)
        if waiter is None:
            self._early_acks[ack.packet_id] = ack
            while len(self._early_acks) > EARLY_ACKS:
                self._early_acks.popitem(last=False)
            return
        target, future = waiter
        if _settles(ack, target) and not future.done():
            future.set_result(ack)

    async def _await_ack(self, attempt: OrderTry, packet_id: int) -> None:
        """Wait for the mesh's answer to one send of an order, then act on it."""
        target = attempt.order.target
        ack = self._early_acks.pop(packet_id, None)
        if ack is None or not _settles(ack, target):
            future: asyncio.Future[AckReceived] = asyncio.get_running_loop().create_future()
            self._acks[packet_id] = (target, future)
            try:
                ack = await asyncio.wait_for(future, self.mesh.order_ack_timeout_s)
            except TimeoutError:
                ack = None
            finally:
                self._acks.pop(packet_id, None)
        order_id = attempt.order.order_id
        if ack is not None and ack.ok:
            log.info("order %d delivered to %s (acknowledged by %s)", order_id, target, ack.by)
            self._delivered(attempt, True)
            return
        reason = "TIMEOUT" if ack is None else ack.reason
        if attempt.tries < self.mesh.order_tries:
            log.info("order %d not delivered to %s (%s): sending again", order_id, target, reason)
            self.orders_waiting.append(attempt)
            self._order_came.set()
            return
        log.warning(
            "指令 %d 无法送达 %s / order %d undeliverable to %s after %d tries: %s",
            order_id,
            target,
            order_id,
            target,
            attempt.tries,
            reason,
        )
        self._delivered(attempt, False, reason)

    def _delivered(self, attempt: OrderTry, delivered: bool, error: str = "") -> None:
        if delivered:
            self.orders_delivered += 1
        else:
            self.orders_failed += 1
        self._hand_over(delivery_receipt(attempt, delivered, error))

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
            asyncio.create_task(self.report_team()),
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
            if self.orders_waiting or self._acks:
                log.warning(
                    "退出时 %d 条指令未确认送达 / %d orders not known delivered at exit",
                    len(self.orders_waiting) + len(self._acks),
                    len(self.orders_waiting) + len(self._acks),
                )


def _settles(ack: AckReceived, target: str) -> bool:
    """Whether the mesh's answer settles a send to ``target``: any refusal does; for a member
    only the member's own ACK, not the implicit one of a neighbour heard repeating it."""
    return not ack.ok or target == BROADCAST or ack.by == target


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


def relay_frames(
    mesh: MeshConfig, radio: MeshRadio, tls: tuple[ssl.SSLContext, str] | None = None
) -> MeshFrames:
    """The frame port for this kit's meshrelay link and the relay for other kits, as configured."""
    port = FramePort(radio, mesh.frame_port) if mesh.frame_port else None
    relay = None
    if mesh.relay_url:
        ctx, name = tls if tls is not None else (None, None)
        relay = CentreRelay(
            radio,
            mesh.relay_url,
            mesh.relay_gateway,
            queue_size=mesh.relay_queue,
            tls=ctx,
            server_hostname=name,
        )
    return MeshFrames(port, relay)


def _relay_tls(config: KitConfig, mesh: MeshConfig) -> tuple[ssl.SSLContext, str] | None:
    """An https relay posts with this kit's mutual-TLS identity (security.tlsid)."""
    if not (mesh.relay_url or "").startswith("https://"):
        return None
    security = kit_security(config)
    if security is None:
        return None  # no keys: the system's certificate store, no client certificate
    try:
        return tlsid.kit_context(security), tlsid.server_name(config.kit.id)
    finally:
        security.state.close()


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
        await MeshService(mesh, edge, publisher, relay_tls=_relay_tls(config, mesh)).run(
            stop, bus_in
        )
    finally:
        bus_in.close()
        publisher.close()
        await edge.close()


def main(config_path: Path | None = None) -> int:
    async def serve_mesh(config: KitConfig, stop: asyncio.Event) -> None:
        await serve(config, stop, config.mesh)

    return run_service("mesh", serve_mesh, config_path)
