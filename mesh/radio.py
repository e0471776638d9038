"""The kit's Meshtastic radio as a device: the real library, reconnects, typed events, downlink.

:class:`MeshRadio` drives ``meshtastic``'s ``TCPInterface`` or ``SerialInterface`` (as
:class:`MeshConfig` says; ``KIT_BACKEND=sim`` starts a :class:`sim.meshradio.SimulatedRadio`
in-process, with a demo team that walks, reports its battery and texts now and then
(``KIT_SIM_TEAM_SPEED`` speeds it up), and connects to it over TCP). The library calls
back from its own threads through pypubsub; each callback is turned into a small typed
event right there and handed to the asyncio loop with ``call_soon_threadsafe``, so nothing
of the library's dicts leaks out and nothing the radio sends can raise in the kit.

The library reconnects a dropped TCP socket once by itself and re-runs the handshake after
a radio reboots; when its reader thread ends (port gone, radio unreachable) or a handshake
does not finish in ``handshake_timeout_s``, :class:`MeshRadio` drops the interface and
connects again, waiting longer after each failure (``reconnect_min_s`` … ``reconnect_max_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pubsub import pub

from drivers.backend import kind as backend_kind
from edge.errors import KitError
from edge.item import Position
from edge.topics import DeviceState
from mesh.config import MeshConfig
from mesh.roster import Roster

log = logging.getLogger(__name__)

BROADCAST = "^all"
BROADCAST_NUM = 0xFFFFFFFF
MAX_PAYLOAD = 233  # bytes in one Meshtastic packet (the library refuses more)
READER_EXIT_S = 0.5  # a reader that lost its port ends within this; one that reads on, rebooted
_NODE_ID = re.compile(r"![0-9a-f]{8}\Z")
TEXT_APP, POSITION_APP, NODEINFO_APP, ROUTING_APP, TELEMETRY_APP = 1, 3, 4, 5, 67
PRIVATE_APP = 256  # kit-to-kit frames (see mesh.relay)


class RadioOffline(KitError, ConnectionError):
    """The Meshtastic radio is not connected, so nothing can be sent to the team now."""


class BadDownlink(KitError, ValueError):
    """A text for the team that cannot go out as given (too long, unknown address)."""


class HandshakeTimeout(KitError, TimeoutError):
    """The radio did not finish sending its config in time."""


def node_id(num: int) -> str:
    return f"!{num & 0xFFFFFFFF:08x}"


# --- events: what the radio heard, as plain values -----------------------------------


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """A node's record from the radio's node list (at connect) or its own NODEINFO packet."""

    node_id: str
    long_name: str | None
    short_name: str | None
    heard_s: float | None
    battery_percent: int | None = None
    voltage: float | None = None
    position: Position | None = None
    position_s: float | None = None
    snr: float | None = None


@dataclass(frozen=True, slots=True)
class TextReceived:
    sender: str
    text: str
    to_kit: bool  # sent to the kit's node rather than the channel
    channel: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class PositionReceived:
    sender: str
    lat: float
    lon: float
    alt_m: float | None
    time_s: int | None  # the handheld's GPS time, if it sent one


@dataclass(frozen=True, slots=True)
class TelemetryReceived:
    sender: str
    battery_percent: int | None
    voltage: float | None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The mesh's answer to a packet the kit sent with ``want_ack``."""

    packet_id: int
    ok: bool
    reason: str  # "NONE" when delivered, else the firmware's routing error
    by: str  # the node that answered (the kit's own node for an implicit broadcast ACK)


@dataclass(frozen=True, slots=True)
class ChannelReport:
    """The kit's own radio reports how busy the channel is (its device telemetry)."""

    utilisation: float  # percent of the last minute the channel was busy
    air_util_tx: float | None  # percent of the last hour the radio itself transmitted


@dataclass(frozen=True, slots=True)
class DataReceived:
    """A PRIVATE_APP packet: a frame from another kit (see :mod:`mesh.relay`)."""

    sender: str
    sender_num: int
    payload: bytes
    to_kit: bool


Event = (
    NodeSeen
    | TextReceived
    | PositionReceived
    | TelemetryReceived
    | AckReceived
    | DataReceived
    | ChannelReport
)


def _position(lat: float, lon: float, alt: float | None) -> Position | None:
    if lat == 0 and lon == 0:
        return None  # Meshtastic's "no position"
    try:
        return Position(lat, lon, alt)
    except KitError:
        return None


