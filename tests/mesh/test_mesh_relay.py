"""Kit-to-kit relay over LoRa: airtime pacing, the 40 % rule, and a 1 KB report through a kit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from edge.item import new_item
from mesh.config import MeshConfig
from mesh.radio import DataReceived, Event, MeshRadio
from mesh.relay import HELLO, LONG_FAST, SEND, CentreRelay, FramePort, MeshFrames, on_air_bytes
from sim.harness import KIT_ID, centre, centre_items, kit, kit_security
from sim.meshnet import MeshNet
from sim.meshradio import SimulatedRadio
from uplink.frames import MTU_MESH
from uplink.kinds.meshrelay import Config, MeshRelayLink, make
from uplink.link import LinkRefused
from uplink.runner import Uplink

pytestmark = pytest.mark.timeout(90)

KIT_A, KIT_B = 0x4B17_000A, 0x4B17_000B
ACKNOWLEDGED = 2
FULL_FRAME_S = LONG_FAST.airtime(on_air_bytes(MTU_MESH))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class FakePort(asyncio.DatagramProtocol):
    """Stands in for ``kit mesh``'s frame port: answers hellos with a set utilisation."""

    def __init__(self) -> None:
        self.utilisation: float | None = None
        self.sent: list[tuple[int, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.peer = addr
        if data[:1] == HELLO:
            self.status()
        elif data[:1] == SEND:
            self.sent.append((int.from_bytes(data[1:5], "big"), data[5:]))

    def status(self) -> None:
        body = {"online": True, "utilisation": self.utilisation, "node": "!4b17000a"}
        assert self.transport is not None and self.peer is not None
        self.transport.sendto(b"S" + json.dumps(body).encode(), self.peer)


async def fake_port_and_link(**kw: Any) -> tuple[FakePort, MeshRelayLink, asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    transport, port = await loop.create_datagram_endpoint(FakePort, local_addr=("127.0.0.1", 0))
    number = transport.get_extra_info("sockname")[1]
    config = Config(
        kind="meshrelay", name="mesh-relay", relay_node="!4b17000b", frame_port=number, **kw
    )
    link = make(config)
    task = asyncio.create_task(link.run())
    await until(lambda: link.online)
    return port, link, task


async def stop(port: FakePort, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert port.transport is not None
    port.transport.close()


def test_frames_are_paced_by_their_airtime_at_longfast() -> None:
    async def main() -> None:
        port, link, task = await fake_port_and_link()
        try:
            assert link.min_interval == pytest.approx(2.16, abs=0.01)  # a full frame on air
            await link.send(b"\x01" * MTU_MESH)
            assert link.next_send_at() - time.monotonic() == pytest.approx(FULL_FRAME_S, abs=0.1)
            with pytest.raises(LinkRefused, match="too soon"):
                await link.send(b"\x02" * 30)
            await until(lambda: port.sent != [])
            assert port.sent == [(KIT_B, b"\x01" * MTU_MESH)]
            # A short frame holds the channel for less: 30 B of payload ≈ 0.6 s.
            assert link.airtime(30) == pytest.approx(LONG_FAST.airtime(on_air_bytes(30)))
            assert link.airtime(30) < link.airtime(MTU_MESH) / 2
        finally:
            await stop(port, task)

    run(main())


def test_nothing_is_sent_while_the_radio_reports_40_percent_utilisation() -> None:
    async def main() -> None:
        port, link, task = await fake_port_and_link(busy_wait=0.3)
        try:
            port.utilisation = 40.0
            port.status()
            await until(lambda: link.busy)
            assert link.next_send_at() > time.monotonic()  # the scheduler starts nothing new
            with pytest.raises(LinkRefused, match="utilisation 40%"):
                await link.send(b"\x01" * 40)
            assert port.sent == []
            sending = asyncio.create_task(link.send(b"\x02" * 40))
            await asyncio.sleep(0.1)
            assert port.sent == []  # a due fragment waits for the channel
            port.utilisation = 39.0
            port.status()
            await sending
            await until(lambda: port.sent == [(KIT_B, b"\x02" * 40)])
        finally:
            await stop(port, task)

    run(main())


def test_a_1kb_report_reaches_the_centre_through_another_kit_and_is_acknowledged(
    tmp_path: Path,
) -> None:
    """Kit A has no IP link: LoRa to kit B, which posts to the centre and relays the ACK back."""
    speed = 10.0

    async def main() -> None:
        gateway = '[[gateways]]\nname = "mesh"\nkind = "relay"\nmtu = 233\nmissing_after_s = 10\n'
        net = MeshNet(speed=speed, telemetry_s=5.0)
        async with (
            SimulatedRadio(KIT_A, short_name="KA") as sim_a,
            SimulatedRadio(KIT_B, short_name="KB") as sim_b,
            centre(tmp_path, udp_gateways=[gateway]) as (url, data),
            kit(tmp_path, "") as k,  # its uplink process has no links: ours runs below
        ):
            net.add(KIT_A, radio=sim_a)
            net.add(KIT_B, radio=sim_b)
            net.join(KIT_A, KIT_B)
            radio_a = MeshRadio(MeshConfig(enabled=True, connection="tcp", port=sim_a.port))
            radio_b = MeshRadio(MeshConfig(enabled=True, connection="tcp", port=sim_b.port))
            port = FramePort(radio_a, 0)
            relay = CentreRelay(radio_b, url, "mesh", retry_min_s=0.2)
            frames_a, frames_b = MeshFrames(port, None), MeshFrames(None, relay)
            for radio, frames in ((radio_a, frames_a), (radio_b, frames_b)):
                radio.on_event = route(frames)
            async with net:
                await radio_a.start()
                await radio_b.start()
                tasks = [asyncio.create_task(frames_a.run()), asyncio.create_task(frames_b.run())]
                await until(lambda: radio_a.online and radio_b.online and port.address[1] != 0)
                config = Config(
                    kind="meshrelay",
                    name="mesh-relay",
                    relay_node=sim_b.id,
                    frame_port=port.address[1],
                    speed=speed,
                )
                security = kit_security(KIT_ID, tmp_path / "a-security.sqlite3")
                uplink = Uplink(
                    KIT_ID,
                    [make(config)],
                    k.edge,
                    tmp_path / "a-uplink",
                    k.media_dir,
                    ack_timeouts={"mesh-relay": 60.0},
                    poll_s=0.2,
                    security=security,
                )
                sender = asyncio.create_task(uplink.run())
                try:
                    text = "东河村北侧山体滑坡，两户被埋，需要挖掘机和医疗队。" * 20
                    item = new_item("situation", source="web", text=text)
                    seq = (await k.edge.accept(item))["seq"]
                    assert len(text.encode("gb18030")) >= 1000
                    uplink.wake()
                    await until(lambda: seq in centre_items(data), 40)
                    await until(lambda: k.kit_states()[seq] == ACKNOWLEDGED, 20)
                finally:
                    for t in (sender, *tasks):
                        t.cancel()
                    await asyncio.gather(sender, *tasks, return_exceptions=True)
                    await radio_a.close()
                    await radio_b.close()
                    security.state.close()
            assert centre_items(data)[seq][0] == 1
            fragments = net.nodes[KIT_A].transmissions
            assert 5 <= fragments <= 8, fragments  # 1 KB in ≈216-byte fragments, no storm
            assert relay.posted >= 5 and relay.answered >= 1

    run(main(), timeout=150)  # a deadline for a busy machine: start-up alone may take 30 s
    # The edge client's process-wide ZeroMQ context keeps its I/O threads' descriptors open.
    zmq.asyncio.Context.instance().term()


def route(frames: MeshFrames) -> Callable[[Event], None]:
    def on_event(event: Event) -> None:
        if isinstance(event, DataReceived):
            frames.heard(event)

    return on_event
