"""Kit-to-kit relay over LoRa, the mesh side: LoRa airtime, the uplink's frame port, the relay.

Narrow frames (:mod:`uplink.frames`) travel between kits in PRIVATE_APP packets, one
frame per packet. ``kit mesh`` owns the radio (one serial radio takes one client), so
the uplink's ``meshrelay`` link reaches it through :class:`FramePort`, a UDP socket on
loopback in the mesh process. Datagrams, one message each:

=============  ==============================  ===========================================
direction      bytes                           meaning
=============  ==============================  ===========================================
link → port    ``H``                           hello/keep-alive; answered by a status
link → port    ``F`` + uint32 node + frame     send ``frame`` to that node over the mesh
port → link    ``S`` + JSON status             ``{"online", "utilisation", "node"}``
port → link    ``R`` + frame                   a frame from the mesh for this kit
=============  ==============================  ===========================================

A frame heard from another kit goes by its direction bit: a downlink frame (the centre's
answer, relayed to us) to the port; an uplink frame (a kit asking us to relay) to the
:class:`CentreRelay`, which posts it to the centre's ``POST /v1/frames`` over this kit's
own IP connection and sends the centre's answers back over the mesh to the kit each
answer's header names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge.errors import KitError
from mesh.radio import DataReceived, MeshRadio, RadioOffline, node_id
from uplink.frames import BadFrame, decode_frame, pack_relay, unpack_relay

log = logging.getLogger(__name__)

MESH_HEADER_BYTES = 16  # Meshtastic's packet header in front of the Data protobuf
HELLO, SEND, STATUS, RECEIVED = b"H", b"F", b"S", b"R"
_NODE = struct.Struct(">I")
STATUS_S = 2.0  # the port tells the link the radio's state this often
SEND_QUEUE = 32  # frames from the link waiting for the radio
RETRY_MIN_S, RETRY_MAX_S = 1.0, 60.0
POST_TIMEOUT_S = 30.0
BATCH = 16  # frames per POST


# --- LoRa airtime ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preset:
    """A LoRa modem preset; :meth:`airtime` is Semtech's formula (explicit header, CRC on)."""

    name: str
    sf: int
    bw_hz: float
    cr: int  # 5 means coding rate 4/5
    preamble: int = 16

    @property
    def symbol_s(self) -> float:
        return float(2**self.sf) / self.bw_hz

    @property
    def raw_bps(self) -> float:
        """The modem's raw bit rate: SF × BW / 2^SF × 4/CR."""
        return float(self.sf * self.bw_hz / 2**self.sf * 4 / self.cr)

    def airtime(self, nbytes: int) -> float:
        """Seconds on air for an ``nbytes`` LoRa payload."""
        de = 1 if self.symbol_s > 0.016 else 0  # low-data-rate optimisation, long symbols only
        bits = 8 * nbytes - 4 * self.sf + 28 + 16
        symbols = 8 + max(math.ceil(bits / (4 * (self.sf - 2 * de))) * self.cr, 0)
        return (self.preamble + 4.25 + symbols) * self.symbol_s


LONG_FAST = Preset("LONG_FAST", 11, 250_000, 5)
PRESETS = {
    p.name: p
    for p in (
        LONG_FAST,
        Preset("LONG_SLOW", 12, 125_000, 8),
        Preset("MEDIUM_FAST", 9, 250_000, 5),
        Preset("SHORT_FAST", 7, 250_000, 5),
    )
}


def on_air_bytes(payload_bytes: int) -> int:
    """LoRa bytes of a PRIVATE_APP packet: header, portnum field (3 B), payload field."""
    length_field = 1 if payload_bytes < 128 else 2
    return MESH_HEADER_BYTES + 3 + 1 + length_field + payload_bytes


# --- the uplink's frame port ---------------------------------------------------------------


def status_datagram(online: bool, utilisation: float | None, node: str | None) -> bytes:
    body = {"online": online, "utilisation": utilisation, "node": node}
    return STATUS + json.dumps(body).encode()