def packet_event(packet: Any, my_num: int | None) -> Event | None:
    """The event a received ``MeshPacket`` means; ``None`` if the kit has no use for it.

    Raises on a payload that does not parse: the caller counts the packet as dropped.
    """
    from meshtastic.protobuf import mesh_pb2, telemetry_pb2

    if packet.WhichOneof("payload_variant") != "decoded":
        return None  # encrypted for a channel this radio does not have
    sender_num = int(getattr(packet, "from"))
    sender = node_id(sender_num)
    data = packet.decoded
    port = int(data.portnum)
    if port == ROUTING_APP:
        if not data.request_id:
            return None
        routing = mesh_pb2.Routing.FromString(data.payload)
        reason = mesh_pb2.Routing.Error.Name(routing.error_reason)
        return AckReceived(int(data.request_id), routing.error_reason == 0, reason, sender)
    if sender_num == my_num:
        return _own_channel(data) if port == TELEMETRY_APP else None  # else our own, echoed
    if port == TEXT_APP:
        text = data.payload.decode("utf-8", "replace")
        return TextReceived(sender, text, packet.to == my_num, int(packet.channel), int(packet.id))
    if port == POSITION_APP:
        pos = mesh_pb2.Position.FromString(data.payload)
        if not (pos.HasField("latitude_i") and pos.HasField("longitude_i")):
            return None
        alt = float(pos.altitude) if pos.HasField("altitude") else None
        return PositionReceived(
            sender, pos.latitude_i * 1e-7, pos.longitude_i * 1e-7, alt, int(pos.time) or None
        )
    if port == TELEMETRY_APP:
        telemetry = telemetry_pb2.Telemetry.FromString(data.payload)
        if not telemetry.HasField("device_metrics"):
            return None
        m = telemetry.device_metrics
        return TelemetryReceived(
            sender,
            int(m.battery_level) if m.HasField("battery_level") else None,
            float(m.voltage) if m.HasField("voltage") else None,
        )
    if port == PRIVATE_APP:
        return DataReceived(sender, sender_num, bytes(data.payload), packet.to == my_num)
    if port == NODEINFO_APP:
        user = mesh_pb2.User.FromString(data.payload)
        return NodeSeen(sender, user.long_name or None, user.short_name or None, time.time())
    raise ValueError(f"portnum {port} is not one the kit reads")


def _own_channel(data: Any) -> ChannelReport | None:
    """The channel figures in the radio's own telemetry (device metrics or local stats)."""
    from meshtastic.protobuf import telemetry_pb2

    telemetry = telemetry_pb2.Telemetry.FromString(data.payload)
    which = telemetry.WhichOneof("variant")
    if which == "device_metrics" and telemetry.device_metrics.HasField("channel_utilization"):
        m = telemetry.device_metrics
        util, air = float(m.channel_utilization), float(m.air_util_tx)
        has_air = m.HasField("air_util_tx")
    elif which == "local_stats":
        stats = telemetry.local_stats
        util, air, has_air = float(stats.channel_utilization), float(stats.air_util_tx), True
    else:
        return None
    if not 0 <= util <= 100:  # NaN included: a figure the 40 % rule cannot act on
        raise ValueError(f"channel utilisation {util} is not a percentage")
    return ChannelReport(util, air if has_air and 0 <= air <= 100 else None)


def node_event(node: dict[str, Any]) -> NodeSeen:
    """A node record of the library's node list (``MessageToDict`` of a ``NodeInfo``)."""
    user = node.get("user") or {}
    metrics = node.get("deviceMetrics") or {}
    pos = node.get("position") or {}
    position = None
    if "latitudeI" in pos and "longitudeI" in pos:
        alt = pos.get("altitude")
        position = _position(
            int(pos["latitudeI"]) * 1e-7,
            int(pos["longitudeI"]) * 1e-7,
            None if alt is None else float(alt),
        )
    battery = metrics.get("batteryLevel")
    voltage = metrics.get("voltage")
    heard = node.get("lastHeard")
    snr = node.get("snr")
    return NodeSeen(
        node_id(int(node["num"])),
        str(user["longName"]) if user.get("longName") else None,
        str(user["shortName"]) if user.get("shortName") else None,
        float(heard) if heard else None,
        int(battery) if battery is not None else None,
        float(voltage) if voltage is not None else None,
        position,
        float(pos["time"]) if position is not None and pos.get("time") else None,
        float(snr) if snr is not None else None,
    )


# --- the library, narrowly ---------------------------------------------------------------


