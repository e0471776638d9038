"""End to end: a kit and a centre as real processes, links flapping, every class filed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from edge.item import Kind, Position, new_item
from sim.harness import KIT_ID, Kit, centre, centre_items, free_port, kit, security_toml
from sim.linkemu import LinkConditions
from sim.linkrelay import DatagramRelay, LinkRelay

ACKNOWLEDGED = 2


def ip_link(
    name: str, address: tuple[str, int], rate: float, scheme: str = "http", **extra: object
) -> str:
    more = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in extra.items())
    return (
        f'[[links]]\nkind = "ip"\nname = "{name}"\nurl = "{scheme}://{address[0]}:{address[1]}"\n'
        f"rate = {rate}\nrtt = 0.3\nack_timeout = 5\nprobe_interval = 0.5\ntimeout = 5\n"
        f"chunk_bytes = 65536\n{more}"
    )


async def file_everything(k: Kit) -> dict[int, Kind]:
    """Items of every class, from several sources; returns seq -> kind."""
    filed: dict[int, Kind] = {}

    async def file(item: object) -> None:
        answer = await k.edge.accept(item)  # type: ignore[arg-type]
        filed[answer["seq"]] = item.kind  # type: ignore[attr-defined]

    for i in range(3):
        await file(
            new_item(
                "sos",
                source=f"mesh:!0000000{i}",
                text=f"被困{i}",
                position=Position(30.6, 104.0 + i / 100),
            )
        )
    for i in range(15):
        await file(new_item("situation", source="web", text=f"第{i}号灾情：道路中断"))
    for i in range(30):
        await file(
            new_item(
                "track",
                source=f"mesh:!a000000{i % 3}",
                position=Position(30.6 + i / 1e4, 104.0),
                created_ms=1_790_000_000_000 + i * 1000,
            )
        )
    for i in range(4):
        thumb = k.media(f"thumb/{i}.webp", os.urandom(3000), "image/webp")
        await file(new_item("thumbnail", source="drone-1", media=thumb))
    for i in range(2):
        photo = k.media(f"photo/{i}.jpg", os.urandom(700_000), "image/jpeg")
        await file(new_item("photo", source="web", media=photo))
    return filed


async def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.25)
    return False


def beidou_link(address: tuple[str, int]) -> str:
    # Beidou-like: 77-byte frames, one every 0.5 s here (60 s on a civil card), P0–P2 only.
    return (
        f'[[links]]\nkind = "datagram"\nname = "beidou"\ngateway = "{address[0]}:{address[1]}"\n'
        f'mtu = 77\nmin_interval = 0.5\nrate = 150\nrtt = 1.0\nack_timeout = 8\nclasses = ["P0", "P1", "P2"]\n'
    )


def test_every_item_reaches_the_centre_exactly_once_over_flapping_links(tmp_path: Path) -> None:
    async def go() -> None:
        gw_port = free_port(socket.SOCK_DGRAM)
        gateway = (
            f'[[gateways]]\nname = "beidou"\nkind = "udp"\nlisten = "127.0.0.1:{gw_port}"\n'
            "mtu = 77\nmissing_after_s = 3\n"
        )
        async with centre(tmp_path, udp_gateways=[gateway]) as (url, centre_dir):
            port = int(url.rsplit(":", 1)[1])
            vsat_conditions = LinkConditions(rate=250_000, rtt=0.6, jitter=0.02, loss=0.01)
            cell_conditions = LinkConditions(rate=60_000, rtt=0.15)
            beidou_conditions = LinkConditions(
                rate=150, rtt=1.0, loss=0.05, mtu=77, min_interval=0.5
            )
            here = ("127.0.0.1", 0)
            async with (
                LinkRelay(
                    here,
                    ("127.0.0.1", port),
                    vsat_conditions,
                    name="vsat",
                    outages=[(1.0, 4.0), (8.0, 10.0)],
                    reset_after=1.0,
                    seed=1,
                ) as vsat,
                LinkRelay(
                    here,
                    ("127.0.0.1", port),
                    cell_conditions,
                    name="cell",
                    outages=[(3.0, 7.0)],
                    reset_after=1.0,
                    seed=2,
                ) as cell,
                DatagramRelay(
                    here,
                    ("127.0.0.1", gw_port),
                    beidou_conditions,
                    name="beidou",
                    outages=[(5.0, 6.0)],
                    seed=3,
                ) as beidou,
            ):
                links = (
                    ip_link("vsat", vsat.address, 250_000)
                    + ip_link("cell", cell.address, 60_000)
                    + beidou_link(beidou.address)
                )
                async with kit(tmp_path, links) as k:
                    filed = await file_everything(k)
                    tracks = {s for s, kind in filed.items() if kind is Kind.TRACK}
                    latest = {max(s for s in tracks if s % 3 == r) for r in range(3)}
                    expected = {s for s in filed if s not in tracks} | latest

                    def all_done() -> bool:
                        states = k.kit_states()
                        return all(states[s] == ACKNOWLEDGED for s in expected)

                    delivered = await wait_until(all_done, 90)
                    stored = centre_items(centre_dir)
                    states = k.kit_states()
                missing = sorted(s for s in expected if states[s] != ACKNOWLEDGED)
                log = (tmp_path / "uplink.log").read_text()
                assert delivered, f"not acknowledged: {missing}\n{log[-3000:]}"
                assert vsat.stats.resets + cell.stats.resets > 0, "links should flap mid-transfer"
                # P0 goes out on every link: frames crossed Beidou and the centre's gateway
                # acknowledged them with ACK frames back down the same narrow link.
                assert beidou.stats.up.messages_delivered > 0, "the narrow link carried nothing"
                assert beidou.stats.down.messages_delivered > 0, "no ACK frame came back"

        # Everything the kit holds acknowledged is at the centre, each item stored once
        # (the centre's key is (kit, seq); `copies` counts the duplicates it dropped).
        assert expected <= set(stored) <= set(filed)
        for seq, kind in filed.items():
            if kind in (Kind.PHOTO, Kind.THUMBNAIL):
                assert stored[seq][1] is not None, f"media of {seq} incomplete at the centre"

    asyncio.run(go())


def test_report_filed_with_kit_report_reaches_kit_centre_over_an_emulated_link(
    tmp_path: Path,
) -> None:
    """Over HTTPS: the kit and the centre authenticate each other with the TLS identities
    derived from the kit's enrolled keys (security.tlsid)."""

    async def go() -> None:
        async with centre(tmp_path, tls=True) as (url, centre_dir):
            port = int(url.rsplit(":", 1)[1])
            conditions = LinkConditions(rate=30_000, rtt=0.8, loss=0.01)
            async with LinkRelay(("127.0.0.1", 0), ("127.0.0.1", port), conditions) as relay:
                config = tmp_path / "kit.toml"
                config.write_text(
                    f'[kit]\nid = {KIT_ID}\nname = "测试套件"\n'
                    '[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
                    + security_toml(KIT_ID, tmp_path)
                    + ip_link("satellite", relay.address, 30_000, scheme="https")
                )
                kit_run = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "run",
                    "--config",
                    str(config),
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    filed = None
                    for _ in range(100):
                        report = await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "edge.cli",
                            "report",
                            "trapped",
                            "--text",
                            "二楼有人被困",
                            "--count",
                            "2",
                            "--json",
                            "--config",
                            str(config),
                            stdout=asyncio.subprocess.PIPE,
                        )
                        out, _ = await report.communicate()
                        if report.returncode == 0:
                            filed = json.loads(out)
                            break
                        await asyncio.sleep(0.2)  # the edge daemon is still starting
                    assert filed is not None
                    arrived = await wait_until(lambda: filed["seq"] in centre_items(centre_dir), 30)
                finally:
                    kit_run.send_signal(signal.SIGINT)
                    await asyncio.wait_for(kit_run.wait(), 30)
        assert arrived
        assert kit_run.returncode == 0

    asyncio.run(go())
