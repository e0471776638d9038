"""Uplink benchmark: frame sizes, satellite goodput, resume waste, bonding, P0 pre-emption, ingest.

The kit (edge + uplink processes) and the centre run as real processes; links are
emulated by relays on loopback in ACCELERATED time (``--speed``, default 4: one emulated
second takes a quarter of a real one). Times and rates are reported in emulated units.
Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/uplink.py [--mb 20] [--speed 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    # Run as a file: import the kit's packages, not this folder (bench/uplink.py ≠ uplink).
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from edge.item import new_item
from sim.harness import KIT_ID, Kit, centre, kit
from sim.linkemu import LinkConditions, ScaledClock
from sim.linkrelay import LinkRelay
from uplink import compact, frames

VSAT = dict(rate=250_000.0, rtt=0.6, loss=0.01)  # 2 Mbit/s, GEO round trip, 1 % loss
CELL = dict(rate=125_000.0, rtt=0.15, loss=0.0)  # 1 Mbit/s cellular
CHUNK = 64 * 1024


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ip_link(name: str, address: tuple[str, int], rate: float, rtt: float, speed: float) -> str:
    # The kit runs in real time: its expectations are the emulated ones, scaled.
    return (
        f'[[links]]\nkind = "ip"\nname = "{name}"\nurl = "http://{address[0]}:{address[1]}"\n'
        f"rate = {rate * speed}\nrtt = {rtt / speed}\nchunk_bytes = {CHUNK}\nstreams = 8\n"
        f"ack_timeout = 30\nprobe_interval = 1\ntimeout = {max(5.0, 45 / speed)}\n"
    )


async def file_photo(k: Kit, size: int, name: str) -> int:
    ref = k.media(f"photo/{name}.jpg", os.urandom(size), "image/jpeg")
    answer = await k.edge.accept(new_item("photo", source="bench", media=ref))
    return int(answer["seq"])


async def acked(k: Kit, seq: int, poll: float = 0.01) -> float:
    """Wait for ``seq`` to be acknowledged; returns the real time it was seen so."""
    while True:
        state = await k.edge.call({"op": "get", "seq": seq})
        if state["state"] == "ACKNOWLEDGED":
            return time.monotonic()
        await asyncio.sleep(poll)


async def one_transfer(
    root: Path,
    url: str,
    size: int,
    speed: float,
    links: list[tuple[str, dict[str, float], list[tuple[float, float]]]],
    *,
    kit_id: int,
    p0_at: float | None = None,
) -> dict[str, Any]:
    """One photo of ``size`` bytes over ``links``; emulated seconds and relay byte counts."""
    port = int(url.rsplit(":", 1)[1])
    clock = ScaledClock(speed)
    relays = [
        LinkRelay(
            ("127.0.0.1", 0),
            ("127.0.0.1", port),
            LinkConditions(rate=c["rate"], rtt=c["rtt"], loss=c["loss"]),
            name=name,
            clock=clock,
            outages=outages,
            seed=7,
        )
        for name, c, outages in links
    ]
    for r in relays:
        await r.start()
    try:
        config = "".join(
            ip_link(name, r.address, c["rate"], c["rtt"], speed)
            for (name, c, _), r in zip(links, relays, strict=True)
        )
        async with kit(root, config, kit_id=kit_id) as k:
            await asyncio.sleep(1.0)  # links come up
            for r in relays:
                r.stats.bytes_up = 0
            t0 = time.monotonic()
            seq = await file_photo(k, size, root.name)
            p0_ms = None
            if p0_at is not None:
                await asyncio.sleep(p0_at / speed)
                t_p0 = time.monotonic()
                sos = await k.edge.accept(new_item("sos", source="bench", text="紧急求救"))
                p0_ms = (await acked(k, sos["seq"]) - t_p0) * speed * 1000
            done = await acked(k, seq, poll=0.05)
        return {
            "seconds": (done - t0) * speed,
            "bytes_up": sum(r.stats.bytes_up for r in relays),
            "p0_ms": p0_ms,
        }
    finally:
        for r in relays:
            await r.close()


async def ingest_rate(url: str, frames_total: int = 5000, batch: int = 100) -> float:
    """Narrow frames (one SOS each) posted to the centre's relay gateway, acked per frame."""
    item = compact.sos_example()
    bodies = []
    for start in range(0, frames_total, batch):
        out = bytearray()
        for i in range(start, start + batch):
            raw = frames.fragment(
                KIT_ID, 1_000_000 + i, compact.pack_items([(10_000 + i, item)]), 77
            )[0]
            out += struct.pack(">H", len(raw)) + raw
        bodies.append(bytes(out))
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        for body in bodies:
            async with session.post(
                url + "/v1/frames", data=body, headers={"Kit-Link": "relay"}
            ) as r:
                if r.status != 200:
                    raise SystemExit(f"ingest refused: {r.status} {await r.text()}")
                await r.read()
        return frames_total / (time.perf_counter() - t0)


async def main(mb: float, speed: float) -> dict[str, Any]:
    size = int(mb * 1_000_000)
    chunk_time_ms = CHUNK / VSAT["rate"] * 1000
    result: dict[str, Any] = {"bench": "uplink", "speed": speed, "file_mb": mb}
    result.update(
        {
            k: v
            for k, v in compact.figures().items()
            if k in ("sos_frame_bytes", "frame_overhead_bytes", "fragment_overhead_bytes")
        }
    )
    with tempfile.TemporaryDirectory(prefix="kit-bench-") as tmp:
        root = Path(tmp)
        gateway = '[[gateways]]\nname = "relay"\nkind = "relay"\nmtu = 77\n'
        async with centre(root, udp_gateways=[gateway], kit_ids=(1, 2, 3, KIT_ID)) as (url, _):
            say(f"vsat: {mb:g} MB over 2 Mbit/s, 600 ms RTT, 1 % loss, a P0 filed mid-transfer …")
            (root / "a").mkdir()
            clean = await one_transfer(
                root / "a",
                url,
                size,
                speed,
                [("vsat", VSAT, [])],
                kit_id=1,
                p0_at=size / VSAT["rate"] / 3,
            )
            result["vsat_goodput_ratio"] = round(size / clean["seconds"] / VSAT["rate"], 3)
            result["p0_preempt_ms"] = round(clean["p0_ms"] - VSAT["rtt"] * 1000)
            result["p0_preempt_target_ms"] = round(chunk_time_ms + 1000)

            say("vsat with five 30-second outages …")
            outages = [(8.0 + i * 37.0, 38.0 + i * 37.0) for i in range(5)]
            (root / "b").mkdir()
            cut = await one_transfer(
                root / "b", url, size, speed, [("vsat", VSAT, outages)], kit_id=2
            )
            result["resume_waste_ratio"] = round(
                max(0, cut["bytes_up"] - clean["bytes_up"]) / size, 4
            )
            result["outage_transfer_s"] = round(cut["seconds"], 1)

            say("bonding: vsat + cellular at once …")
            (root / "c").mkdir()
            bond = await one_transfer(
                root / "c", url, size, speed, [("vsat", VSAT, []), ("cell", CELL, [])], kit_id=3
            )
            result["bond_ratio"] = round(size / bond["seconds"] / (VSAT["rate"] + CELL["rate"]), 3)

            say("centre ingest of narrow frames …")
            result["centre_ingest_per_s"] = round(await ingest_rate(url))
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--speed", type=float, default=4.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.mb, args.speed)), ensure_ascii=False))