class FramePort(asyncio.DatagramProtocol):
    """The UDP socket on loopback through which the uplink's ``meshrelay`` link uses the radio."""

    def __init__(self, radio: MeshRadio, port: int, host: str = "127.0.0.1") -> None:
        self.radio = radio
        self.address = (host, port)
        self.peer: tuple[str, int] | None = None  # the link, once it said hello
        self.dropped = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._sends: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(SEND_QUEUE)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=self.address
        )
        self.address = self._transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        kind = data[:1]
        if kind == HELLO:
            self.send_status()
        elif kind == SEND and len(data) > 1 + _NODE.size:
            (node,) = _NODE.unpack_from(data, 1)
            try:
                self._sends.put_nowait((node, data[1 + _NODE.size :]))
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("中继帧队列已满，丢弃 / relay send queue full: frame dropped")
        else:
            log.info("ignored a datagram of %d bytes on the frame port", len(data))

    def deliver(self, frame: bytes) -> None:
        """A frame from the mesh for this kit's uplink."""
        if self._transport is None or self.peer is None:
            self.dropped += 1
            log.info("no meshrelay link listening: frame of %d bytes dropped", len(frame))
            return
        self._transport.sendto(RECEIVED + frame, self.peer)

    def send_status(self) -> None:
        if self._transport is None or self.peer is None:
            return
        radio = self.radio
        node = None if radio.my_num is None else node_id(radio.my_num)
        datagram = status_datagram(radio.online, radio.channel_utilisation, node)
        self._transport.sendto(datagram, self.peer)

    async def run(self) -> None:
        """Send the link's frames, one at a time, and its status every ``STATUS_S``."""
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._status_loop())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_loop(self) -> None:
        while True:
            node, frame = await self._sends.get()
            try:
                await self.radio.send_data(frame, node)
            except KitError as err:
                self.dropped += 1
                log.warning("relay frame for %s not sent: %s", node_id(node), err)
                self.send_status()

    async def _status_loop(self) -> None:
        while True:
            self.send_status()
            await asyncio.sleep(STATUS_S)


# --- relaying for other kits ------------------------------------------------------------


