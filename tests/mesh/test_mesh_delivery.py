"""Orders to a member over the mesh: the routing ACK or NAK, retries, and the centre's record."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop
from hygiene import no_thread_left, until  # noqa: F401

from centre.schema import DDL, SCHEMA_VERSION
from centre.store import Store
from config.loader import load
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.item import Item, Kind, Priority, decode, new_item
from mesh.config import MeshConfig
from mesh.process import MeshService, _settles, serve
from mesh.radio import AckReceived, Event, MeshRadio
from sim.meshnet import MeshNet
from sim.meshradio import Member, SimulatedRadio, demo_team

pytestmark = pytest.mark.timeout(60)
LEADER, MEDIC, SEARCHER = 0xA1B2_0001, 0xA1B2_0002, 0xA1B2_0003
KIT_NODE, REPEATER = 0x4B17_0001, 0x7E00_0001


def mesh_config(radio: SimulatedRadio, **kw: Any) -> MeshConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "connection": "tcp",
        "port": radio.port,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
    }
    return MeshConfig(**base | kw)


async def receipts(config_path: Path, want: int, timeout: float = 20.0) -> list[Item]:
    client = AsyncEdgeClient(endpoint(config_path), timeout_s=2.0)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            answer = await client.call(
                {"op": "next", "classes": [1], "max_size": 1 << 40, "limit": 100}
            )
            items = [decode(row[4]) for row in answer["items"]]
            items = [i for i in items if i.kind is Kind.RECEIPT]
            if len(items) >= want:
                return items
            assert asyncio.get_running_loop().time() < deadline, f"outbox holds {items}"
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def test_orders_end_in_a_delivery_receipt_or_a_reason_after_the_tries(kit_config: Path) -> None:
    proc = start_edge(kit_config)
    config = load(kit_config).config
    team = demo_team()
    team[2].reachable = False  # the searcher is behind the hill

    async def main() -> tuple[list[Item], SimulatedRadio]:
        async with SimulatedRadio(members=team) as sim:
            stop_mesh = asyncio.Event()
            mesh = mesh_config(sim, order_ack_timeout_s=5.0, order_tries=2)
            task = asyncio.create_task(serve(config, stop_mesh, mesh))
            publisher = bus.Publisher(
                zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET)
            )
            try:
                while sim.handshakes < 1:  # the mesh process subscribes before it connects
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                orders = [
                    (f"!{MEDIC:08x}", "请带担架到桥头"),
                    ("^all", "18时前撤离至高地"),
                    (f"!{SEARCHER:08x}", "返回集合点"),
                    ("!deadbeef", "谁？"),
                    ("!bad", "地址错误"),
                ]
                for i, (target, text) in enumerate(orders):
                    order = topics.OrderReceived(i + 1, target, text, "beidou", 0)
                    await publisher.publish(topics.ORDER_RECEIVED, order)
                return await receipts(kit_config, len(orders)), sim
            finally:
                publisher.close()
                stop_mesh.set()
                await task

    try:
        items, sim = asyncio.run(main())
    finally:
        stop(proc)
    by_order = {int(i.data["order_id"]): i for i in items}
    assert {i.priority for i in items} == {Priority.P1} and len(by_order) == 5
    assert dict(by_order[1].data) == {
        "order_id": 1,
        "link": "beidou",
        "member": "!a1b20002",
        "delivered": True,
    }
    assert (by_order[2].data["member"], by_order[2].data["delivered"]) == ("^all", True)
    failed = {n: dict(by_order[n].data) for n in (3, 4, 5)}
    assert failed[3] | {"order_id": 0} == {
        "order_id": 0,
        "link": "beidou",
        "member": "!a1b20003",
        "delivered": False,
        "error": "MAX_RETRANSMIT",
        "tries": 2,
    }
    assert (failed[4]["error"], failed[4]["tries"]) == ("MAX_RETRANSMIT", 2)
    assert (failed[5]["error"], failed[5]["tries"]) == ("BAD_DESTINATION", 0)
    assert team[1].inbox == ["【指挥中心】请带担架到桥头", "【指挥中心】18时前撤离至高地"]
    assert team[2].inbox == []
    to_searcher = [p for p in sim.sent if p.to == SEARCHER]
    assert len(to_searcher) == 2 and all(p.want_ack for p in to_searcher)


class FakeEdge:
    """Takes items as the edge daemon would: each accepted once."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    async def accept(self, item: Item) -> dict[str, Any]:
        self.items.append(item)
        return {"ok": True, "seq": len(self.items)}


