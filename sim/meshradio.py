"""A simulated Meshtastic radio and its team, speaking the real stream protocol over TCP and a pty.

The unmodified ``meshtastic`` library connects to it: ``TCPInterface("127.0.0.1",
portNumber=radio.port)`` or ``SerialInterface(radio.path)``. Frames are
``0x94 0xC3 <len hi> <len lo>`` then one ``ToRadio``/``FromRadio`` protobuf, built with
the library's own protobuf modules. On ``want_config_id`` the radio answers ``my_info``,
a ``node_info`` for itself and each team member, its LoRa config, channel 0 and
``config_complete_id``, as firmware does.

Wire-side controls: :meth:`SimulatedRadio.text`, :meth:`~SimulatedRadio.position`,
:meth:`~SimulatedRadio.battery` (a member transmits), :meth:`~SimulatedRadio.inject`
(damage on the host's line), :meth:`~SimulatedRadio.reboot`, :meth:`~SimulatedRadio.unplug`
and :meth:`~SimulatedRadio.plug` (the USB device goes away and comes back at ``link``).
``sent`` records every packet the host transmitted; each is delivered to the addressed
member's ``inbox`` (or every member's, for a broadcast) and, with ``want_ack``, a
routing ACK comes back (a NAK for a node nobody knows). Packets for the host wait in a
bounded queue while no host is connected, like the firmware's queue for the phone.

Given a :class:`Cadence` (``team=``), the members behave like a team on their own
(:class:`TeamActivity`): they walk slowly round a loop about where they started,
broadcasting positions, report their battery, and now and then one of them texts; a
member with ``reachable=False`` is out of range (the kit's packets to it get a NAK).

Airtime, loss and multi-hop are not simulated here: every member hears the kit directly.
Attached to a :class:`sim.meshnet.MeshNet` (which sets :attr:`SimulatedRadio.air`), the
host's packets go on the simulated air instead, and the net hands packets heard over the
air to :meth:`~SimulatedRadio.heard` and channel figures to :meth:`~SimulatedRadio.telemetry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from meshtastic.protobuf import (
    channel_pb2,
    config_pb2,
    mesh_pb2,
    portnums_pb2,
    telemetry_pb2,
)

from sim.pty import PtyNode

START1, START2 = 0x94, 0xC3
MAX_FRAME = 512  # a longer length means corruption: the reader hunts for START1 again
BROADCAST = 0xFFFFFFFF
TEXT_APP = portnums_pb2.PortNum.TEXT_MESSAGE_APP
POSITION_APP = portnums_pb2.PortNum.POSITION_APP
ROUTING_APP = portnums_pb2.PortNum.ROUTING_APP
TELEMETRY_APP = portnums_pb2.PortNum.TELEMETRY_APP
UNKNOWN_PORTNUM = 333  # assigned to nothing: the host must ignore it
TO_HOST_QUEUE = 64  # packets kept for a host that is away (the firmware keeps a few too)
TX_QUEUE = 16


def frame(payload: bytes) -> bytes:
    """One stream frame around a serialised protobuf."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return bytes([START1, START2, len(payload) >> 8, len(payload) & 0xFF]) + payload