class CentreRelay:
    """Frames other kits sent us go to the centre; its answers go back over the mesh.

    Both ways are bounded queues: on overflow the oldest frame is dropped and logged (the
    kits' own acknowledgement timers and MISSING requests recover it). Posts are retried
    with a doubling back-off while the centre is unreachable.
    """

    def __init__(
        self,
        radio: MeshRadio,
        url: str,
        gateway: str,
        *,
        queue_size: int = 64,
        retry_min_s: float = RETRY_MIN_S,
        retry_max_s: float = RETRY_MAX_S,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.radio = radio
        self.url = url.rstrip("/") + "/v1/frames"
        # https: this kit's mutual-TLS identity (security.tlsid); frames are sealed anyway.
        self.tls: dict[str, Any] = {}
        if tls is not None:
            self.tls = {"ssl": tls, "server_hostname": server_hostname}
        self.gateway = gateway
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.kit_nodes: dict[int, int] = {}  # kit short id -> the node we heard it from
        self.posted = 0
        self.answered = 0
        self.dropped = 0
        self._up: deque[bytes] = deque(maxlen=queue_size)
        self._down: deque[tuple[int, bytes]] = deque(maxlen=queue_size)
        self._up_ready = asyncio.Event()
        self._down_ready = asyncio.Event()

    def heard(self, frame: bytes, sender_num: int, kit_id: int) -> None:
        """An uplink frame from kit ``kit_id`` on node ``sender_num``, to relay."""
        self.kit_nodes[kit_id] = sender_num
        self._put(self._up, frame, "to the centre")
        self._up_ready.set()

    def _put(self, queue: deque[Any], entry: Any, where: str) -> None:
        if len(queue) == queue.maxlen:
            self.dropped += 1
            log.warning(
                "中继队列已满，丢弃最旧的帧 / relay queue %s full: oldest frame dropped", where
            )
        queue.append(entry)

    async def run(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
        ) as session:
            tasks = [
                asyncio.create_task(self._post_loop(session)),
                asyncio.create_task(self._answer_loop()),
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _post_loop(self, session: aiohttp.ClientSession) -> None:
        delay = self.retry_min_s
        while True:
            await self._up_ready.wait()
            batch = [self._up[i] for i in range(min(BATCH, len(self._up)))]
            try:
                answers = await self._post(session, batch)
            except (aiohttp.ClientError, TimeoutError, BadFrame) as err:
                log.warning(
                    "中继到指挥中心失败 / relay post failed, retry in %.1f s: %s", delay, err
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_min_s
            for _ in batch:  # the batch is still at the head unless overflow pushed it out
                if self._up and self._up[0] in batch:
                    self._up.popleft()
            if not self._up:
                self._up_ready.clear()
            self.posted += len(batch)
            for answer in answers:
                self._answer(answer)

    async def _post(self, session: aiohttp.ClientSession, batch: list[bytes]) -> list[bytes]:
        headers = {"Kit-Link": self.gateway, "Content-Type": "application/octet-stream"}
        async with session.post(
            self.url, data=pack_relay(batch), headers=headers, **self.tls
        ) as resp:
            body = await resp.read()
            if resp.status >= 500:
                raise aiohttp.ClientError(f"centre answered {resp.status}")
            if resp.status != 200:  # refused for good (unknown gateway): retrying cannot help
                self.dropped += len(batch)
                log.error("centre refused relayed frames (%d): %s", resp.status, body[:200])
                return []
        return unpack_relay(body)

    def _answer(self, frame: bytes) -> None:
        try:
            kit_id = decode_frame(frame).kit_id
        except BadFrame as err:
            log.info("centre answer not a frame: %s", err)
            return
        node = self.kit_nodes.get(kit_id)
        if node is None:
            self.dropped += 1
            log.warning("answer for kit %d: no node known for it, dropped", kit_id)
            return
        self._put(self._down, (node, frame), "to the kits")
        self._down_ready.set()

    async def _answer_loop(self) -> None:
        delay = self.retry_min_s
        while True:
            await self._down_ready.wait()
            node, frame = self._down[0]
            try:
                await self.radio.send_data(frame, node)
            except RadioOffline as err:
                log.info("answer waits for the radio (%.1f s): %s", delay, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            except KitError as err:
                self.dropped += 1
                log.warning("answer for %s dropped: %s", node_id(node), err)
            else:
                self.answered += 1
            delay = self.retry_min_s
            if self._down and self._down[0] == (node, frame):
                self._down.popleft()
            if not self._down:
                self._down_ready.clear()


class MeshFrames:
    """Sends each frame heard on the mesh where it belongs: our uplink, or the centre."""

    def __init__(self, port: FramePort | None, relay: CentreRelay | None) -> None:
        self.port = port
        self.relay = relay

    def heard(self, event: DataReceived) -> None:
        try:
            frame = decode_frame(event.payload)
        except BadFrame as err:
            log.info("PRIVATE_APP packet from %s is not a frame: %s", event.sender, err)
            return
        if frame.downlink and self.port is not None:
            self.port.deliver(event.payload)
        elif not frame.downlink and self.relay is not None and event.to_kit:
            self.relay.heard(event.payload, event.sender_num, frame.kit_id)
        else:
            log.info("frame from %s not for this kit: dropped", event.sender)

    def channel_changed(self) -> None:
        """The radio reported new channel figures: the link hears them now, not at the next
        status tick, so its 40 % rule acts on what the channel is doing."""
        if self.port is not None:
            self.port.send_status()

    async def run(self) -> None:
        if self.port is not None:
            await self.port.start()
        tasks = [asyncio.create_task(p.run()) for p in (self.port, self.relay) if p is not None]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.port is not None:
                self.port.close()
