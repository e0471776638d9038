"""Mesh benchmark: kit-to-kit relay goodput, a 1 KB report over 3 hops, a team SOS to the centre.

The LoRa mesh is :class:`sim.meshnet.MeshNet` in ACCELERATED time (``--speed``); the
kits' radios are simulated radios driven by the real ``meshtastic`` library; the centre
and the kits' edge daemons run as real processes. Times and rates are in emulated
seconds. Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/mesh.py [--speed 20] [--frames 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import zmq.asyncio

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    # Run as a file: import the kit's packages, not this folder (bench/mesh.py ≠ mesh).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from edge import bus
from edge.item import new_item
from mesh.config import MeshConfig
from mesh.process import MeshService
from mesh.radio import ChannelReport, DataReceived, Event, MeshRadio
from mesh.relay import LONG_FAST, CentreRelay, FramePort, MeshFrames, on_air_bytes
from sim.harness import KIT_ID, Kit, centre, centre_items, kit, kit_security
from sim.meshnet import MeshNet
from sim.meshradio import Member, SimulatedRadio
from uplink.frames import MTU_MESH
from uplink.kinds.meshrelay import Config, make
from uplink.runner import Uplink

KIT_A, KIT_B = 0x4B17_000A, 0x4B17_000B
LEADER = Member(0xA1B2_0001, "张队长", "ZDZ", 30.0103, 103.0012, 620, 87)
ACKNOWLEDGED = 2
SOS_KIT_ID = KIT_ID + 1  # a kit of its own: the same id would make its item #1 a "copy"
REPORT = "东河村北侧山体滑坡，两户被埋，需要挖掘机和医疗队。" * 20  # 1,000 bytes in GB18030


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the mesh benchmark stalled: see the logs in the temporary folder")
        await asyncio.sleep(0.02)


def stored(centre_dir: Path, kit_id: int) -> int:
    """How many items of ``kit_id`` the centre has stored."""
    db = sqlite3.connect(centre_dir / "centre.sqlite3")
    try:
        return int(
            db.execute("SELECT COUNT(*) FROM items WHERE kit_id = ?", (kit_id,)).fetchone()[0]
        )
    finally:
        db.close()


@asynccontextmanager
async def radio_on(net: MeshNet, num: int, on_event: Callable[[Event], None]) -> AsyncIterator[Any]:
    """A kit's simulated radio on node ``num`` and the kit's MeshRadio connected to it."""
    async with SimulatedRadio(num) as sim:
        net.add(num, radio=sim)
        radio = MeshRadio(MeshConfig(enabled=True, connection="tcp", port=sim.port))
        radio.on_event = on_event
        await radio.start()
        try:
            yield radio
        finally:
            await radio.close()


@asynccontextmanager
async def running(*coros: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def relay_link(port: FramePort, speed: float) -> Any:
    config = Config(
        kind="meshrelay",
        name="mesh-relay",
        relay_node=f"!{KIT_B:08x}",
        frame_port=port.address[1],
        speed=speed,
    )
    return make(config)


async def goodput(speed: float, frames: int) -> dict[str, float | None]:
    """Full frames from kit A to kit B, one hop, paced by airtime and the 40 % rule.

    The channel utilisation is what kit A's radio reported (its own device telemetry, every
    5 emulated seconds), sampled every emulated second from the end of the first minute
    (the firmware's figure covers the last minute, so it starts low) to the last frame."""
    net = MeshNet(speed=speed, telemetry_s=5.0)
    heard: list[tuple[float, int]] = []
    frames_a = MeshFrames(None, None)

    def at_a(event: Event) -> None:
        if isinstance(event, ChannelReport):
            frames_a.channel_changed()  # as MeshService does: the link hears it at once

    def at_b(event: Event) -> None:
        if isinstance(event, DataReceived):
            heard.append((net.now(), len(event.payload)))

    async with AsyncExitStack() as stack:
        radio_a = await stack.enter_async_context(radio_on(net, KIT_A, at_a))
        radio_b = await stack.enter_async_context(radio_on(net, KIT_B, at_b))
        net.join(KIT_A, KIT_B)
        await stack.enter_async_context(net)
        await until(lambda: radio_a.online and radio_b.online, 20)
        port = frames_a.port = FramePort(radio_a, 0)
        await port.start()
        stack.callback(port.close)
        link = relay_link(port, speed)
        await stack.enter_async_context(running(port.run(), link.run()))
        await until(lambda: link.online, 10)
        start = net.now()
        utilisation: list[float] = []

        async def sample() -> None:
            await net.sleep(60)
            while True:
                if radio_a.channel_utilisation is not None:
                    utilisation.append(radio_a.channel_utilisation)
                await net.sleep(1)

        await stack.enter_async_context(running(sample()))
        for i in range(frames):
            await asyncio.sleep(max(0.0, link.next_send_at() - time.monotonic()))
            await link.send(bytes([i % 256]) * MTU_MESH)
            if i % 10 == 9:
                util = "?" if link.utilisation is None else f"{link.utilisation:.0f}"
                say(f"  {i + 1}/{frames} frames sent, radio reports {util} % channel busy")
        await until(lambda: len(heard) >= frames, 120)
        utilisation = list(utilisation)  # sampled up to the last frame
    seconds = heard[-1][0] - start
    bps = 8 * sum(n for _, n in heard) / seconds
    limit = 8 * MTU_MESH / LONG_FAST.airtime(on_air_bytes(MTU_MESH))
    return {
        "relay_goodput_bps": round(bps, 1),
        "relay_goodput_ratio": round(bps / limit, 3),
        "longfast_limit_bps": round(limit, 1),
        "channel_util_pct_during_goodput": (
            round(sum(utilisation) / len(utilisation), 1) if utilisation else None
        ),
        "channel_util_pct_max": round(max(utilisation), 1) if utilisation else None,
    }


async def report_over_hops(root: Path, url: str, speed: float, hops: int) -> dict[str, float]:
    """A 1 KB report filed on kit A reaches the centre through kit B ``hops`` hops away."""
    net = MeshNet(speed=speed, telemetry_s=5.0)
    port_box: list[FramePort] = []
    relay_box: list[CentreRelay] = []

    def at_a(event: Event) -> None:
        if isinstance(event, DataReceived) and port_box:
            MeshFrames(port_box[0], None).heard(event)

    def at_b(event: Event) -> None:
        if isinstance(event, DataReceived) and relay_box:
            MeshFrames(None, relay_box[0]).heard(event)

    async with AsyncExitStack() as stack:
        k: Kit = await stack.enter_async_context(kit(root, ""))
        radio_a = await stack.enter_async_context(radio_on(net, KIT_A, at_a))
        radio_b = await stack.enter_async_context(radio_on(net, KIT_B, at_b))
        repeaters = [0x7E00 + i for i in range(hops - 1)]
        for num in repeaters:
            net.add(num)
        net.chain(KIT_A, *repeaters, KIT_B)
        await stack.enter_async_context(net)
        await until(lambda: radio_a.online and radio_b.online, 20)
        port = FramePort(radio_a, 0)
        await port.start()
        stack.callback(port.close)
        port_box.append(port)
        relay = CentreRelay(radio_b, url, "mesh", retry_min_s=0.2)
        relay_box.append(relay)
        security = kit_security(KIT_ID, root / "a-security.sqlite3")
        stack.callback(security.state.close)
        uplink = Uplink(
            KIT_ID,
            [relay_link(port, speed)],
            k.edge,
            root / "a-uplink",
            k.media_dir,
            ack_timeouts={"mesh-relay": 300 / speed},
            poll_s=0.2,
            security=security,
        )
        await stack.enter_async_context(running(port.run(), relay.run(), uplink.run()))
        seq = (await k.edge.accept(new_item("situation", source="web", text=REPORT)))["seq"]
        start = net.now()
        uplink.wake()
        await until(lambda: seq in centre_items(root.parent / "centre"), 600 / speed)
        stored = net.now() - start
        await until(lambda: k.kit_states()[seq] == ACKNOWLEDGED, 600 / speed)
        acked = net.now() - start
    return {f"report_1kb_{hops}hops_s": round(stored, 1), f"ack_1kb_{hops}hops_s": round(acked, 1)}


async def sos_to_centre(root: Path, url: str) -> float:
    """A member's SOS text, one hop to kit B, then over kit B's IP link to the centre (speed 1)."""
    net = MeshNet(speed=1.0)
    ip = (
        f'[[links]]\nkind = "ip"\nname = "vsat"\nurl = "{url}"\nrate = 250000\nrtt = 0.6\n'
        "ack_timeout = 30\nprobe_interval = 1\n"
    )
    async with AsyncExitStack() as stack:
        k: Kit = await stack.enter_async_context(kit(root, ip, kit_id=SOS_KIT_ID))
        sim = await stack.enter_async_context(SimulatedRadio(KIT_B, members=[LEADER]))
        net.add(KIT_B, radio=sim)
        net.add(LEADER.num, member=LEADER)
        net.join(LEADER.num, KIT_B)
        await stack.enter_async_context(net)
        publisher = bus.Publisher(zmq.asyncio.Context.instance(), f"ipc://{root / 'run'}/bus.sock")
        stack.callback(publisher.close)
        service = MeshService(
            MeshConfig(enabled=True, connection="tcp", port=sim.port), k.edge, publisher
        )
        stop = asyncio.Event()
        await stack.enter_async_context(running(service.run(stop)))
        await until(lambda: service.radio.online, 20)
        start = time.monotonic()
        net.text(LEADER.num, "SOS 被困两人，一人腿部骨折")
        await until(lambda: stored(root.parent / "centre", SOS_KIT_ID) > 0, 60)
        stop.set()
        return time.monotonic() - start


async def main(speed: float, frames: int) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "mesh", "speed": speed, "preset": LONG_FAST.name}
    result["full_frame_airtime_s"] = round(LONG_FAST.airtime(on_air_bytes(MTU_MESH)), 3)
    say(f"relay goodput: {frames} full frames kit → kit over one hop …")
    result.update(await goodput(speed, frames))
    with tempfile.TemporaryDirectory(prefix="kit-bench-mesh-") as tmp:
        root = Path(tmp)
        gateway = '[[gateways]]\nname = "mesh"\nkind = "relay"\nmtu = 233\nmissing_after_s = 30\n'
        kits = (KIT_ID, SOS_KIT_ID)
        async with centre(root, udp_gateways=[gateway], kit_ids=kits) as (url, _):
            say("a 1 KB report over 3 hops to the relaying kit …")
            (root / "hops").mkdir()
            result.update(await report_over_hops(root / "hops", url, speed, 3))
            say("a team SOS through a kit's IP link …")
            (root / "sos").mkdir()
            result["sos_mesh_to_centre_s"] = round(await sos_to_centre(root / "sos", url), 2)
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.speed, args.frames)), ensure_ascii=False))
