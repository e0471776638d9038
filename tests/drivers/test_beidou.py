"""The Beidou driver against simulated 4.0 and 5.0 terminals on real ptys: one contract suite."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from drivers.backend import BadBackend, SerialDevice
from drivers.beidou import (
    BadMessage,
    BadSetting,
    BeidouTerminal,
    IcpLayout,
    NoFeedback,
    Refused,
    TerminalOffline,
    TooSoon,
)
from drivers.sentence import Sentence
from drivers.serialio import Backoff, SerialPort
from sim.beidou import Fault, SimCard, SimulatedTerminal, Timing
from uplink.frames import (
    MTU_BEIDOU,
    Frame,
    FrameType,
    Reassembler,
    Status,
    decode_frame,
    encode_frame,
    fragment,
    pack_ack,
)

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

SPEED = 50.0  # emulated seconds per real second: a 60 s service interval lasts 1.2 s
FAST = Backoff(first_s=0.05, max_s=0.2)
KIT = SimCard()  # user 0241636, level 3, one message per 60 s
CENTRE = SimCard(user_id="0300001", comm_level=4)
TIMING = Timing()
SENDS = {"CCTXA", "CCTCQ"}
protocols = pytest.mark.parametrize("protocol", ["4.0", "5.0"])


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def sends(sim: SimulatedTerminal) -> list[Sentence]:
    return [s for s in sim.heard if s.name in SENDS]


def terminal(sim: SimulatedTerminal, protocol: str, **kw: Any) -> BeidouTerminal:
    options: dict[str, Any] = {
        "protocol": protocol,
        "clock": sim.now,
        "backoff": FAST,
        "feedback_timeout_s": 2.0,
        "card_timeout_s": 0.3,
        "start_timeout_s": 2.0,
    }
    return BeidouTerminal(sim, **(options | kw))


class Rig:
    """The kit's terminal and the command centre's, each with its driver, in one sky."""

    def __init__(self, kit_sim: SimulatedTerminal, centre_sim: SimulatedTerminal) -> None:
        self.kit_sim, self.centre_sim = kit_sim, centre_sim
        self.skew = 0.0  # how far the kit's clock is off the terminal's
        self.at_kit: list[tuple[str, bytes]] = []
        self.at_centre: list[tuple[str, bytes]] = []

    def kit_clock(self) -> float:
        return self.kit_sim.now() + self.skew

    async def wait_interval(self, kit: BeidouTerminal) -> None:
        await asyncio.sleep(max(0.0, kit.next_send_at - self.kit_clock()) / SPEED + 0.01)


@asynccontextmanager
async def rig(
    protocol: str, kit_card: SimCard = KIT, *, timing: Timing = TIMING, **kw: Any
) -> AsyncIterator[tuple[Rig, BeidouTerminal, BeidouTerminal]]:
    async with (
        SimulatedTerminal(protocol, CENTRE, speed=SPEED, timing=timing) as centre_sim,
        SimulatedTerminal(
            protocol, kit_card, speed=SPEED, timing=timing, peer=centre_sim
        ) as kit_sim,
    ):
        centre_sim.peer = kit_sim
        r = Rig(kit_sim, centre_sim)
        async with (
            terminal(kit_sim, protocol, clock=r.kit_clock, **kw) as kit,
            terminal(centre_sim, protocol) as centre,
        ):
            kit.on_message = lambda sender, payload: r.at_kit.append((sender, payload))
            centre.on_message = lambda sender, payload: r.at_centre.append((sender, payload))
            yield r, kit, centre


# --- the card ----------------------------------------------------------------------------

CARDS = {
    "4.0": [  # (card, mtu, interval): 4.0 mtu is (bits - 8 for the A4 marker) // 8
        (SimCard(comm_level=1, interval_s=37), 12, 37),
        (SimCard(comm_level=2), 50, 60),
        (SimCard(comm_level=3, interval_s=40), 77, 40),
        (SimCard(comm_level=4), 105, 60),
        (SimCard(comm_level=1, encrypted=True), 16, 60),
        (SimCard(comm_level=4, encrypted=True), 209, 60),
    ],
    "5.0": [
        (SimCard(comm_level=2, interval_s=37), 1750, 37),
        (SimCard(user_id="15240507", comm_level=0, interval_s=1), 1750, 1),
    ],
}


@protocols
def test_mtu_and_interval_come_from_the_card(protocol: str) -> None:
    async def main() -> None:
        for card, mtu, interval in CARDS[protocol]:
            async with (
                SimulatedTerminal(protocol, card, speed=SPEED) as sim,
                terminal(sim, protocol) as kit,
            ):
                assert kit.online
                assert (kit.mtu, kit.min_interval) == (mtu, interval)
                assert kit.card is not None
                assert (kit.card.user_id, kit.card.comm_level) == (card.user_id, card.comm_level)
                assert kit.card.encrypted == card.encrypted

    run(main())


@protocols
def test_without_a_card_the_terminal_is_offline_until_one_is_inserted(protocol: str) -> None:
    async def main() -> None:
        async with (
            SimulatedTerminal(protocol, None, speed=SPEED) as sim,
            terminal(sim, protocol, start_timeout_s=0.3) as kit,
        ):
            assert not kit.online
            assert (kit.card, kit.mtu, kit.min_interval) == (None, 0, math.inf)
            with pytest.raises(TerminalOffline) as err:
                await kit.send("0300001", b"sos")
            assert str(err.value) == (
                "北斗终端离线：未读到北斗卡信息（无卡或终端无响应） / Beidou terminal offline: "
                "no card information (no card, or the terminal is not answering)"
            )
            sim.card = SimCard()
            assert await kit.wait_online(2.0)
            assert kit.mtu == (77 if protocol == "4.0" else 1750)

    run(main())


def test_an_unconfirmed_icp_layout_is_read_as_configured_and_a_wrong_guess_only_costs_the_card() -> (
    None
):
    def ici_like(c: SimCard) -> list[str]:
        return [
            c.user_id,
            c.serial,
            c.broadcast_id,
            "6",
            str(c.interval_s),
            str(c.comm_level),
            "N",
            "0",
        ]

    async def main() -> None:
        async with SimulatedTerminal(
            "5.0", SimCard(interval_s=37), speed=SPEED, icp=ici_like
        ) as sim:
            async with terminal(sim, "5.0", start_timeout_s=0.3) as kit:
                assert not kit.online
                assert kit.dropped["bad_fields"] >= 1
            layout = IcpLayout(user_id=0, encrypted=6, interval=4, level=5)
            async with terminal(sim, "5.0", icp_layout=layout, regional_bits={3: 1000}) as kit:
                assert kit.online
                assert (kit.min_interval, kit.mtu) == (37, 125)

    run(main())


def test_a_regional_card_shorter_than_the_drivers_table_is_refused_by_the_terminal() -> None:
    async def main() -> None:
        async with rig("5.0", SimCard(bits=1000)) as (r, kit, _):
            assert kit.mtu == 1750  # the default table cannot know this card
            with pytest.raises(Refused) as err:
                await kit.send(CENTRE.user_id, bytes(200))
            assert str(err.value) == (
                "北斗终端拒绝发送：原因代码 0 / the Beidou terminal refused to send: reason code 0"
            )
            assert not r.kit_sim.sent

    run(main())


# --- sending -----------------------------------------------------------------------------


@protocols
def test_second_send_within_the_service_interval_is_refused_without_touching_the_wire(
    protocol: str,
) -> None:
    async def main() -> None:
        async with rig(protocol) as (r, kit, _):
            await kit.send(CENTRE.user_id, b"first")
            with pytest.raises(TooSoon) as err:
                await kit.send(CENTRE.user_id, b"second")
            assert 55 < err.value.wait_s <= 60
            wait = math.ceil(err.value.wait_s)
            assert str(err.value) == (
                f"北斗服务频度未到，还需等待 {wait} 秒 / Beidou service interval not over: wait {wait} s"
            )
            assert len(sends(r.kit_sim)) == 1
            await r.wait_interval(kit)
            await kit.send(CENTRE.user_id, b"second")
            assert [t.payload for t in r.kit_sim.sent] == [b"first", b"second"]

    run(main())


@protocols
def test_the_terminals_own_refusal_is_respected_when_the_kits_clock_is_off(protocol: str) -> None:
    async def main() -> None:
        async with rig(protocol) as (r, kit, _):
            await kit.send(CENTRE.user_id, b"first")
            r.skew = 61.0  # the kit's clock jumps ahead of the terminal's
            with pytest.raises(TooSoon) as err:
                await kit.send(CENTRE.user_id, b"second")
            assert 55 < err.value.wait_s <= 60  # the terminal's word, not the kit's clock
            assert len(sends(r.kit_sim)) == 2
            with pytest.raises(TooSoon):
                await kit.send(CENTRE.user_id, b"third")
            assert len(sends(r.kit_sim)) == 2  # the refusal's wait was recorded
            assert [t.payload for t in r.kit_sim.sent] == [b"first"]

    run(main())


@protocols
def test_a_message_the_card_cannot_carry_is_refused_before_the_wire(protocol: str) -> None:
    async def main() -> None:
        async with rig(protocol) as (r, kit, _):
            mtu = kit.mtu
            with pytest.raises(BadMessage) as err:
                await kit.send(CENTRE.user_id, bytes(mtu + 1))
            assert str(err.value) == (
                f"北斗报文长度 {mtu + 1} 字节，本卡每条可载 1–{mtu} 字节 / "
                f"Beidou message of {mtu + 1} bytes; this card carries 1-{mtu}"
            )
            with pytest.raises(BadMessage):
                await kit.send(CENTRE.user_id, b"")
            with pytest.raises(BadMessage) as err:
                await kit.send("centre", b"sos")
            digits = 7 if protocol == "4.0" else 11
            assert str(err.value) == (
                f"北斗目标号码无效：'centre'（应为至多 {digits} 位数字） / "
                f"invalid Beidou destination 'centre' (at most {digits} digits)"
            )
            assert sends(r.kit_sim) == []
            payload = bytes(range(256)) * (mtu // 256) + bytes(range(mtu % 256))
            await kit.send(CENTRE.user_id, payload)
            await until(lambda: r.at_centre == [("0241636", payload)])

    run(main())


@protocols
def test_frames_cross_from_the_kit_to_the_centre_and_back_byte_exact(protocol: str) -> None:
    # A level-4 card on 4.0: the typical level-3 card carries 77 bytes (see the next test).
    kit_card = SimCard(comm_level=4) if protocol == "4.0" else SimCard()

    async def main() -> None:
        async with rig(protocol, kit_card) as (r, kit, centre):
            report = bytes(range(100))
            up = fragment(7, 1, report, MTU_BEIDOU)
            assert [len(f) for f in up] == [MTU_BEIDOU, 57]  # 60 + 40 payload bytes
            for i, frame in enumerate(up):
                if i:
                    await r.wait_interval(kit)
                await kit.send(CENTRE.user_id, frame)
            ack = encode_frame(Frame(FrameType.ACK, 7, 1, pack_ack([1, 2]), downlink=True))
            await centre.send("241636", ack)
            await until(lambda: len(r.at_centre) == 2 and len(r.at_kit) == 1)
            assert r.at_centre == [("0241636", f) for f in up]
            assert r.at_kit == [("0300001", ack)]
            joined = Reassembler()
            outcomes = [joined.add(decode_frame(f)) for _, f in r.at_centre]
            assert outcomes[-1].status is Status.COMPLETE
            assert outcomes[-1].message is not None and outcomes[-1].message.payload == report

    run(main(), timeout=30)


def test_the_typical_level_3_card_carries_77_bytes_because_the_a4_marker_takes_8_of_its_628_bits() -> (
    None
):
    async def main() -> None:
        async with rig("4.0") as (r, kit, _):
            assert kit.mtu == 77
            with pytest.raises(BadMessage):
                # The card's nominal 628 bits are 78 bytes; one of them is the A4 marker.
                await kit.send(CENTRE.user_id, fragment(7, 1, bytes(100), 78)[0])
            frame = fragment(7, 1, bytes(100), kit.mtu)[0]
            await kit.send(CENTRE.user_id, frame)
            await until(lambda: r.at_centre == [("0241636", frame)])
            assert sends(r.kit_sim)[0].fields[3] == "A4" + frame.hex().upper()

    run(main())


# --- faults ------------------------------------------------------------------------------


@protocols
def test_faults_on_the_line_are_counted_and_the_driver_carries_on(protocol: str) -> None:
    async def main() -> None:
        async with rig(protocol) as (r, kit, centre):
            assert kit.dropped == Counter()
            r.kit_sim.inject(Fault.GARBAGE)
            r.kit_sim.inject(Fault.TRUNCATED)
            r.kit_sim.inject(Fault.BAD_CHECKSUM)
            r.kit_sim.inject(Sentence("GNRMC", ("083559.00", "A")).encode())
            bad = ("BDTXR", ("1", "0300001", "2", "", "A4XYZ"))
            if protocol == "5.0":
                bad = ("BDTCI", ("0300001", "0241636", "2", "083559", "3", "0", "XYZ"))
            r.kit_sim.inject(Sentence(*bad).encode())
            expected = Counter(
                garbage_bytes=32, truncated=1, bad_checksum=1, unknown=1, bad_fields=1
            )
            await until(lambda: kit.dropped == expected)
            assert kit.online
            await centre.send("0241636", b"still there?")
            await until(lambda: r.at_kit == [("0300001", b"still there?")])
            await kit.send(CENTRE.user_id, b"yes")

    run(main())


@protocols
def test_a_reboot_mid_send_costs_that_send_and_the_terminal_comes_back(protocol: str) -> None:
    # 10 s to answer leaves room to reboot first; 50 s of silence outlasts the driver's wait.
    timing = Timing(feedback_s=10.0, boot_s=50.0)

    async def main() -> None:
        async with rig(protocol, timing=timing, feedback_timeout_s=0.5) as (r, kit, _):
            sending = asyncio.create_task(kit.send(CENTRE.user_id, b"sos"))
            await until(lambda: len(sends(r.kit_sim)) == 1)
            r.kit_sim.reboot()
            with pytest.raises(NoFeedback) as err:
                await sending
            assert str(err.value) == (
                "北斗终端 0.5 秒内无回执 / no feedback from the Beidou terminal within 0.5 s"
            )
            assert not kit.online  # silent: it has to answer for its card again
            assert kit.next_send_at - r.kit_clock() > 55  # it may have transmitted
            assert await kit.wait_online(3.0)
            assert not r.kit_sim.sent

    run(main())


@protocols
def test_losing_the_signal_takes_the_terminal_offline_until_it_returns(protocol: str) -> None:
    async def main() -> None:
        async with rig(protocol) as (r, kit, _):
            await until(lambda: kit.card is not None and bool(kit.card.signal))
            r.kit_sim.signal = 0
            await until(lambda: not kit.online)
            with pytest.raises(TerminalOffline) as err:
                await kit.send(CENTRE.user_id, b"sos")
            assert (
                str(err.value)
                == "北斗终端离线：无卫星信号 / Beidou terminal offline: no satellite signal"
            )
            r.kit_sim.signal = 2 if protocol == "4.0" else 35
            await until(lambda: kit.online)
            assert kit.card is not None and kit.card.signal == r.kit_sim.signal

    run(main())


@protocols
def test_a_refusal_the_driver_could_not_foresee_is_raised_with_the_terminals_reason(
    protocol: str,
) -> None:
    reason = {"4.0": "终端未执行 / the Beidou terminal refused to send: not executed",
              "5.0": "功率未锁定 / the Beidou terminal refused to send: power not locked"}  # fmt: skip

    async def main() -> None:
        # No signal reports at all: the driver cannot know the beam is gone.
        async with rig(protocol, timing=Timing(signal_period_s=1e6)) as (r, kit, _):
            r.kit_sim.signal = 0
            with pytest.raises(Refused) as err:
                await kit.send(CENTRE.user_id, b"sos")
            assert str(err.value) == "北斗终端拒绝发送：" + reason[protocol]
            assert not r.kit_sim.sent

    run(main())


@protocols
def test_the_driver_reopens_its_path_when_the_device_goes_away_and_comes_back(
    protocol: str, tmp_path: Path
) -> None:
    link = tmp_path / "ttyBeidou"

    async def main() -> None:
        async with (
            SimulatedTerminal(protocol, KIT, speed=SPEED, link=link) as first,
            BeidouTerminal(
                str(link), protocol=protocol, clock=first.now, backoff=FAST, card_timeout_s=0.3
            ) as kit,
        ):
            assert kit.online
            await first.unplug()
            await until(lambda: not kit.online)
            with pytest.raises(TerminalOffline) as err:
                await kit.send(CENTRE.user_id, b"sos")
            assert str(err.value) == (
                f"北斗终端离线：串口设备未连接 / Beidou terminal offline: device not connected ({link})"
            )
            other = SimCard(user_id="0241699")
            async with SimulatedTerminal(protocol, other, speed=SPEED, link=link) as second:
                assert await kit.wait_online(2.0)
                assert kit.card is not None and kit.card.user_id == "0241699"
                await kit.send(CENTRE.user_id, b"sos")
                assert [t.payload for t in second.sent] == [b"sos"]
            await first.plug()
            await until(
                lambda: kit.online and kit.card is not None and kit.card.user_id == "0241636"
            )
            assert kit.reconnects == 2

    run(main())


def test_the_reader_loop_survives_a_failing_consumer_and_reopens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with SimulatedTerminal("4.0", SimCard(), speed=SPEED) as sim:
            received: list[bytes] = []
            states: list[bool] = []

            def consume(data: bytes) -> None:
                received.append(data)
                if len(received) == 1:
                    raise RuntimeError("a bug downstream")

            port = SerialPort(sim.path, consume, on_state=states.append, backoff=FAST)
            await port.start()
            try:
                await until(lambda: len(received) >= 2)
                assert states == [True, False, True]
                assert (port.opens, port.losses) == (2, 1)
                assert "data handler failed" in caplog.text
            finally:
                await port.close()

    run(main())


# --- backends ----------------------------------------------------------------------------


@protocols
def test_kit_backend_sim_makes_the_default_backend_a_simulated_terminal(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")

    async def main() -> None:
        async with BeidouTerminal(protocol=protocol) as kit:
            assert isinstance(kit.backend, SimulatedTerminal)
            assert kit.online

    run(main())


def test_without_kit_backend_the_device_path_is_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIT_BACKEND", raising=False)
    assert BeidouTerminal().backend == SerialDevice("/dev/ttyUSB0")
    assert BeidouTerminal("/dev/serial/by-id/bd").backend == SerialDevice("/dev/serial/by-id/bd")
    monkeypatch.setenv("KIT_BACKEND", "hardware")
    with pytest.raises(BadBackend) as err:
        BeidouTerminal()
    assert str(err.value) == (
        "KIT_BACKEND='hardware' 无效，应为 real 或 sim / KIT_BACKEND='hardware' is not one of real, sim"
    )
    with pytest.raises(BadSetting) as bad:
        BeidouTerminal(protocol="3.0")
    assert str(bad.value) == (
        "北斗协议版本不受支持：'3.0'（应为 4.0 或 5.0） / unsupported Beidou protocol '3.0' (4.0 or 5.0)"
    )
