"""`kit mesh` end to end: the team's SOS, reports and positions reach a real edge daemon."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop

from config.loader import load
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.item import Item, Kind, Position, Priority, decode, new_item
from mesh.config import MeshConfig
from mesh.process import Handover, is_status_query, serve, status_text
from sim.meshradio import SimulatedRadio, demo_team

pytestmark = pytest.mark.timeout(60)
LEADER, MEDIC = 0xA1B2_0001, 0xA1B2_0002


def ptys() -> set[str]:
    fds = os.listdir("/proc/self/fd")
    links = {os.readlink(f"/proc/self/fd/{f}") for f in fds if os.path.exists(f"/proc/self/fd/{f}")}
    return {link for link in links if link.startswith(("/dev/pts", "/dev/ptmx"))}


@pytest.fixture(autouse=True)
def nothing_left_open() -> Iterator[None]:
    # ZeroMQ closes its descriptors in its own time: sockets are checked in test_mesh_radio.py,
    # here threads and ptys.
    threads, before = set(threading.enumerate()), ptys()
    yield
    assert not set(threading.enumerate()) - threads, "threads left running"
    assert not ptys() - before, "ptys left open"


def mesh_config(radio: SimulatedRadio) -> MeshConfig:
    return MeshConfig(
        enabled=True, connection="tcp", port=radio.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )


async def outbox(config_path: Path, want: int, timeout: float = 15.0) -> list[Item]:
    """The items waiting in the edge's outbox, once there are ``want`` of them."""
    client = AsyncEdgeClient(endpoint(config_path), timeout_s=2.0)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                answer = await client.call(
                    {"op": "next", "classes": [0, 1, 2], "max_size": 1 << 40, "limit": 100}
                )
                items = [decode(row[4]) for row in answer["items"]]
            except Exception:
                items = []
            if len(items) >= want:
                return items
            assert asyncio.get_running_loop().time() < deadline, f"outbox holds {items}"
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def by_kind(items: list[Item]) -> dict[Kind, Item]:
    return {i.kind: i for i in items}


def test_team_sos_report_and_position_reach_the_edge(kit_config: Path) -> None:
    proc = start_edge(kit_config)
    config = load(kit_config).config

    async def main() -> list[Item]:
        async with SimulatedRadio(members=demo_team()) as sim:
            stop_mesh = asyncio.Event()
            task = asyncio.create_task(serve(config, stop_mesh, mesh_config(sim)))
            try:
                await asyncio.sleep(0.3)
                sim.position(LEADER, 30.0200, 103.0100, 650)
                await asyncio.sleep(0.2)
                sim.text(LEADER, "SOS 被困 3 人")
                sim.text(MEDIC, "伤员 3 被困 2 需要 水 药品 @ 桥头")
                sim.text(MEDIC, "到达桥头")
                return await outbox(kit_config, 4)
            finally:
                stop_mesh.set()
                await task

    try:
        items = by_kind(asyncio.run(main()))
    finally:
        stop(proc)
    sos = items[Kind.SOS]
    assert (sos.priority, sos.source, sos.text) == (Priority.P0, "mesh:!a1b20001", "SOS 被困 3 人")
    assert sos.position is not None
    assert (round(sos.position.lat, 4), round(sos.position.lon, 4)) == (30.02, 103.01)
    assert sos.data["trapped"] == 3 and sos.data["sender"] == "张队长"
    report = items[Kind.SITUATION]
    assert report.priority is Priority.P1
    assert {k: report.data[k] for k in ("injured", "trapped", "need", "place")} == {
        "injured": 3,
        "trapped": 2,
        "need": "水,药品",
        "place": "桥头",
    }
    assert items[Kind.MESSAGE].text == "到达桥头"
    track = items[Kind.TRACK]
    assert (track.priority, track.source) == (Priority.P2, "mesh:!a1b20001")


def test_texts_wait_for_an_edge_that_is_not_there_yet(kit_config: Path) -> None:
    config = load(kit_config).config
    procs: list[Any] = []

    async def main() -> list[Item]:
        async with SimulatedRadio(members=demo_team()) as sim:
            stop_mesh = asyncio.Event()
            task = asyncio.create_task(serve(config, stop_mesh, mesh_config(sim)))
            try:
                await asyncio.sleep(0.3)
                sim.text(LEADER, "求救！楼塌了")
                sim.text(MEDIC, "casualties 2")
                await asyncio.sleep(1.0)  # the edge is down: both wait in the hand-over queue
                procs.append(await asyncio.to_thread(start_edge, kit_config))
                return await outbox(kit_config, 2)
            finally:
                stop_mesh.set()
                await task

    try:
        items = by_kind(asyncio.run(main()))
    finally:
        for proc in procs:
            stop(proc)
    assert items[Kind.SOS].text == "求救！楼塌了"
    assert items[Kind.CASUALTIES].data["injured"] == 2


