"""Mesh relay link: frames over LoRa (Meshtastic PRIVATE_APP) to a kit that has an uplink.

How the uplink reaches the radio: ``kit mesh`` owns it (one serial radio takes one
client, and the team's texts must keep flowing whatever the uplink does), and exposes a
UDP socket on loopback, its ``[mesh] frame_port`` (:class:`mesh.relay.FramePort`). This
link sends each frame there with the relay kit's node number; the port hands it to the
radio and passes frames from the mesh back, with the radio's state every couple of
seconds. Datagrams keep both processes free to restart on their own, and a test can
stand in for either side with one socket.

Airtime rules, as the firmware and the band ask:

- **pacing**: after a frame, the next waits for the first one's airtime at the preset
  (a full 233-byte frame at LongFast is about 2.2 s on air); ``min_interval`` is the
  airtime of a full frame;
- **channel utilisation**: while the radio reports 40 % or more (its own device
  telemetry, read from the library's node list by the mesh process), nothing is sent:
  :meth:`MeshRelayLink.next_send_at` keeps new messages back, and a fragment already
  due waits in :meth:`MeshRelayLink.send` for the channel to clear (refused after
  ``busy_wait`` so the scheduler can choose again).

``speed`` exists for simulators only: a simulated mesh running N times faster than real
time has N times shorter airtimes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from pydantic import Field

from mesh.relay import HELLO, PRESETS, RECEIVED, SEND, STATUS, on_air_bytes
from uplink.frames import MTU_MESH
from uplink.link import FrameLink, LinkDown, LinkParams, LinkRefused
from uplink.registry import LinkConfigBase

KEEPALIVE_S = 2.0  # hello to the frame port this often; it answers with the radio's state
SILENT_AFTER_S = 3 * KEEPALIVE_S + 1  # no status for this long: the mesh process is gone


class Config(LinkConfigBase):
    """Frames over the kit's Meshtastic radio to another kit that relays them to the centre."""

    kind: Literal["meshrelay"] = Field(
        title="链路类型 / Link kind",
        description="meshrelay: frames over LoRa (Meshtastic) to a kit that has an uplink.",
    )
    relay_node: str = Field(
        title="中继节点 / Relay node",
        description="Meshtastic node id of the relaying kit's radio, e.g. !4b170002.",
        pattern=r"^![0-9a-f]{8}$",
    )
    frame_port: int = Field(
        4410,
        title="中继帧端口 / Frame port",
        description="UDP port on 127.0.0.1 of `kit mesh` (the same as [mesh] frame_port).",
        ge=1,
        le=65535,
    )
    preset: Literal["LONG_FAST", "LONG_SLOW", "MEDIUM_FAST", "SHORT_FAST"] = Field(
        "LONG_FAST",
        title="调制预设 / Modem preset",
        description="The radio's LoRa preset; sets the airtime each frame is paced by.",
    )
    max_utilisation: float = Field(
        40.0,
        title="信道占用上限 / Channel utilisation limit",
        description="Percent: no sends while the radio reports this much or more.",
        gt=0,
        le=100,
    )
    busy_wait: float = Field(
        120.0,
        title="信道繁忙等待 / Busy wait",
        description="Seconds a due frame waits for the channel to clear before it is refused.",
        gt=0,
        le=3600,
    )
    speed: float = Field(
        1.0,
        title="仿真加速 / Simulation speed",
        description="Simulators only: emulated seconds per real second (1 on a real radio).",
        gt=0,
        le=1000,
    )
    rate: float = Field(
        50.0,
        title="速率 / Rate",
        description="Expected bytes per second (LongFast at under 40 % of the airtime).",
        gt=0,
        le=1e6,
    )
    rtt: float = Field(
        10.0, title="往返时延 / RTT", description="Expected round trip in seconds.", gt=0, le=600
    )
    ack_timeout: float = Field(
        300.0,
        title="确认超时 / Ack timeout",
        description="Seconds to wait for the centre's acknowledgement before re-sending.",
        ge=1,
        le=86_400,
    )


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, link: MeshRelayLink) -> None:
        self.link = link
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.datagram(data)

    def error_received(self, exc: Exception) -> None:
        if not self.ended.done():
            self.ended.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class MeshRelayLink(FrameLink):
    """One UDP socket to ``kit mesh``'s frame port; frames to ``relay_node``, paced by airtime."""

    kind = "meshrelay"

    def __init__(
        self,
        params: LinkParams,
        relay_node: int,
        *,
        frame_port: int,
        airtime: dict[int, float] | None = None,
        max_utilisation: float = 40.0,
        busy_wait: float = 120.0,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(params)
        self.relay_node = relay_node
        self.address = (host, frame_port)
        self.max_utilisation = max_utilisation
        self.busy_wait = busy_wait
        self.radio_online = False
        self.utilisation: float | None = None  # percent, as the radio last reported it
        self.node: str | None = None  # this kit's own node id
        self._airtime = airtime or {}  # frame bytes -> seconds between sends
        self._air_until = -1e18  # monotonic time the last frame's airtime ends
        self._heard_at = 0.0  # monotonic time of the last status
        self._status = asyncio.Event()  # a status arrived
        self._clear = asyncio.Event()  # the channel is below the utilisation limit
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint: _Endpoint | None = None

    # --- what the port says ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.utilisation is not None and self.utilisation >= self.max_utilisation

    def datagram(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == RECEIVED and body:
            self.deliver(body)
        elif kind == STATUS:
            try:
                status = json.loads(body)
                self.radio_online = bool(status["online"])
                util = status["utilisation"]
                self.utilisation = None if util is None else float(util)
                self.node = status["node"]
            except (ValueError, KeyError, TypeError) as err:
                self.stats.last_error = f"bad status from the frame port: {err}"
                return
            self._heard_at = time.monotonic()
            self._status.set()
            if self.busy:
                self._clear.clear()
            else:
                self._clear.set()

    # --- the contract ------------------------------------------------------------------------

    def airtime(self, nbytes: int) -> float:
        """Seconds (real, at ``speed``) a frame of ``nbytes`` occupies the channel."""
        return self._airtime.get(nbytes, self.min_interval)

    def next_send_at(self) -> float:
        at = self._air_until
        if self.busy:  # look again when the next status is due
            at = max(at, self._heard_at + KEEPALIVE_S)
        return at

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, self._endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), remote_addr=self.address
        )
        self._status.clear()
        self._transport.sendto(HELLO)
        try:
            await asyncio.wait_for(self._status.wait(), SILENT_AFTER_S)
        except TimeoutError:
            raise self._down("Mesh 进程未应答", "kit mesh does not answer") from None
        if not self.radio_online:
            raise self._down("电台未连接", "the radio is not connected")

    async def receive_loop(self) -> None:
        while True:
            if self._transport is None or self._endpoint is None or self._endpoint.ended.done():
                raise self._down("套接字已关闭", "socket closed")
            self._transport.sendto(HELLO)
            await asyncio.sleep(KEEPALIVE_S)
            if time.monotonic() - self._heard_at > SILENT_AFTER_S:
                raise self._down("Mesh 进程无应答", "kit mesh went silent")
            if not self.radio_online:
                raise self._down("电台已断开", "the radio disconnected")

    async def disconnect(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self._endpoint = None

    async def send(self, frame: bytes) -> None:
        """Wait (up to ``busy_wait``) while the channel is busy, then send as every link does."""
        if self.busy:
            try:
                await asyncio.wait_for(self._clear.wait(), self.busy_wait)
            except TimeoutError:
                raise LinkRefused(
                    f"信道占用 {self.utilisation:.0f}% ≥ {self.max_utilisation:.0f}%，暂停发送",
                    f"channel utilisation {self.utilisation:.0f}% ≥ "
                    f"{self.max_utilisation:.0f}%: holding sends",
                ) from None
        await super().send(frame)

    async def transmit(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or not self.radio_online:
            raise self._down("电台未连接", "the radio is not connected")
        transport.sendto(SEND + self.relay_node.to_bytes(4, "big") + frame)
        self._air_until = time.monotonic() + self.airtime(len(frame))

    def _down(self, why_zh: str, why_en: str) -> LinkDown:
        return LinkDown(
            f"链路 {self.name} 经 127.0.0.1:{self.address[1]} 无法使用电台：{why_zh}",
            f"link {self.name} cannot use the radio via 127.0.0.1:{self.address[1]}: {why_en}",
        )


def make(config: Config) -> MeshRelayLink:
    preset = PRESETS[config.preset]
    airtime = {n: preset.airtime(on_air_bytes(n)) / config.speed for n in range(1, MTU_MESH + 1)}
    return MeshRelayLink(
        config.params(mtu=MTU_MESH, min_interval=airtime[MTU_MESH]),
        int(config.relay_node[1:], 16),
        frame_port=config.frame_port,
        airtime=airtime,
        max_utilisation=config.max_utilisation,
        busy_wait=config.busy_wait / config.speed,
    )
