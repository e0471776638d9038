"""Orders from the centre reach the kit over any link, once each, and come back delivered."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge import topics
from edge.item import Item, Kind, Position, decode, new_item
from sim.beidou import SimCard, SimulatedTerminal, Timing
from sim.harness import centre, kit
from uplink.frames import Order
from uplink.orders import OrderDesk

pytestmark = pytest.mark.timeout(120)
KIT_ID = 7


async def until(predicate: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def order(url: str, target: str, text: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/v1/orders", json={"kit_id": KIT_ID, "target": target, "text": text}) as r,
    ):
        assert r.status == 201, await r.text()
        return int((await r.json())["order_id"])


async def orders(url: str) -> dict[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/orders?kit_id={KIT_ID}") as r:
        return {o["order_id"]: o for o in (await r.json())["orders"]}


def receipts(root: Path) -> list[int]:
    db = sqlite3.connect(root / "data" / "outbox.sqlite3")
    try:
        rows = db.execute("SELECT body FROM items WHERE kind = 'receipt'").fetchall()
    finally:
        db.close()
    return [int(decode(body).data["order_id"]) for (body,) in rows]  # type: ignore[arg-type]


def test_bad_orders_are_refused_with_a_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with centre(tmp_path) as (url, _), aiohttp.ClientSession() as s:
            for body, status, words in [
                (b"{", 400, "not JSON"),
                (json.dumps({"kit_id": 99, "text": "x"}).encode(), 403, "99"),
                (json.dumps({"kit_id": KIT_ID, "text": ""}).encode(), 400, "order text"),
                (json.dumps({"kit_id": 0, "text": "x"}).encode(), 400, "kit_id"),
            ]:
                async with s.post(f"{url}/v1/orders", data=body) as r:
                    assert r.status == status and words in await r.text(), await r.text()
            assert await orders(url) == {}

    asyncio.run(main())


def test_order_over_ip_is_taken_once_and_its_receipt_closes_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with centre(tmp_path) as (url, _):
            link = (
                f'[[links]]\nkind = "ip"\nname = "ethernet"\nurl = "{url}"\nrate = 1e6\n'
                "rtt = 0.05\nprobe_interval = 0.5\n"
            )
            async with kit(tmp_path, link) as k:
                first = await order(url, "^all", "请于18时前撤离至高地")
                second = await order(url, "", "回报伤员人数")

                async def delivered() -> bool:
                    got = await orders(url)
                    return all(got[i]["state"] == "delivered" for i in (first, second))

                assert await until(delivered, 30), await orders(url)
                got = await orders(url)
                assert got[first]["receipt_link"] == "ethernet"
                status = await k.edge.call({"op": "status"})
                shown = {o["order_id"]: o for o in status["orders"]}
                assert shown[first]["target"] == "^all"
                assert shown[first]["text"] == "请于18时前撤离至高地"
                assert sorted(receipts(tmp_path)) == [first, second]

    asyncio.run(main())


def test_order_reaches_an_idle_kit_over_beidou(tmp_path: Path) -> None:
    async def main() -> None:
        kit_dev, centre_dev = tmp_path / "kit-beidou", tmp_path / "centre-beidou"
        quick = Timing(answer_s=0.1, feedback_s=0.2, delivery_s=1.0)
        kit_term = SimulatedTerminal(
            "4.0", SimCard(user_id="0241636", interval_s=2), timing=quick, link=kit_dev
        )
        centre_term = SimulatedTerminal(
            "4.0",
            SimCard(user_id="0300001", comm_level=4, interval_s=1),
            timing=quick,
            link=centre_dev,
            peer=kit_term,
        )
        kit_term.peer = centre_term
        gateway = (
            f'[[gateways]]\nname = "beidou"\nkind = "beidou"\ndevice = "{centre_dev}"\n'
            "mtu = 77\nmissing_after_s = 4\n"
        )
        link = (
            f'[[links]]\nkind = "beidou"\nname = "beidou"\ndevice = "{kit_dev}"\n'
            'centre_id = "0300001"\nack_timeout = 20\n'
        )
        async with (
            kit_term,
            centre_term,
            centre(tmp_path, udp_gateways=[gateway]) as (url, _),
            kit(tmp_path, link) as k,
        ):
            # The centre learns the kit's card from its first message, then the kit idles.
            await k.edge.accept(new_item("sos", source="button", position=Position(30.1, 103.2)))
            await asyncio.sleep(8)
            oid = await order(url, "!a1b2c3d4", "原地待命")

            async def delivered() -> bool:
                return (await orders(url))[oid]["state"] == "delivered"

            assert await until(delivered, 60), (tmp_path / "centre.log").read_text()[-2000:]
            assert (await orders(url))[oid]["receipt_link"] == "beidou"

    asyncio.run(main())


class FakeEdge:
    def __init__(self) -> None:
        self.items: list[Item] = []

    async def accept(self, item: Item) -> dict[str, Any]:
        self.items.append(item)
        return {"ok": True, "seq": len(self.items)}


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[topics.OrderReceived] = []

    async def publish(self, topic: object, message: topics.OrderReceived) -> None:
        self.sent.append(message)


def test_an_order_arriving_twice_or_after_a_restart_is_taken_once(tmp_path: Path) -> None:
    async def take(orders_in: list[tuple[Order, str]]) -> tuple[FakeEdge, FakePublisher]:
        edge, publisher = FakeEdge(), FakePublisher()
        desk = OrderDesk(KIT_ID, edge, publisher, tmp_path)  # type: ignore[arg-type]
        runner = asyncio.create_task(desk.run())
        for o, link in orders_in:
            desk.take(o, link)
        await asyncio.sleep(0.1)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return edge, publisher

    a = Order(41, "^all", "集合")
    edge, publisher = asyncio.run(take([(a, "beidou"), (a, "ethernet")]))
    assert [(i.kind, i.data["order_id"]) for i in edge.items] == [(Kind.RECEIPT, 41)]
    assert [(m.order_id, m.link) for m in publisher.sent] == [(41, "beidou")]
    # After a restart (a new desk on the same folder) the order is still known.
    edge, publisher = asyncio.run(take([(a, "sms"), (Order(42, "", "撤离"), "sms")]))
    assert [i.data["order_id"] for i in edge.items] == [42]