def item(kind: str, source: str = "mesh:!00000001", **kw: Any) -> Item:
    return new_item(kind, source=source, **kw)


def test_handover_queue_is_bounded_drops_the_least_urgent_and_supersedes_tracks() -> None:
    queue = Handover(3)
    here = Position(30.0, 103.0)
    assert queue.put(item("track", position=here)) is None
    newer = item("track", position=Position(30.1, 103.0))
    assert queue.put(newer) is None and len(queue) == 1  # the older track is superseded
    sos = item("sos")
    assert queue.put(item("message", text="一")) is None
    assert queue.put(sos) is None
    assert queue.next() is sos  # the most urgent goes first
    dropped = queue.put(item("message", text="二"))
    assert dropped is newer  # full: the track makes way, never the SOS
    first = queue.next()
    assert first is sos
    queue.done(sos)
    assert queue.next() is not None and queue.next().text == "一"  # type: ignore[union-attr]


def test_orders_for_the_team_and_a_member_go_out_over_the_mesh(kit_config: Path) -> None:
    proc = start_edge(kit_config)
    config = load(kit_config).config

    async def main() -> tuple[list[str], list[str]]:
        async with SimulatedRadio(members=demo_team()) as sim:
            stop_mesh = asyncio.Event()
            task = asyncio.create_task(serve(config, stop_mesh, mesh_config(sim)))
            publisher = bus.Publisher(
                zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET)
            )
            try:
                # The mesh process subscribes before it connects to the radio.
                while sim.handshakes < 1:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                medic = f"!{MEDIC:08x}"
                for i, (target, text) in enumerate(
                    [(medic, "请带担架到桥头"), ("", "只给本机"), ("^all", "18时前撤离至高地")]
                ):
                    order = topics.OrderReceived(i + 1, target, text, "beidou", 0)
                    await publisher.publish(topics.ORDER_RECEIVED, order)
                deadline = asyncio.get_running_loop().time() + 10
                while len(sim.members[LEADER].inbox) < 1:
                    assert asyncio.get_running_loop().time() < deadline, sim.sent
                    await asyncio.sleep(0.1)
                return list(sim.members[MEDIC].inbox), list(sim.members[LEADER].inbox)
            finally:
                publisher.close()
                stop_mesh.set()
                await task

    try:
        medic_got, leader_got = asyncio.run(main())
    finally:
        stop(proc)
    assert medic_got == ["【指挥中心】请带担架到桥头", "【指挥中心】18时前撤离至高地"]
    assert leader_got == ["【指挥中心】18时前撤离至高地"]  # the kit's own order stays on the kit


def test_status_words_and_the_one_packet_reply() -> None:
    assert all(is_status_query(t) for t in ("状态", " Status? ", "STATUS", "状态？", "zt"))
    assert not any(is_status_query(t) for t in ("状态很好", "status report", "SOS", ""))
    links = [
        topics.LinkState("vsat", "ip", False, 0, 0.6),
        topics.LinkState("beidou", "beidou", True, 1.3, 10),
    ]
    text = status_text(links, {"P0": 0, "P1": 3, "P4": 12}, topics.BatteryLevel(41, 7.4, False))
    assert text == "套件状态｜链路 beidou✓ vsat✗｜待发 P1:3 P4:12｜电量 41% 电池"
    many = [topics.LinkState(f"link-{i:02d}", "ip", True, 1, 1) for i in range(40)]
    long = status_text(many, None, None)
    assert len(long.encode()) <= 233 and long.endswith("…")


def test_a_member_asking_status_gets_the_kit_state_and_no_item(kit_config: Path) -> None:
    proc = start_edge(kit_config)
    config = load(kit_config).config

    async def main() -> list[str]:
        async with SimulatedRadio(members=demo_team()) as sim:
            stop_mesh = asyncio.Event()
            task = asyncio.create_task(serve(config, stop_mesh, mesh_config(sim)))
            publisher = bus.Publisher(
                zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET)
            )
            try:
                while sim.handshakes < 1:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                await publisher.publish(
                    topics.LINK_STATE, topics.LinkState("beidou", "beidou", True, 1.3, 10)
                )
                await asyncio.sleep(0.2)
                sim.text(MEDIC, "状态", to_kit=True)
                deadline = asyncio.get_running_loop().time() + 10
                while not sim.members[MEDIC].inbox:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
                sim.text(MEDIC, "到达桥头")  # an ordinary text is still filed
                items = await outbox(kit_config, 1)
                assert [i.text for i in items] == ["到达桥头"]
                return list(sim.members[MEDIC].inbox)
            finally:
                publisher.close()
                stop_mesh.set()
                await task

    try:
        replies = asyncio.run(main())
    finally:
        stop(proc)
    assert replies == ["套件状态｜链路 beidou✓｜待发 0"]