class NoBus:
    async def publish(self, topic: Any, message: Any) -> None:
        pass


class OneOrder:
    """A bus that brings one order, then nothing."""

    def __init__(self, order: topics.OrderReceived) -> None:
        self.order: topics.OrderReceived | None = order

    async def receive(self) -> tuple[Any, Any]:
        order, self.order = self.order, None
        if order is None:
            await asyncio.Event().wait()
        return topics.ORDER_RECEIVED, order


def test_an_order_the_mesh_never_answers_counts_as_a_failed_try() -> None:
    edge = FakeEdge()

    async def main() -> MeshService:
        async with SimulatedRadio(members=demo_team(), ack_delay_s=3600) as sim:
            mesh = mesh_config(sim, order_ack_timeout_s=1.0, order_tries=1)
            service = MeshService(mesh, edge, NoBus())  # type: ignore[arg-type]
            stop_mesh = asyncio.Event()
            order = topics.OrderReceived(9, f"!{MEDIC:08x}", "原地待命", "vsat", 0)
            task = asyncio.create_task(service.run(stop_mesh, OneOrder(order)))  # type: ignore[arg-type]
            try:
                await until(lambda: bool(edge.items), timeout=15)
                return service
            finally:
                stop_mesh.set()
                await task

    service = asyncio.run(main())
    [receipt] = edge.items
    assert (receipt.kind, receipt.data["error"], receipt.data["tries"]) == (
        Kind.RECEIPT,
        "TIMEOUT",
        1,
    )
    assert (service.orders_sent, service.orders_delivered, service.orders_failed) == (1, 0, 1)


def test_only_the_members_own_ack_settles_an_order_to_it() -> None:
    implicit = AckReceived(1, True, "NONE", "!4b170001")  # a neighbour was heard repeating it
    assert not _settles(implicit, "!a1b20002")
    assert _settles(implicit, "^all")
    assert _settles(AckReceived(1, True, "NONE", "!a1b20002"), "!a1b20002")
    assert _settles(AckReceived(1, False, "MAX_RETRANSMIT", "!4b170001"), "!a1b20002")


def test_the_simulated_mesh_acks_from_the_member_and_naks_an_unreachable_one() -> None:
    """The member two hops away ACKs; the one out of range gets 1 + 3 tries, then a NAK."""
    medic = Member(MEDIC, "李医生", "LYS", 30.0, 103.0)
    leader = Member(LEADER, "张队长", "ZDZ", 30.0, 103.0)
    acks: dict[int, AckReceived] = {}

    def heard(event: Event) -> None:
        if isinstance(event, AckReceived):
            acks[event.packet_id] = event

    async def main() -> tuple[MeshNet, list[int]]:
        net = MeshNet(speed=50, ack_timeout_s=10)
        async with SimulatedRadio(KIT_NODE) as sim:
            net.add(KIT_NODE, radio=sim)
            net.add(REPEATER)
            net.add(MEDIC, member=medic)
            net.add(LEADER, member=leader)  # joined to nobody
            net.chain(KIT_NODE, REPEATER, MEDIC)
            radio = MeshRadio(mesh_config(sim), on_event=heard)
            await radio.start()
            try:
                await net.start()
                await until(lambda: radio.online)
                ids = [
                    await radio.send_text("到桥头", f"!{MEDIC:08x}"),
                    await radio.send_text("返回", f"!{LEADER:08x}"),
                    await radio.send_text("全体注意", "^all"),
                ]
                await until(lambda: all(i in acks for i in ids), timeout=20)
                return net, ids
            finally:
                await net.close()
                await radio.close()

    net, (to_medic, to_leader, to_all) = asyncio.run(main())
    assert acks[to_medic] == AckReceived(to_medic, True, "NONE", "!a1b20002")
    assert acks[to_leader] == AckReceived(to_leader, False, "MAX_RETRANSMIT", "!4b170001")
    assert acks[to_all] == AckReceived(to_all, True, "NONE", "!4b170001")  # implicit
    assert medic.inbox == ["到桥头", "全体注意"] and leader.inbox == []
    assert net.nodes[KIT_NODE].transmissions == 1 + 4 + 1


