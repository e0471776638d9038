"""The real meshtastic library against the simulated radio over TCP and a pty; MeshRadio's faults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import meshtastic.serial_interface
import meshtastic.tcp_interface
import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from mesh.config import MeshConfig
from mesh.radio import (
    AckReceived,
    BadDownlink,
    Event,
    MeshRadio,
    PositionReceived,
    RadioOffline,
    TextReceived,
)
from sim.meshradio import Fault, FrameDecoder, Member, SimulatedRadio, demo_team, frame

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

LEADER, MEDIC = 0xA1B2_0001, 0xA1B2_0002


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def config(radio: SimulatedRadio, **kw: Any) -> MeshConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "connection": "tcp",
        "port": radio.port,
        "handshake_timeout_s": 3.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.4,
    }
    return MeshConfig(**base | kw)


def test_frame_decoder_skips_debug_text_and_resyncs_after_a_bad_length() -> None:
    decoder = FrameDecoder()
    stream = b"INFO boot\r\n" + bytes([0x94, 0xC3, 0x0F, 0xA0]) + frame(b"abc") + frame(b"")
    assert list(decoder.feed(stream[:9])) == []
    assert list(decoder.feed(stream[9:])) == [b"abc", b""]


def test_the_library_connects_over_tcp_and_a_pty_and_sees_the_team() -> None:
    async def main() -> None:
        async with SimulatedRadio(members=demo_team(), serial=True) as radio:
            tcp = await asyncio.to_thread(
                meshtastic.tcp_interface.TCPInterface, "127.0.0.1", portNumber=radio.port
            )
            serial = await asyncio.to_thread(
                meshtastic.serial_interface.SerialInterface, radio.path
            )
            try:
                for iface in (tcp, serial):
                    assert iface.myInfo.my_node_num == radio.num
                    assert iface.nodes["!a1b20001"]["user"]["longName"] == "张队长"
                    assert set(iface.nodes) == {radio.id, "!a1b20001", "!a1b20002", "!a1b20003"}
                    assert iface.localNode.localConfig.lora.hop_limit == 3
            finally:
                await asyncio.to_thread(tcp.close)
                await asyncio.to_thread(serial.close)
            assert radio.handshakes == 2

    run(main())


class Heard:
    """What a MeshRadio raised, for the test to wait on."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, TextReceived)]


def test_meshradio_fills_the_roster_and_turns_packets_into_events() -> None:
    async def main() -> None:
        async with SimulatedRadio(members=demo_team()) as sim:
            heard = Heard()
            radio = MeshRadio(config(sim), on_event=heard)
            await radio.start()
            try:
                await until(lambda: radio.online and len(radio.roster) == 3)
                leader = radio.roster.get("!a1b20001")
                assert leader is not None and leader.long_name == "张队长"
                assert leader.battery_percent == 87 and leader.position is not None
                sim.position(MEDIC, 30.02, 103.01, 700)
                sim.battery(MEDIC, 33, 3.61)
                sim.text(MEDIC, "到达桥头", to_kit=True)
                await until(lambda: heard.texts() == ["到达桥头"])
                medic = radio.roster.get("!a1b20002")
                assert medic is not None and medic.battery_percent == 33
                assert medic.position is not None and round(medic.position.lat, 4) == 30.02
                assert any(isinstance(e, PositionReceived) for e in heard.events)
                text = next(e for e in heard.events if isinstance(e, TextReceived))
                assert (text.sender, text.to_kit) == ("!a1b20002", True)
                state = radio.state()
                assert state.online and state.detail["node_id"] == sim.id
                assert state.detail["nodes_heard"] == 3
                assert state.detail["packets_received"] == 3
            finally:
                await radio.close()
            assert not radio.online

    run(main())


def test_send_text_reaches_the_addressed_handheld_and_is_acknowledged() -> None:
    async def main() -> None:
        async with SimulatedRadio(members=demo_team()) as sim:
            heard = Heard()
            radio = MeshRadio(config(sim, channel=0), on_event=heard)
            with pytest.raises(RadioOffline):
                await radio.send_text("太早", "!a1b20001")
            await radio.start()
            try:
                await until(lambda: radio.online)
                packet_id = await radio.send_text(
                    "撤离到学校 / evacuate to the school", "!a1b20002"
                )
                await until(lambda: any(isinstance(e, AckReceived) for e in heard.events))
                ack = next(e for e in heard.events if isinstance(e, AckReceived))
                assert (ack.packet_id, ack.ok, ack.by) == (packet_id, True, "!a1b20002")
                assert sim.members[MEDIC].inbox == ["撤离到学校 / evacuate to the school"]
                assert sim.members[LEADER].inbox == []
                await radio.send_text("全体集合", want_ack=False)
                await until(lambda: sim.members[LEADER].inbox == ["全体集合"])
                nak_id = await radio.send_text("喂？", "!0badf00d")
                await until(
                    lambda: any(
                        isinstance(e, AckReceived) and e.packet_id == nak_id for e in heard.events
                    )
                )
                nak = next(
                    e for e in heard.events if isinstance(e, AckReceived) and e.packet_id == nak_id
                )
                assert (nak.ok, nak.reason) == (False, "MAX_RETRANSMIT")
                with pytest.raises(BadDownlink) as err:
                    await radio.send_text("长" * 100, "!a1b20001")
                assert (
                    str(err.value)
                    == "文字过长：300 字节（上限 233） / text too long: 300 bytes (limit 233)"
                )
                with pytest.raises(BadDownlink):
                    await radio.send_text("hi", "张三")
            finally:
                await radio.close()

    run(main())