class FrameDecoder:
    """Cuts a byte stream into frame payloads; bytes outside frames (debug text) are skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        while True:
            start = self._buf.find(START1)
            if start < 0:
                self._buf.clear()
                return
            del self._buf[:start]
            if len(self._buf) < 4:
                return
            size = (self._buf[2] << 8) | self._buf[3]
            if self._buf[1] != START2 or size > MAX_FRAME:
                del self._buf[:1]  # not a frame start after all: hunt on
                continue
            if len(self._buf) < 4 + size:
                return
            payload = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            yield payload


def node_id(num: int) -> str:
    return f"!{num:08x}"


@dataclass(slots=True)
class Member:
    """A handheld in the team: who it is, where it is, how full its battery is."""

    num: int
    long_name: str
    short_name: str
    lat: float | None = None
    lon: float | None = None
    alt_m: int | None = None
    battery: int | None = None  # percent; 101 means powered
    voltage: float | None = None
    inbox: list[str] = field(default_factory=list)  # texts the kit sent it
    reachable: bool = True  # False: out of range, the kit's packets to it go unanswered

    @property
    def id(self) -> str:
        return node_id(self.num)

    def user(self) -> Any:
        return mesh_pb2.User(
            id=self.id,
            long_name=self.long_name,
            short_name=self.short_name,
            hw_model=mesh_pb2.HardwareModel.TBEAM,
        )

    def position_pb(self, time_s: int | None = None) -> Any:
        pos = mesh_pb2.Position()
        if self.lat is not None and self.lon is not None:
            pos.latitude_i = round(self.lat * 1e7)
            pos.longitude_i = round(self.lon * 1e7)
        if self.alt_m is not None:
            pos.altitude = self.alt_m
        pos.time = int(time.time()) if time_s is None else time_s
        return pos


class Fault(Enum):
    """Damage :meth:`SimulatedRadio.inject` can put on the host's line."""

    GARBAGE = "garbage"  # random bytes (debug noise, line errors) between frames
    OVERSIZED = "oversized"  # a frame header claiming 4000 bytes, then some bytes
    UNKNOWN_PORTNUM = "unknown_portnum"  # a packet for an application nobody knows
    UNKNOWN_NODE = "unknown_node"  # a text from a node that is in no node list
    RESET_IN_HANDSHAKE = "reset_in_handshake"  # the next handshake stops half-way: reset


