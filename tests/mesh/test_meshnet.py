"""The simulated mesh: LongFast airtime, one sender per neighbourhood, loss, hop limits, flooding."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from mesh.config import MeshConfig
from mesh.radio import Event, MeshRadio, TextReceived
from mesh.relay import LONG_FAST, on_air_bytes
from sim.meshnet import UTILISATION_WINDOW_S, MeshNet
from sim.meshradio import Member, SimulatedRadio

pytestmark = pytest.mark.timeout(60)

SPEED = 50.0  # a 2.2 s packet takes 44 ms


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_airtime_follows_the_lora_formula_at_longfast() -> None:
    assert LONG_FAST.airtime(30) == pytest.approx(0.48, abs=0.01)
    assert LONG_FAST.airtime(100) == pytest.approx(1.01, abs=0.01)
    assert LONG_FAST.airtime(255) == pytest.approx(2.16, abs=0.01)
    assert on_air_bytes(233) == 255  # the largest LoRa packet: 16 B header, Data protobuf
    assert LONG_FAST.raw_bps == pytest.approx(1074, abs=1)


def test_a_broadcast_floods_as_far_as_the_hop_limit_and_no_further() -> None:
    async def main() -> None:
        net = MeshNet(speed=SPEED, hop_limit=3)
        nums = list(range(1, 7))
        for num in nums:
            net.add(num, member=Member(num, f"n{num}", f"N{num}"))
        net.chain(*nums)
        async with net:
            assert net.text(1, "集合 / gather")
            assert await net.settle(5.0)
        # Sent with 3 hops left: nodes 2, 3, 4 rebroadcast, node 5 hears the last copy.
        assert [len(net.nodes[n].member.inbox) for n in nums] == [0, 1, 1, 1, 1, 0]  # type: ignore[union-attr]
        assert [net.nodes[n].transmissions for n in nums] == [1, 1, 1, 1, 0, 0]
        assert [p.hop_limit for p in net.nodes[5].heard] == [0]

    run(main())


def test_each_node_rebroadcasts_a_packet_once_and_counts_the_echoes() -> None:
    async def main() -> None:
        net = MeshNet(speed=SPEED)
        for num in (1, 2, 3, 4):
            net.add(num)
        for a, b in ((1, 2), (1, 3), (2, 3), (2, 4), (3, 4)):
            net.join(a, b)
        async with net:
            net.text(1, "hello")
            assert await net.settle(5.0)
        assert all(net.nodes[n].transmissions == 1 for n in (1, 2, 3, 4))
        assert all(len(net.nodes[n].heard) == 1 for n in (2, 3, 4))
        assert sum(net.nodes[n].duplicates for n in (1, 2, 3, 4)) > 0

    run(main())


def test_a_direct_packet_is_not_rebroadcast_by_its_addressee_and_loss_drops_packets() -> None:
    async def main() -> None:
        net = MeshNet(speed=SPEED, seed=7)
        for num in (1, 2, 3, 4):
            net.add(num, member=Member(num, f"n{num}", f"N{num}"))
        net.join(1, 2)
        net.join(1, 3, loss=1.0)  # 3 hears nothing of 1
        net.join(2, 4, loss=0.5)
        async with net:
            net.text(1, "to 2", to=2)
            assert await net.settle(5.0)
            assert net.nodes[2].transmissions == 0
            for i in range(40):
                net.text(2, f"n{i}")
                assert await net.settle(5.0)
        assert net.nodes[3].heard == []
        heard = len(net.nodes[4].heard)
        assert 10 < heard < 30, heard  # about half of 40 over a 50 % link

    run(main())


def test_neighbours_take_turns_and_utilisation_counts_the_last_minute() -> None:
    async def main() -> None:
        net = MeshNet(speed=SPEED)
        for num in (1, 2, 3, 4):
            net.add(num)
        net.chain(1, 2, 3, 4)
        async with net:
            net.text(2, "x" * 200, to=3)
            net.text(3, "y" * 200, to=2)
            assert await net.settle(5.0)
            a, b = net.nodes[2].sent_air[0], net.nodes[3].sent_air[0]
            assert a[1] <= b[0] or b[1] <= a[0], "neighbours transmitted at once"

            def busy(*nums: int) -> float:  # percent of the last minute these nodes sent
                # On a loaded machine settling may take longer than a minute of emulated time.
                start = net.now() - UTILISATION_WINDOW_S
                air = sum(
                    max(0.0, e - max(s, start)) for n in nums for s, e in net.nodes[n].sent_air
                )
                return 100 * air / UTILISATION_WINDOW_S

            # Nodes 1 and 4 overheard a packet not for them and flooded it on: busy too.
            assert net.nodes[1].transmissions == net.nodes[4].transmissions == 1
            assert net.utilisation(2) == pytest.approx(busy(1, 2, 3), rel=0.05)
            assert net.utilisation(1) == pytest.approx(busy(1, 2), rel=0.05)
            assert net.air_util_tx(2) > 0
            await net.sleep(UTILISATION_WINDOW_S + 1)
            assert net.utilisation(2) == 0.0

    run(main(), timeout=30)


def test_kits_on_the_net_talk_through_the_real_library_and_hear_their_utilisation() -> None:
    async def main() -> None:
        received: list[Event] = []

        def on_event(event: Event) -> None:
            received.append(event)

        net = MeshNet(speed=SPEED, telemetry_s=5.0)
        leader = Member(0xA1B2_0001, "张队长", "ZDZ")
        async with SimulatedRadio(0x4B17_0001, members=[leader]) as sim_radio:
            net.add(sim_radio.num, radio=sim_radio)
            net.add(0x77, member=None)  # a bare repeater between the leader and the kit
            net.add(leader.num, member=leader)
            net.chain(leader.num, 0x77, sim_radio.num)
            cfg: dict[str, Any] = {"enabled": True, "connection": "tcp", "port": sim_radio.port}
            radio = MeshRadio(MeshConfig(**cfg), on_event=on_event)
            async with net:
                await radio.start()
                try:
                    await until(lambda: radio.online)
                    net.text(leader.num, "SOS 被困两人")
                    await until(lambda: any(isinstance(e, TextReceived) for e in received))
                    text = next(e for e in received if isinstance(e, TextReceived))
                    assert (text.sender, text.text) == ("!a1b20001", "SOS 被困两人")
                    await radio.send_text("收到，救援在路上", leader.id)
                    await until(lambda: leader.inbox == ["收到，救援在路上"])
                    await until(lambda: (radio.channel_utilisation or 0) > 0)
                finally:
                    await radio.close()

    run(main(), timeout=30)