def test_the_centre_keeps_who_got_each_order_and_migrates_an_old_store(tmp_path: Path) -> None:
    db_path = tmp_path / "centre.sqlite3"
    old = sqlite3.connect(db_path)  # a store made before the delivery columns existed
    old.executescript(DDL)
    old.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    old.execute("INSERT INTO kits(kit_id, name, enabled) VALUES (7, 'kit', 1)")
    old.execute(
        "INSERT INTO orders(kit_id, target, text, created_ms) VALUES (7, '!a1b20002', '旧', 1)"
    )
    old.commit()
    old.close()

    def receipt(order_id: int, **data: Any) -> Item:
        return new_item("receipt", source="mesh", data={"order_id": order_id, **data})

    def delivery(order_id: int, member: str, ok: bool, ms: int, error: str = "") -> Item:
        extra: dict[str, Any] = {} if ok else {"error": error, "tries": 3}
        data = {"link": "beidou", "member": member, "delivered": ok, **extra}
        return new_item(
            "receipt", source="mesh", data={"order_id": order_id, **data}, created_ms=ms
        )

    async def main() -> list[dict[str, object]]:
        store = await Store.open(db_path, tmp_path / "media")
        try:
            for target in ("!a1b20002", "^all", "!a1b20003"):
                await store.add_order(7, target, "指令")  # orders 2, 3, 4
            await store.ingest(
                7,
                [
                    (1, receipt(3, link="vsat")),
                    (2, delivery(2, "!a1b20002", False, 1_700_000_000_000, "TIMEOUT")),
                ],
                link="vsat",
            )
            await store.ingest(
                7,
                [
                    (3, delivery(3, "^all", True, 1_700_000_001_000)),
                    (4, delivery(4, "!a1b20003", False, 1_700_000_002_000, "MAX_RETRANSMIT")),
                    (5, delivery(3, "^all", False, 1_700_000_003_000, "TIMEOUT")),
                    (6, delivery(2, "!a1b20002", True, 1_700_000_004_000)),
                ],
                link="beidou",
            )
            return await store.orders(7)
        finally:
            await store.close()

    orders = {o["order_id"]: o for o in asyncio.run(main())}
    unanswered, medic, to_all, searcher = orders[1], orders[2], orders[3], orders[4]
    assert (unanswered["text"], unanswered["state"]) == ("旧", "queued")
    assert [unanswered[k] for k in ("delivered_ms", "delivered_to", "delivery_error")] == [None] * 3
    assert (medic["delivered_to"], medic["delivered_ms"]) == ("!a1b20002", 1_700_000_004_000)
    assert medic["delivery_error"] is None  # a failed try, then the member's ACK
    assert to_all["receipt_link"] == "vsat"  # the kit's own receipt came first
    assert (to_all["delivered_to"], to_all["delivered_ms"]) == ("^all", 1_700_000_001_000)
    assert to_all["delivery_error"] is None  # a later failed try does not undo a delivery
    assert (searcher["state"], searcher["receipt_link"]) == ("failed", "beidou")
    assert (searcher["delivered_to"], searcher["delivered_ms"]) == (None, None)
    assert searcher["delivery_error"] == "MAX_RETRANSMIT"