class _Session:
    """One host connection: where frames go, and what the host has sent so far."""

    def __init__(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.write = write
        self.close = close
        self.decoder = FrameDecoder()
        self.configured = False  # handshake answered: packets may flow


class SimulatedRadio:
    """The kit's Meshtastic radio (node ``num``) and the team of handhelds it hears."""

    def __init__(
        self,
        num: int = 0x4B17_0001,
        *,
        long_name: str = "救援套件 Kit",
        short_name: str = "KIT",
        members: list[Member] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        serial: bool = False,
        link: str | os.PathLike[str] | None = None,
        ack_delay_s: float = 0.05,
        seed: int = 0,
        team: Cadence | None = None,
    ) -> None:
        self.num = num
        self.long_name = long_name
        self.short_name = short_name
        self.members: dict[int, Member] = {m.num: m for m in members or []}
        self.host = host
        self.port = port
        self.serial = serial
        self.link = None if link is None else Path(link)
        self.ack_delay_s = ack_delay_s
        self.team = None if team is None else TeamActivity(self, self.members.values(), team, seed)
        self.sent: deque[Any] = deque(maxlen=1000)  # MeshPackets the host transmitted
        self.handshakes = 0  # completed
        self._rng = random.Random(seed)
        self._ids = itertools.count(self._rng.randrange(1, 1 << 30))
        self._sessions: set[_Session] = set()
        self._to_host: deque[bytes] = deque(maxlen=TO_HOST_QUEUE)
        self._reset_handshakes = 0
        self._server: asyncio.Server | None = None
        self._master: int | None = None
        self._pty = PtyNode(self.link, "simulated radio (start it with serial=True)")
        self._pty_out = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by a MeshNet: the host's packets go on its air, not straight to ``members``.
        self.air: Callable[[Any], object] | None = None

    # --- life ------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return node_id(self.num)

    @property
    def path(self) -> str:
        """The serial device the host opens: ``link`` if given, else the pty's slave."""
        return self._pty.path

    async def start(self) -> None:
        """Listen on TCP (``port`` 0 picks a free one, then ``port`` tells it); plug the pty."""
        self._server = await asyncio.start_server(self._serve_tcp, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.serial:
            await self.plug()
        if self.team is not None:
            self.team.start()

    async def close(self) -> None:
        if self.team is not None:
            await self.team.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        for session in list(self._sessions):
            session.close()
        await self.unplug()
        tasks, self._tasks = self._tasks, set()
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

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(writer.write, writer.close)
        self._sessions.add(session)
        try:
            while data := await reader.read(4096):
                self._received(session, data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._sessions.discard(session)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def plug(self) -> None:
        """A fresh pty (a new device node) appears, at ``link`` if given."""
        if self._master is not None:
            return
        master = self._master = self._pty.open()
        session = _Session(self._pty_write, lambda: None)
        self._sessions.add(session)
        asyncio.get_running_loop().add_reader(master, self._pty_readable, session)

    async def unplug(self) -> None:
        """The USB device goes away: the host's reads fail and the path disappears."""
        loop = asyncio.get_running_loop()
        for session in [s for s in self._sessions if s.write == self._pty_write]:
            self._sessions.discard(session)
        if self._master is not None:
            loop.remove_reader(self._master)
            loop.remove_writer(self._master)
            self._master = None
        self._pty.close()
        self._pty_out.clear()

    def _pty_readable(self, session: _Session) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # the host closed its end: wait for the next open
            return
        self._received(session, data)

    def _pty_write(self, data: bytes) -> None:
        if self._master is None:
            return
        pending = not self._pty_out
        self._pty_out += data
        if pending:
            self._pty_flush()

    def _pty_flush(self) -> None:
        assert self._master is not None
        loop = asyncio.get_running_loop()
        try:
            done = os.write(self._master, self._pty_out)
        except BlockingIOError:
            done = 0
        except OSError:
            done = len(self._pty_out)  # nobody reads: the bytes fall on the floor
        del self._pty_out[:done]
        if self._pty_out:
            loop.add_writer(self._master, self._pty_flush)
        else:
            loop.remove_writer(self._master)

    # --- what the host sends -----------------------------------------------------------

    def _received(self, session: _Session, data: bytes) -> None:
        for payload in session.decoder.feed(data):
            msg = mesh_pb2.ToRadio()
            try:
                msg.ParseFromString(payload)
            except Exception:  # a corrupt frame: firmware drops it too
                continue
            which = msg.WhichOneof("payload_variant")
            if which == "want_config_id":
                self._handshake(session, msg.want_config_id)
            elif which == "packet":
                self._transmit(session, msg.packet)
            elif which == "disconnect":
                session.configured = False

    def _handshake(self, session: _Session, config_id: int) -> None:
        session.configured = False
        out = [
            mesh_pb2.FromRadio(my_info=mesh_pb2.MyNodeInfo(my_node_num=self.num)),
            mesh_pb2.FromRadio(node_info=self._own_node_info()),
        ]
        if self._reset_handshakes:
            self._reset_handshakes -= 1
            for msg in out:
                session.write(frame(msg.SerializeToString()))
            self._reset(session)
            return
        out += [mesh_pb2.FromRadio(node_info=self._node_info(m)) for m in self.members.values()]
        lora = config_pb2.Config.LoRaConfig(
            use_preset=True,
            modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.LONG_FAST,
            region=config_pb2.Config.LoRaConfig.RegionCode.CN,
            hop_limit=3,
            tx_enabled=True,
        )
        out.append(mesh_pb2.FromRadio(config=config_pb2.Config(lora=lora)))
        channel = channel_pb2.Channel(
            index=0,
            role=channel_pb2.Channel.Role.PRIMARY,
            settings=channel_pb2.ChannelSettings(psk=b"\x01"),
        )
        out.append(mesh_pb2.FromRadio(channel=channel))
        out.append(mesh_pb2.FromRadio(config_complete_id=config_id))
        for msg in out:
            session.write(frame(msg.SerializeToString()))
        session.configured = True
        self.handshakes += 1
        while self._to_host:
            session.write(self._to_host.popleft())

    def _reset(self, session: _Session) -> None:
        """The radio resets: a TCP client is dropped; on serial the firmware says it rebooted."""
        if session.write == self._pty_write:
            session.write(frame(mesh_pb2.FromRadio(rebooted=True).SerializeToString()))
        else:
            session.close()

    def _own_node_info(self) -> Any:
        user = mesh_pb2.User(
            id=self.id,
            long_name=self.long_name,
            short_name=self.short_name,
            hw_model=mesh_pb2.HardwareModel.RAK4631,
        )
        return mesh_pb2.NodeInfo(num=self.num, user=user, last_heard=int(time.time()))

    def _node_info(self, m: Member) -> Any:
        info = mesh_pb2.NodeInfo(num=m.num, user=m.user(), last_heard=int(time.time()))
        if m.lat is not None:
            info.position.CopyFrom(m.position_pb())
        if m.battery is not None:
            info.device_metrics.battery_level = m.battery
        return info

    def _transmit(self, session: _Session, packet: Any) -> None:
        """The host sent a packet: queue status back, delivery to the team, maybe an ACK."""
        self.sent.append(packet)
        status = mesh_pb2.QueueStatus(res=0, free=TX_QUEUE, maxlen=TX_QUEUE)
        status.mesh_packet_id = packet.id
        session.write(frame(mesh_pb2.FromRadio(queueStatus=status).SerializeToString()))
        if self.air is not None:
            self.air(packet)
            return
        text = ""
        if packet.decoded.portnum == TEXT_APP:
            text = packet.decoded.payload.decode("utf-8", "replace")
        reachable = [m for m in self.members.values() if m.reachable]
        if packet.to == BROADCAST:
            for m in reachable:
                m.inbox.append(text)
            # Implicit ACK: the radio heard a member repeat it; nobody in range: it gives up.
            acker = self.num
            error = (
                mesh_pb2.Routing.Error.NONE if reachable else mesh_pb2.Routing.Error.MAX_RETRANSMIT
            )
        elif packet.to in self.members and self.members[packet.to].reachable:
            self.members[packet.to].inbox.append(text)
            acker, error = packet.to, mesh_pb2.Routing.Error.NONE
        else:  # unknown or out of range: after its retries the radio answers with a NAK
            acker, error = self.num, mesh_pb2.Routing.Error.MAX_RETRANSMIT
        if packet.want_ack:
            self._later(self.ack_delay_s, lambda: self.answer(packet.id, error, acker))

    # --- the air (a MeshNet) ------------------------------------------------------------

    def heard(self, packet: Any) -> None:
        """A packet heard over the air, for the host."""
        out = mesh_pb2.MeshPacket()
        out.CopyFrom(packet)
        out.rx_time = int(time.time())
        out.rx_snr = 6.5
        out.rx_rssi = -92
        self._pass_up(out)

    def telemetry(self, channel_utilization: float, air_util_tx: float) -> None:
        """The radio reports its own channel figures (percent) to the host, as firmware does:
        its device metrics, then its local stats."""
        metrics = telemetry_pb2.DeviceMetrics(
            channel_utilization=channel_utilization, air_util_tx=air_util_tx
        )
        telemetry = telemetry_pb2.Telemetry(time=int(time.time()), device_metrics=metrics)
        self._emit(self.num, TELEMETRY_APP, telemetry.SerializeToString(), to=self.num)
        stats = telemetry_pb2.LocalStats(
            channel_utilization=channel_utilization,
            air_util_tx=air_util_tx,
            num_online_nodes=len(self.members) + 1,
            num_total_nodes=len(self.members) + 1,
        )
        telemetry = telemetry_pb2.Telemetry(time=int(time.time()), local_stats=stats)
        self._emit(self.num, TELEMETRY_APP, telemetry.SerializeToString(), to=self.num)

    def answer(self, request_id: int, error: int, by: int | None = None) -> int:
        """The mesh's answer to the host's packet ``request_id``: a routing ACK (error 0) or
        NAK, from node ``by`` (the radio itself when None: implicit ACK or giving up)."""
        routing = mesh_pb2.Routing(error_reason=error)
        return self._emit(
            self.num if by is None else by,
            ROUTING_APP,
            routing.SerializeToString(),
            to=self.num,
            request_id=request_id,
        )

    # --- the team transmits -------------------------------------------------------------

    def add(self, member: Member) -> Member:
        """A handheld joins (heard on the next handshake, or by its packets)."""
        self.members[member.num] = member
        return member

    def text(self, num: int, text: str, *, to_kit: bool = False, channel: int = 0) -> int:
        """Member ``num`` sends ``text`` to the channel (or directly to the kit); the packet id."""
        return self._emit(
            num,
            TEXT_APP,
            text.encode(),
            to=self.num if to_kit else BROADCAST,
            channel=channel,
        )

    def position(
        self, num: int, lat: float, lon: float, alt_m: int | None = None, time_s: int | None = None
    ) -> int:
        """Member ``num`` moves to (and broadcasts) a position; ``time_s`` its GPS time."""
        m = self.members[num]
        m.lat, m.lon, m.alt_m = lat, lon, alt_m
        return self._emit(num, POSITION_APP, m.position_pb(time_s).SerializeToString())

    def battery(self, num: int, percent: int, voltage: float | None = None) -> int:
        """Member ``num`` broadcasts its device telemetry."""
        m = self.members[num]
        m.battery, m.voltage = percent, voltage
        metrics = telemetry_pb2.DeviceMetrics(battery_level=percent)
        if voltage is not None:
            metrics.voltage = voltage
        telemetry = telemetry_pb2.Telemetry(time=int(time.time()), device_metrics=metrics)
        return self._emit(num, TELEMETRY_APP, telemetry.SerializeToString())

    def _emit(
        self,
        sender: int,
        portnum: int,
        payload: bytes,
        *,
        to: int = BROADCAST,
        channel: int = 0,
        request_id: int = 0,
    ) -> int:
        packet = mesh_pb2.MeshPacket(
            to=to,
            channel=channel,
            id=next(self._ids) & 0xFFFFFFFF,
            rx_time=int(time.time()),
            rx_snr=6.5,
            rx_rssi=-92,
            hop_limit=3,
            hop_start=3,
            decoded=mesh_pb2.Data(portnum=portnum, payload=payload, request_id=request_id),
        )
        setattr(packet, "from", sender)  # "from" is a Python keyword
        self._pass_up(packet)
        return int(packet.id)

    def _pass_up(self, packet: Any) -> None:
        data = frame(mesh_pb2.FromRadio(packet=packet).SerializeToString())
        ready = [s for s in self._sessions if s.configured]
        if not ready:
            self._to_host.append(data)
        for session in ready:
            session.write(data)

    # --- faults ------------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Put ``fault`` on every host connection (or arm it for the next handshake)."""
        if fault is Fault.GARBAGE:
            noise = bytes(self._rng.randrange(256) for _ in range(48))
            self._raw(b"\x94\x00" + noise.replace(b"\x94\xc3", b"\x94\x00") + b"DEBUG | ??\r\n")
        elif fault is Fault.OVERSIZED:
            self._raw(bytes([START1, START2, 0x0F, 0xA0]) + bytes(range(64)))
        elif fault is Fault.UNKNOWN_PORTNUM:
            sender = next(iter(self.members), self.num)
            self._emit(sender, UNKNOWN_PORTNUM, b"\x00\x01\x02")
        elif fault is Fault.UNKNOWN_NODE:
            self._emit(0x0BAD_F00D, TEXT_APP, "我是谁 / who am I".encode())
        elif fault is Fault.RESET_IN_HANDSHAKE:
            self._reset_handshakes += 1

    def reboot(self) -> None:
        """The radio restarts: TCP clients are dropped; a serial host is told it rebooted."""
        for session in list(self._sessions):
            session.configured = False
            self._reset(session)

    def _raw(self, data: bytes) -> None:
        for session in self._sessions:
            session.write(data)

    def _later(self, delay_s: float, action: Callable[[], object]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay_s)
            action()

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --- a team that behaves like one ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cadence:
    """How often the simulated team reports, in team seconds; ``speed`` team seconds pass per
    real second (tests and ``kit sim`` run the team faster)."""

    position_s: float = 60.0  # each member broadcasts a position this often …
    telemetry_s: float = 300.0  # … its battery this often
    text_s: float = 900.0  # and someone in the team texts about this often (0: never)
    step_m: float = 20.0  # metres walked between two positions
    radius_m: float = 250.0  # each member walks a loop this far around its start point
    drain_pct: int = 1  # battery percent used between two telemetry reports
    speed: float = 1.0

    def __post_init__(self) -> None:
        if min(self.position_s, self.telemetry_s, self.speed, self.radius_m) <= 0:
            raise ValueError("team cadence: periods, radius and speed must be positive")
        if self.text_s < 0 or self.step_m < 0 or self.drain_pct < 0:
            raise ValueError("team cadence: text_s, step_m and drain_pct must not be negative")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Cadence:
        """The cadence ``KIT_BACKEND=sim`` uses: ``KIT_SIM_TEAM_SPEED`` (default 1) speeds it up."""
        raw = (os.environ if environ is None else environ).get("KIT_SIM_TEAM_SPEED", "")
        try:
            speed = float(raw) if raw else 1.0
        except ValueError:
            raise ValueError(f"KIT_SIM_TEAM_SPEED={raw!r} is not a number") from None
        if not 0 < speed < float("inf"):
            raise ValueError(f"KIT_SIM_TEAM_SPEED={raw!r} must be above 0")
        return cls(speed=speed)


class TeamRadios(Protocol):
    """Where the team transmits: straight to a kit's :class:`SimulatedRadio`, or on a MeshNet."""

    def position(
        self, num: int, lat: float, lon: float, alt_m: int | None = None, time_s: int | None = None
    ) -> object: ...

    def battery(self, num: int, percent: int, voltage: float | None = None) -> object: ...

    def text(self, num: int, text: str) -> object: ...


TEAM_TEXTS = (
    "到达桥头",
    "二号楼搜索完毕，未发现被困人员",
    "需要 水 食品 @ 东侧路口",
    "伤员 1 轻伤 @ 学校操场",
    "道路被落石阻断，绕行北侧",
    "正在转移群众至安置点",
    "arrived at the school",
)
EARTH_M_PER_DEG = 111_320.0


class TeamActivity:
    """Members walk slowly round a loop about where they started, broadcasting positions and
    battery telemetry at the :class:`Cadence`, and now and then one of them texts."""

    def __init__(
        self, radios: TeamRadios, members: Iterable[Member], cadence: Cadence, seed: int = 0
    ) -> None:
        self.radios = radios
        self.cadence = cadence
        self.members = [m for m in members if m.lat is not None and m.lon is not None]
        self.sent = {"position": 0, "battery": 0, "text": 0}
        self._rng = random.Random(seed)
        self._start = {m.num: (float(m.lat or 0), float(m.lon or 0)) for m in self.members}
        n = max(1, len(self.members))
        self._angle = {m.num: 2 * math.pi * i / n for i, m in enumerate(self.members)}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        c = self.cadence
        self._tasks = [
            asyncio.ensure_future(self._every(c.position_s, self.walk)),
            asyncio.ensure_future(self._every(c.telemetry_s, self.report_battery)),
        ]
        if c.text_s > 0:
            self._tasks.append(asyncio.ensure_future(self._texts()))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _every(self, period_s: float, action: Callable[[], None]) -> None:
        # Spread the members' first reports a little, as real handhelds are not in step.
        await asyncio.sleep(self._rng.uniform(0, 0.1) * period_s / self.cadence.speed)
        while True:
            action()
            await asyncio.sleep(period_s / self.cadence.speed)

    async def _texts(self) -> None:
        while True:
            wait = self._rng.expovariate(1 / self.cadence.text_s)
            await asyncio.sleep(wait / self.cadence.speed)
            if self.members:
                m = self._rng.choice(self.members)
                self.radios.text(m.num, self._rng.choice(TEAM_TEXTS))
                self.sent["text"] += 1

    def where(self, member: Member) -> tuple[float, float]:
        """Where ``member`` is on its loop now."""
        lat0, lon0 = self._start[member.num]
        angle, r = self._angle[member.num], self.cadence.radius_m
        # The loop passes through the start point: its centre is one radius to the north.
        north = r - r * math.cos(angle)
        east = r * math.sin(angle)
        lat = lat0 + north / EARTH_M_PER_DEG
        lon = lon0 + east / (EARTH_M_PER_DEG * math.cos(math.radians(lat0)))
        return lat, lon

    def walk(self) -> None:
        """Every member takes a step along its loop and broadcasts where it is."""
        for m in self.members:
            self._angle[m.num] += self.cadence.step_m / self.cadence.radius_m
            lat, lon = self.where(m)
            self.radios.position(m.num, lat, lon, m.alt_m)
            self.sent["position"] += 1

    def report_battery(self) -> None:
        """Every member with a battery broadcasts its level, a little lower each time."""
        for m in self.members:
            if m.battery is None:
                continue
            level = m.battery if m.battery > 100 else max(5, m.battery - self.cadence.drain_pct)
            self.radios.battery(m.num, level, m.voltage)
            self.sent["battery"] += 1


def demo_team() -> list[Member]:
    """A small team around Ya'an for ``KIT_BACKEND=sim`` and the simulator's scenarios."""
    return [
        Member(0xA1B2_0001, "张队长", "ZDZ", 30.0103, 103.0012, 620, 87),
        Member(0xA1B2_0002, "李医生", "LYS", 30.0121, 103.0040, 640, 64),
        Member(0xA1B2_0003, "王搜救", "WSJ", 30.0087, 102.9981, 605, 41),
    ]
