"""The datagram link kind over real loopback sockets, through the emulated-conditions relay."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from sim.linkemu import LinkConditions, ScaledClock
from sim.linkrelay import DatagramRelay
from uplink import registry
from uplink.frames import Frame, FrameType, decode_frame, encode_frame, pack_ack, unpack_ack
from uplink.kinds.datagram import Config, DatagramLink
from uplink.link import Link, LinkRefused

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)
LOCAL = ("127.0.0.1", 0)


def run(main: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    return asyncio.run(asyncio.wait_for(main, timeout))


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait (real seconds) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Gateway(asyncio.DatagramProtocol):
    """A tiny frame gateway: records each datagram and may answer it."""

    def __init__(self, clock: ScaledClock, answer: Callable[[bytes], bytes] | None) -> None:
        self.clock = clock
        self.answer = answer
        self.received: list[tuple[bytes, float]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, self.clock.now()))
        if self.answer is not None and self.transport is not None:
            self.transport.sendto(self.answer(data), addr)

    @property
    def frames(self) -> list[bytes]:
        return [data for data, _ in self.received]


@asynccontextmanager
async def gateway(
    clock: ScaledClock,
    answer: Callable[[bytes], bytes] | None = None,
    address: tuple[str, int] = LOCAL,
) -> AsyncIterator[tuple[Gateway, tuple[str, int]]]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Gateway(clock, answer), local_addr=address
    )
    protocol.transport = transport
    try:
        yield protocol, transport.get_extra_info("sockname")[:2]
    finally:
        transport.close()


def datagram_link(
    to: tuple[str, int], *, name: str = "mesh", mtu: int = 233, min_interval: float = 0.0
) -> DatagramLink:
    config = Config(
        name=name,
        kind="datagram",
        rate=250,
        gateway=f"{to[0]}:{to[1]}",
        mtu=mtu,
        min_interval=min_interval,
    )
    link = registry.make(config)
    assert isinstance(link, DatagramLink)
    return link


@asynccontextmanager
async def running(link: Link) -> AsyncIterator[Link]:
    task = asyncio.create_task(link.run())
    try:
        await until(lambda: link.online)
        yield link
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def items_frame(seq: int, text: bytes = b"SOS team 3, two injured") -> bytes:
    return encode_frame(Frame(FrameType.ITEMS, kit_id=7, msg_seq=seq, payload=text))


def ack_for(data: bytes) -> bytes:
    frame = decode_frame(data)
    return encode_frame(
        Frame(FrameType.ACK, frame.kit_id, frame.msg_seq, pack_ack([frame.msg_seq]), downlink=True)
    )


def test_a_frame_crosses_the_emulated_link_and_the_gateway_answer_comes_back() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=10)
        # LoRa-like: 250 B/s, 4 s round trip (0.4 s real).
        conditions = LinkConditions(rate=250, rtt=4.0, mtu=233)
        answers: list[tuple[bytes, float]] = []
        async with (
            gateway(clock, ack_for) as (centre, target),
            DatagramRelay(LOCAL, target, conditions, name="mesh", clock=clock) as relay,
        ):
            link = datagram_link(relay.address)
            link.on_frame = lambda frame: answers.append((frame, clock.now()))
            async with running(link):
                frame = items_frame(41)
                sent = clock.now()
                await link.send(frame)
                await until(lambda: bool(answers))
            on_air = len(frame) / 250 + 2.0
            assert centre.frames == [frame]
            assert on_air <= centre.received[0][1] - sent < on_air + 0.3
            answer, arrived = answers[0]
            ack = decode_frame(answer)
            assert (ack.type, ack.downlink, unpack_ack(ack.payload)) == (
                FrameType.ACK,
                True,
                [range(41, 42)],
            )
            assert on_air + len(answer) / 250 + 2.0 <= arrived - sent < on_air + 4.0 + 0.6
            assert link.stats.frames_received == 1
            assert relay.stats.up.messages_delivered == relay.stats.down.messages_delivered == 1
            assert not relay.stats.dropped

    run(main())


def test_a_frame_over_the_mtu_is_refused_by_the_link_before_the_wire() -> None:
    async def main() -> None:
        clock = ScaledClock()
        async with gateway(clock) as (centre, target):
            link = datagram_link(target, name="beidou", mtu=78)
            async with running(link):
                with pytest.raises(LinkRefused) as refused:
                    await link.send(bytes(79))
                assert str(refused.value) == (
                    "帧 79 字节超过 beidou 的 MTU 78 / frame of 79 bytes exceeds beidou's MTU 78"
                )
                await link.send(bytes(78))
                await until(lambda: bool(centre.received))
                await asyncio.sleep(0.05)
            assert centre.frames == [bytes(78)]
            assert link.stats.frames_sent == 1

    run(main())


def test_a_second_send_within_min_interval_is_refused() -> None:
    async def main() -> None:
        clock = ScaledClock()
        async with gateway(clock) as (centre, target):
            link = datagram_link(target, name="beidou", mtu=78, min_interval=60)
            async with running(link):
                await link.send(items_frame(1))
                with pytest.raises(LinkRefused, match=r"^beidou 发送间隔未到.* beidou: too soon"):
                    await link.send(items_frame(2))
                await until(lambda: bool(centre.received))
                await asyncio.sleep(0.05)
            assert centre.frames == [items_frame(1)]
            assert link.stats.frames_sent == 1

    run(main())


def test_frames_sent_during_a_relay_outage_are_dropped_and_counted() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=10)
        conditions = LinkConditions(rate=10_000, rtt=4.0)
        async with (
            gateway(clock) as (centre, target),
            DatagramRelay(LOCAL, target, conditions, clock=clock, outages=[(0, 8)]) as relay,
        ):
            link = datagram_link(relay.address)
            async with running(link):
                assert not relay.online
                for seq in range(3):
                    await link.send(items_frame(seq))
                await until(lambda: relay.stats.dropped["down"] == 3)
                await until(lambda: relay.online)
                await link.send(items_frame(3))
                await until(lambda: bool(centre.received))
                # A frame on the wire when an outage begins is lost on the way.
                await link.send(items_frame(4))
                await until(lambda: relay.stats.up.messages_sent == 2)
                relay.set_online(False)
                await asyncio.sleep(0.3)
            assert centre.frames == [items_frame(3)]
            assert relay.stats.dropped == Counter(down=3)
            assert relay.stats.up.messages_lost == 1
            assert link.stats.frames_sent == 5

    run(main())


def test_the_relay_drops_what_a_narrow_link_would_refuse_and_counts_why() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=10)
        # Beidou-like: 78-byte frames, one a minute (6 s real); 2 s round trip.
        conditions = LinkConditions(rate=100, rtt=2.0, mtu=78, min_interval=60)
        async with (
            gateway(clock) as (centre, target),
            DatagramRelay(LOCAL, target, conditions, clock=clock) as relay,
        ):
            kit, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=relay.address
            )
            try:
                kit.sendto(bytes(79))
                kit.sendto(b"first")
                kit.sendto(b"too soon")
                await until(lambda: relay.stats.dropped.total() == 2)
                assert relay.stats.dropped == Counter(mtu=1, too_soon=1)
                await until(lambda: bool(centre.received))
            finally:
                kit.close()
            assert centre.frames == [b"first"]

    run(main())


def test_the_link_goes_offline_and_reconnects_by_itself_when_its_socket_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        clock = ScaledClock()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(LOCAL)
            closed_port = probe.getsockname()[:2]
        link = datagram_link(closed_port)
        link.reconnect_delay = 0.05
        states: list[bool] = []
        link.on_state = lambda changed: states.append(changed.online)
        async with running(link):
            # Nothing listens: the kernel answers ICMP port unreachable.
            await link.send(items_frame(1))
            await until(lambda: link.stats.reconnects == 1 and link.online)
            assert states == [True, False, True]
            async with gateway(clock, address=closed_port) as (centre, _):
                await link.send(items_frame(2))
                await until(lambda: bool(centre.received))
            assert centre.frames == [items_frame(2)]
        assert link.stats.last_error == (
            f"LinkDown: 链路 mesh 无法到达帧网关 127.0.0.1:{closed_port[1]}：端口不可达，网关是否在运行？"
            f" / link mesh cannot reach the frame gateway 127.0.0.1:{closed_port[1]}: "
            "port unreachable: is the gateway running?"
        )

    with caplog.at_level(logging.WARNING, logger="uplink.link"):
        run(main())
    assert "link mesh down (LinkDown:" in caplog.text


@pytest.mark.parametrize("bad", ["centre", "centre:", ":7400", "centre:0", "centre:http", "a b:1"])
def test_the_config_rejects_a_bad_gateway_and_an_out_of_range_mtu_with_key_paths(
    bad: str,
) -> None:
    with pytest.raises(ValidationError) as invalid:
        Config.model_validate(
            {"name": "mesh", "kind": "datagram", "rate": 250, "gateway": bad, "mtu": 15}
        )
    errors = {".".join(map(str, e["loc"])): e["msg"] for e in invalid.value.errors()}
    assert errors == {
        "gateway": f"Value error, 应为 主机:端口（端口 1–65535）：{bad!r} / expected host:port (port 1..65535), got {bad!r}",
        "mtu": "Input should be greater than or equal to 18",
    }


def test_the_config_builds_a_link_with_its_mtu_and_interval() -> None:
    config = Config(
        name="radio",
        kind="datagram",
        rate=1200,
        gateway="[::1]:7400",
        mtu=1750,
        min_interval=2.5,
        bind="0.0.0.0:0",
    )
    link = registry.make(config)
    assert isinstance(link, DatagramLink)
    assert (link.kind, link.mtu, link.min_interval) == ("datagram", 1750, 2.5)
    assert (link.gateway, link.bind) == (("::1", 7400), ("0.0.0.0", 0))