class _Link:
    """One library interface: made unconnected, connected in a worker thread, closed once."""

    def __init__(self, config: MeshConfig, host: str, port: int) -> None:
        timeout = max(1, round(config.handshake_timeout_s))
        if config.connection == "tcp":
            from meshtastic.tcp_interface import TCPInterface

            self.where = f"tcp {host}:{port}"
            self.iface: Any = TCPInterface(host, portNumber=port, connectNow=False, timeout=timeout)
        else:
            from meshtastic.serial_interface import SerialInterface

            self.where = f"serial {config.device}"
            self.iface = SerialInterface(config.device, connectNow=False, timeout=timeout)
        # After a radio reboot the library starts a second heartbeat timer without stopping
        # the first, and close() stops only the last: one leaked thread per reboot.
        start_heartbeat = self.iface._startHeartbeat

        def start_one_heartbeat() -> None:
            timer = self.iface.heartbeatTimer
            if timer is not None:
                timer.cancel()
            start_heartbeat()

        self.iface._startHeartbeat = start_one_heartbeat

    def connect(self) -> None:
        """Open the port and run the handshake; blocks until the radio sent its config."""
        self.iface.connect()

    def abort(self) -> None:
        """Make a :meth:`connect` blocked on the handshake return (it raises the failure)."""
        self.iface.failure = HandshakeTimeout("电台握手超时", "radio handshake timed out")
        self.iface.isConnected.set()

    def reader_ends(self, within_s: float) -> bool:
        """Whether the library's reader thread ends (port gone) rather than reads on."""
        thread = getattr(self.iface, "_rxThread", None)
        if not isinstance(thread, threading.Thread):
            return True
        thread.join(within_s)
        return not thread.is_alive()

    def my_num(self) -> int | None:
        info = self.iface.myInfo
        return None if info is None else int(info.my_node_num)

    def send_text(self, text: str, destination: str, want_ack: bool, channel: int) -> int:
        packet = self.iface.sendText(
            text, destinationId=destination, wantAck=want_ack, channelIndex=channel
        )
        return int(packet.id)

    def send_data(self, payload: bytes, destination: int, want_ack: bool, channel: int) -> int:
        packet = self.iface.sendData(
            payload,
            destinationId=destination,
            portNum=PRIVATE_APP,
            wantAck=want_ack,
            channelIndex=channel,
        )
        return int(packet.id)

    def channel_utilisation(self) -> float | None:
        """What the radio last reported in its own device telemetry, in percent."""
        num = self.my_num()
        node = None if num is None else (self.iface.nodesByNum or {}).get(num)
        value = ((node or {}).get("deviceMetrics") or {}).get("channelUtilization")
        return None if value is None else float(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a half-dead interface may fail to say goodbye
            self.iface.close()
        # A TCP reconnect racing the close may have left a fresh socket behind.
        sock = getattr(self.iface, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


# --- the device ------------------------------------------------------------------------


class MeshRadio:
    """The kit's Meshtastic radio: connects, keeps the roster, raises events, sends texts.

    ``on_event`` is called in the event loop for every :data:`Event`, after the
    :attr:`roster` has learnt from it.
    """

    kind = "meshtastic"

    def __init__(
        self,
        config: MeshConfig,
        *,
        name: str = "mesh",
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.on_event = on_event
        self.on_change: Callable[[], None] | None = None  # the state changed (for reporting)
        self.roster = Roster(config.max_members)
        self.simulator: Any = None  # the SimulatedRadio under KIT_BACKEND=sim
        self.my_num: int | None = None
        self.received = 0
        self.dropped = 0
        self.sent = 0
        self.reconnects = 0
        self.last_error = ""
        self.channel: ChannelReport | None = None  # the radio's last own channel figures
        self._link: _Link | None = None
        self._host, self._port = config.host, config.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()  # handshake done, packets flow
        self._gone = asyncio.Event()  # the library said the connection was lost
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool:
        return self._up.is_set()

    # --- life --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if backend_kind() == "sim":
            from sim.meshradio import Cadence, SimulatedRadio, demo_team

            # A live team: positions, battery and now and then a text (KIT_SIM_TEAM_SPEED).
            self.simulator = SimulatedRadio(members=demo_team(), team=Cadence.from_env())
            await self.simulator.start()
            self.config = self.config.model_copy(update={"connection": "tcp"})
            self._host, self._port = "127.0.0.1", self.simulator.port
        for topic, listener in self._listeners():
            pub.subscribe(listener, topic)
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-connect")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for topic, listener in self._listeners():
            with contextlib.suppress(Exception):
                pub.unsubscribe(listener, topic)
        if self.simulator is not None:
            await self.simulator.close()
            self.simulator = None

    def _listeners(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("meshtastic.receive", self._heard_packet),
            ("meshtastic.node.updated", self._heard_node),
            ("meshtastic.connection.established", self._heard_established),
            ("meshtastic.connection.lost", self._heard_lost),
        ]

    async def _run(self) -> None:
        """Connect, watch, drop, wait, again: until cancelled."""
        delay = self.config.reconnect_min_s
        while True:
            link = await self._connect()
            if link is not None:
                delay = self.config.reconnect_min_s
                try:
                    await self._watch(link)
                finally:
                    await self._drop(link)
            self.reconnects += 1
            log.info("重连电台，%.1f 秒后 / reconnecting to the radio in %.1f s", delay, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _connect(self) -> _Link | None:
        try:
            link = _Link(self.config, self._host, self._port)
        except Exception as err:
            self._failed(f"cannot set up the interface: {err}")
            return None
        self._link = link
        self._gone.clear()
        # The worker thread cannot be cancelled: on time-out or cancellation the handshake
        # wait is cut short (abort), and the thread is always waited for.
        worker = asyncio.ensure_future(asyncio.to_thread(link.connect))
        try:
            done, _ = await asyncio.wait({worker}, timeout=self.config.handshake_timeout_s)
            if not done:
                link.abort()
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            link.abort()
            await asyncio.wait({worker})
            await self._drop(link)
            raise
        except Exception as err:
            self._failed(f"{link.where}: {type(err).__name__}: {err}")
            await self._drop(link)
            return None
        self.my_num = link.my_num()
        self.last_error = ""
        self.channel = None
        self._up.set()
        log.info("电台已连接 / radio connected: %s, node %s", link.where, self._my_id())
        self._changed()
        return link

    async def _watch(self, link: _Link) -> None:
        """Return once the connection is gone for good."""
        while True:
            await self._gone.wait()
            self._gone.clear()
            if await asyncio.to_thread(link.reader_ends, READER_EXIT_S):
                self._failed(f"{link.where}: connection lost")
                return
            log.info("电台重启，重新握手 / radio restarted: %s handshakes again", link.where)
            try:
                await asyncio.wait_for(self._up.wait(), self.config.handshake_timeout_s)
            except TimeoutError:
                self._failed(f"{link.where}: no handshake after the radio reset")
                return

    async def _drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        self._up.clear()
        await asyncio.to_thread(link.close)
        self._changed()

    def _failed(self, reason: str) -> None:
        self.last_error = reason
        log.warning("电台不可用 / radio unavailable: %s", reason)

    # --- library callbacks (its threads) ------------------------------------------------

    def _ours(self, interface: Any) -> bool:
        link = self._link
        return link is not None and interface is link.iface

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(callback, *args)

    def _heard_packet(self, packet: Any, interface: Any) -> None:
        if not self._ours(interface):
            return
        try:
            raw = packet["raw"]
            event = packet_event(raw, self.my_num)
            # The firmware fills SNR and RSSI for packets it heard; both zero: not heard.
            snr = float(raw.rx_snr) if raw.rx_snr or raw.rx_rssi else None
        except Exception as err:
            log.info("忽略无法识别的数据包 / dropped a packet: %s", err)
            self._to_loop(self._count, None, None)
            return
        self._to_loop(self._count, event, snr)

    def _heard_node(self, node: Any, interface: Any) -> None:
        if not self._ours(interface):
            return
        try:
            event = node_event(node)
        except Exception as err:
            log.info("忽略无法识别的节点 / ignored a node record: %s", err)
            return
        if interface.myInfo is None or event.node_id != node_id(interface.myInfo.my_node_num):
            self._to_loop(self._deliver, event)

    def _heard_established(self, interface: Any) -> None:
        if self._ours(interface):
            self._to_loop(self._set_up, True)

    def _heard_lost(self, interface: Any) -> None:
        if self._ours(interface):
            self._to_loop(self._set_up, False)

    # --- in the loop ---------------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up:
            self._up.set()
        else:
            self._up.clear()
            self._gone.set()
        self._changed()

    def _count(self, event: Event | None, snr: float | None) -> None:
        self.received += 1
        if event is None:
            self.dropped += 1
            return
        self._deliver(event, snr)

    def _deliver(self, event: Event, snr: float | None = None) -> None:
        self._learn(event, snr)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # the owner's bug must not stop the radio
                log.exception("handling %s failed", type(event).__name__)

    def _learn(self, event: Event, snr: float | None) -> None:
        now = time.time()
        r = self.roster
        if isinstance(event, ChannelReport):
            self.channel = event
        elif isinstance(event, NodeSeen):
            r.update(
                event.node_id,
                heard_s=event.heard_s,
                long_name=event.long_name,
                short_name=event.short_name,
                battery_percent=event.battery_percent,
                voltage=event.voltage,
                position=event.position,
                position_s=event.position_s,
                snr=event.snr,
            )
        elif isinstance(event, PositionReceived):
            at = float(event.time_s) if event.time_s else now
            r.update(
                event.sender,
                heard_s=now,
                position=_position(event.lat, event.lon, event.alt_m),
                position_s=at,
                snr=snr,
            )
        elif isinstance(event, TelemetryReceived):
            r.update(
                event.sender,
                heard_s=now,
                battery_percent=event.battery_percent,
                voltage=event.voltage,
                snr=snr,
            )
        elif isinstance(event, TextReceived):
            r.update(event.sender, heard_s=now, snr=snr)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- downlink ------------------------------------------------------------------------

    async def send_text(
        self,
        text: str,
        destination: str = BROADCAST,
        *,
        want_ack: bool = True,
        channel: int | None = None,
    ) -> int:
        """Send ``text`` to the channel (``^all``) or one node (``!a1b2c3d4``); the packet id.

        With ``want_ack`` the mesh's answer comes back as an :class:`AckReceived` event.
        """
        if destination != BROADCAST and not _NODE_ID.match(destination):
            raise BadDownlink(
                f"收件节点无效：{destination!r}（应为 ^all 或 !8位十六进制）",
                f"invalid destination {destination!r} (^all or !<8 hex digits>)",
            )
        size = len(text.encode("utf-8"))
        if size > MAX_PAYLOAD:
            raise BadDownlink(
                f"文字过长：{size} 字节（上限 {MAX_PAYLOAD}）",
                f"text too long: {size} bytes (limit {MAX_PAYLOAD})",
            )
        async with self._send_lock:
            link = self._link
            if link is None or not self._up.is_set():
                raise RadioOffline(
                    "Mesh 电台未连接，无法发送", "the mesh radio is not connected: nothing sent"
                )
            index = self.config.channel if channel is None else channel
            packet_id = await asyncio.to_thread(link.send_text, text, destination, want_ack, index)
        self.sent += 1
        return packet_id

    async def send_data(self, payload: bytes, destination: int, *, want_ack: bool = False) -> int:
        """Send ``payload`` as a PRIVATE_APP packet to node number ``destination``; the id."""
        if len(payload) > MAX_PAYLOAD:
            raise BadDownlink(
                f"数据过长：{len(payload)} 字节（上限 {MAX_PAYLOAD}）",
                f"payload too long: {len(payload)} bytes (limit {MAX_PAYLOAD})",
            )
        async with self._send_lock:
            link = self._link
            if link is None or not self._up.is_set():
                raise RadioOffline(
                    "Mesh 电台未连接，无法发送", "the mesh radio is not connected: nothing sent"
                )
            packet_id = await asyncio.to_thread(
                link.send_data, payload, destination, want_ack, self.config.channel
            )
        self.sent += 1
        return packet_id

    @property
    def channel_utilisation(self) -> float | None:
        """The radio's channel utilisation (percent of the last minute busy); None if unknown."""
        link = self._link
        if link is None or not self.online:
            return None
        if self.channel is not None:
            return self.channel.utilisation
        return link.channel_utilisation()  # what the node list said at connect

    # --- state ---------------------------------------------------------------------------

    def _my_id(self) -> str | None:
        return None if self.my_num is None else node_id(self.my_num)

    def _where(self) -> str:
        if self.config.connection == "tcp":
            return f"tcp {self._host}:{self._port}"
        return f"serial {self.config.device}"

    def state(self) -> DeviceState:
        members = len(self.roster)
        if self.online:
            zh, en = f"已连接，{members} 名队员", f"connected, {members} team members"
        else:
            zh, en = "未连接", "not connected"
            if self.last_error:
                en += f": {self.last_error}"
        return DeviceState(
            self.name,
            self.kind,
            self.online,
            zh,
            en,
            {
                "connection": self._where(),
                "node_id": self._my_id(),
                "nodes_heard": members,
                "packets_received": self.received,
                "packets_dropped": self.dropped,
                "texts_sent": self.sent,
                "reconnects": self.reconnects,
            },
        )
