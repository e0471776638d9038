"""The bus: typed messages from any publisher reach subscribers through the edge's proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq.asyncio

from edge import bus, topics


def test_typed_messages_pass_through_the_proxy(tmp_path: Path) -> None:
    async def go() -> None:
        ctx = zmq.asyncio.Context()
        pub_ep, sub_ep = f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/out.sock"
        proxy = asyncio.create_task(bus.run_proxy(ctx, pub_ep, sub_ep))
        sub = bus.Subscriber(ctx, sub_ep, topics.LINK_STATE)
        pub = bus.Publisher(ctx, pub_ep)
        try:
            msg = topics.LinkState("beidou", "beidou", True, 10.0, 2.5)
            # PUB/SUB joins are asynchronous: publish until the subscription is in place.
            for _ in range(100):
                await pub.publish(topics.BATTERY_LEVEL, topics.BatteryLevel(80.0, 12.4, False))
                await pub.publish(topics.LINK_STATE, msg)
                try:
                    topic, got = await asyncio.wait_for(sub.receive(), 0.05)
                    break
                except TimeoutError:
                    continue
            assert topic is topics.LINK_STATE and got == msg  # the battery topic was filtered
        finally:
            pub.close()
            sub.close()
            proxy.cancel()
            await asyncio.gather(proxy, return_exceptions=True)
            ctx.term()

    asyncio.run(go())


def test_message_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        bus.encode(topics.LINK_STATE, topics.BatteryLevel(1.0, 1.0, True))  # type: ignore[arg-type]


def test_malformed_bus_messages_are_reported() -> None:
    with pytest.raises(bus.BadMessage):
        bus.decode([b"no.such.topic", b"\xa0"])
    with pytest.raises(bus.BadMessage):
        bus.decode([b"link.state", b"\xa1\x61x\x01"])


def test_every_topic_is_declared_once() -> None:
    names = [t.name for t in topics.ALL]
    assert len(names) == len(set(names))