def test_line_faults_are_survived_and_no_text_is_lost_over_tcp() -> None:
    async def main() -> None:
        async with SimulatedRadio(members=demo_team()) as sim:
            heard = Heard()
            radio = MeshRadio(config(sim), on_event=heard)
            await radio.start()
            try:
                await until(lambda: radio.online)
                for fault in (Fault.GARBAGE, Fault.OVERSIZED, Fault.UNKNOWN_PORTNUM):
                    sim.inject(fault)
                    sim.text(LEADER, f"after {fault.value}")
                sim.inject(Fault.UNKNOWN_NODE)
                await until(lambda: len(heard.texts()) == 4)
                assert heard.texts()[:3] == [
                    "after garbage",
                    "after oversized",
                    "after unknown_portnum",
                ]
                assert "!0badf00d" in radio.roster
                assert radio.dropped == 1  # the unknown portnum
                # The radio resets, and resets again in the middle of the next handshake;
                # meanwhile a member keeps talking.
                sim.inject(Fault.RESET_IN_HANDSHAKE)
                sim.reboot()
                sim.text(LEADER, "during the reset")
                await until(
                    lambda: sim.handshakes == 2 and "during the reset" in heard.texts(), 8.0
                )
                sim.text(LEADER, "after the reset")
                await until(lambda: "after the reset" in heard.texts())
                assert radio.online
            finally:
                await radio.close()

    run(main())


def test_a_radio_that_never_finishes_the_handshake_is_dropped_and_retried() -> None:
    async def main() -> None:
        silent_connections = 0

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal silent_connections
            silent_connections += 1
            await reader.read()  # says nothing until the host gives up
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        radio = MeshRadio(
            MeshConfig(
                enabled=True,
                connection="tcp",
                port=port,
                handshake_timeout_s=1.0,
                reconnect_min_s=0.1,
                reconnect_max_s=0.2,
            )
        )
        await radio.start()
        try:
            await until(lambda: silent_connections >= 2, 6.0)
            assert not radio.online and radio.reconnects >= 1
            assert "HandshakeTimeout" in radio.state().summary_en
        finally:
            await radio.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_serial_radio_reboot_and_unplug_are_reconnected(tmp_path: Path) -> None:
    async def main() -> None:
        link = tmp_path / "ttyMESH"
        async with SimulatedRadio(members=demo_team(), serial=True, link=link) as sim:
            heard = Heard()
            cfg = config(sim, connection="serial", device=str(link))
            radio = MeshRadio(cfg, on_event=heard)
            await radio.start()
            try:
                await until(lambda: radio.online)
                sim.inject(Fault.RESET_IN_HANDSHAKE)  # reboots once more in the handshake
                sim.reboot()
                sim.text(LEADER, "after the reboot")
                await until(lambda: "after the reboot" in heard.texts(), 8.0)
                await until(lambda: radio.online)
                await sim.unplug()
                await until(lambda: not radio.online)
                sim.text(LEADER, "while unplugged")
                await sim.plug()
                await until(lambda: "while unplugged" in heard.texts(), 8.0)
                assert radio.online and radio.reconnects >= 1
                assert radio.state().detail["connection"] == f"serial {link}"
            finally:
                await radio.close()

    run(main())


def test_kit_backend_sim_starts_its_own_simulated_team(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")

    async def main() -> None:
        radio = MeshRadio(MeshConfig(enabled=True, reconnect_min_s=0.1))
        await radio.start()
        try:
            await until(lambda: radio.online and len(radio.roster) == 3)
            assert radio.simulator is not None
            assert next(m.name for m in radio.roster.members()) in {"张队长", "李医生", "王搜救"}
        finally:
            await radio.close()

    run(main())


def test_members_may_join_later() -> None:
    async def main() -> None:
        async with SimulatedRadio() as sim:
            heard = Heard()
            radio = MeshRadio(config(sim), on_event=heard)
            await radio.start()
            try:
                await until(lambda: radio.online)
                sim.add(Member(0x0000_0042, "赵新", "ZX"))
                sim.text(0x42, "我到了")
                await until(lambda: heard.texts() == ["我到了"])
                assert "!00000042" in radio.roster
            finally:
                await radio.close()

    run(main())
