"""The team on the kit: the roster crosses the bus into `kit status`; the simulated team lives."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq.asyncio
from conftest import endpoint, start_edge, stop
from google.protobuf.message import DecodeError
from hygiene import no_thread_left, until  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from config.loader import load
from edge import bus, topics
from edge.cli import _status_table, _team_lines
from edge.client import AsyncEdgeClient
from mesh.config import MeshConfig
from mesh.process import MeshService
from mesh.radio import TELEMETRY_APP, ChannelReport, Event, MeshRadio, TextReceived, packet_event
from mesh.roster import Roster, team_roster
from sim.meshnet import MeshNet
from sim.meshradio import Cadence, Member, SimulatedRadio, TeamActivity, demo_team

pytestmark = pytest.mark.timeout(60)
LEADER, MEDIC, SEARCHER = 0xA1B2_0001, 0xA1B2_0002, 0xA1B2_0003
KIT_NODE = 0x4B17_0001
FIELDS = [
    "node",
    "name",
    "short",
    "lat",
    "lon",
    "position_ms",
    "last_heard_ms",
    "battery_pct",
    "snr",
    "age_s",
]


def mesh_config(radio: SimulatedRadio) -> MeshConfig:
    return MeshConfig(
        enabled=True, connection="tcp", port=radio.port, reconnect_min_s=0.1, reconnect_max_s=0.5
    )


def test_the_team_reaches_kit_status_with_the_fields_the_web_page_reads(
    kit_config: Path,
) -> None:
    proc = start_edge(kit_config)
    config = load(kit_config).config

    async def team(client: AsyncEdgeClient) -> list[dict[str, Any]]:
        return list((await client.call({"op": "status"}))["team"])

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        client = AsyncEdgeClient(endpoint(kit_config), timeout_s=2.0)
        publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
        async with SimulatedRadio(members=demo_team()) as sim:
            service = MeshService(
                mesh_config(sim), client, publisher, team_min_s=0.1, team_every_s=1.0
            )
            stop_mesh = asyncio.Event()
            task = asyncio.create_task(service.run(stop_mesh))
            try:
                before = await team(client)
                while sim.handshakes < 1 or len(await team(client)) < 3:
                    await asyncio.sleep(0.1)
                sim.position(MEDIC, 30.0500, 103.0500, 700)
                sim.battery(MEDIC, 55)
                while True:
                    later = await team(client)
                    if later[0]["node"] == "!a1b20002" and later[0]["battery_pct"] == 55:
                        break
                    await asyncio.sleep(0.1)
                table = _status_table(await client.call({"op": "status"}))
                return before, later, table
            finally:
                stop_mesh.set()
                await task
                publisher.close()
                await client.close()

    try:
        before, team_now, table = asyncio.run(main())
    finally:
        stop(proc)
    assert before == []  # nothing heard yet: an empty team, not a missing key
    assert [list(m) for m in team_now] == [FIELDS] * 3
    by_node = {m["node"]: m for m in team_now}
    medic = by_node["!a1b20002"]
    assert (medic["name"], medic["short"], medic["battery_pct"]) == ("李医生", "LYS", 55)
    assert (round(medic["lat"], 4), round(medic["lon"], 4)) == (30.05, 103.05)
    assert medic["snr"] == 6.5 and medic["last_heard_ms"] > 0 and medic["position_ms"] > 0
    assert team_now[0]["node"] == "!a1b20002"  # the most recently heard first
    leader = by_node["!a1b20001"]
    assert (leader["name"], leader["battery_pct"]) == ("张队长", 87)
    assert (round(leader["lat"], 4), round(leader["lon"], 4)) == (30.0103, 103.0012)
    assert "队员 / team       3 名 / members" in table
    assert "李医生" in table and "30.05000, 103.05000" in table
    assert "电量 / battery 55 %" in table


def test_the_roster_message_crosses_the_bus_and_garbage_is_refused() -> None:
    roster = Roster()
    roster.update("!a1b20001", heard_s=1_700_000_000.5, long_name="张队长", snr=-3.25)
    roster.update("!a1b20002", short_name="LYS", battery_percent=101)
    message = team_roster(roster)
    topic, back = bus.decode(bus.encode(topics.TEAM_ROSTER, message))
    assert topic is topics.TEAM_ROSTER and back == message
    assert back.members[0] == topics.TeamMember(
        "!a1b20001", "张队长", "", None, None, None, 1_700_000_000_500, None, -3.25
    )
    assert back.members[1].name == "LYS" and back.members[1].last_heard_ms == 0  # never heard
    for bad in ({"members": [["!a1b20001"]]}, {"members": ["x"]}, {"members": [{"node": 1}]}):
        with pytest.raises(bus.BadMessage):
            bus.decode([b"mesh.team", cbor2.dumps(bad)])


def test_kit_status_lists_name_position_last_heard_and_battery() -> None:
    now = 1_700_000_000.0

    def member(name: str, **kw: Any) -> dict[str, Any]:
        base = {"name": name, "lat": None, "lon": None, "battery_pct": None}
        return base | {"last_heard_ms": 0} | kw

    team = [
        member(
            "张队长",
            lat=30.0103,
            lon=103.0012,
            last_heard_ms=int((now - 12) * 1000),
            battery_pct=87,
        ),
        member("李医生", last_heard_ms=int((now - 600) * 1000), battery_pct=101),
        member("王搜救"),
    ] + [member(f"队员{i}", last_heard_ms=int((now - 9000) * 1000)) for i in range(12)]
    lines = _team_lines(team, now)
    assert lines[0] == "队员 / team       15 名 / members"
    assert lines[1].split() == [
        "张队长", "30.01030,", "103.00120", "12", "秒前", "/", "s", "ago",
        "电量", "/", "battery", "87", "%",
    ]  # fmt: skip
    assert "位置未知 / no position" in lines[2] and "10 分钟前 / min ago" in lines[2]
    assert lines[2].endswith("外接电源 / powered")
    assert "未收到 / not heard" in lines[3] and lines[3].endswith("电量 ? / battery ?")
    assert "2.5 小时前 / h ago" in lines[4]
    assert len(lines) == 1 + 12 + 1 and lines[-1] == "    … 另 3 名 / 3 more"
    assert _team_lines([], now) == []


def test_the_simulated_team_walks_reports_battery_and_texts() -> None:
    cadence = Cadence(position_s=10, telemetry_s=10, text_s=5, step_m=50, speed=100)
    heard: list[Event] = []

    async def main() -> tuple[MeshRadio, SimulatedRadio]:
        async with SimulatedRadio(members=demo_team(), team=cadence, seed=3) as sim:
            radio = MeshRadio(mesh_config(sim), on_event=heard.append)
            await radio.start()
            try:
                leader = lambda: radio.roster.get("!a1b20001")  # noqa: E731
                await until(lambda: (m := leader()) is not None and (m.battery_percent or 99) <= 85)
                await until(lambda: any(isinstance(e, TextReceived) for e in heard))
                return radio, sim
            finally:
                await radio.close()

    radio, sim = asyncio.run(main())
    assert sim.team is not None and min(sim.team.sent.values()) > 0
    for m in demo_team():
        got = radio.roster.get(f"!{m.num:08x}")
        assert got is not None and got.position is not None
        assert m.lat is not None and m.lon is not None
        moved = _metres(got.position.lat, got.position.lon, m.lat, m.lon)
        assert 0 < moved <= 2 * cadence.radius_m + 1  # on its loop round the start point


def _metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    north = (lat1 - lat2) * 111_320
    east = (lon1 - lon2) * 111_320 * math.cos(math.radians(lat2))
    return math.hypot(north, east)


def test_a_member_walks_a_closed_loop_through_its_start_point() -> None:
    member = Member(LEADER, "张队长", "ZDZ", 30.0, 103.0)
    sent: list[tuple[float, float]] = []

    class Radios:
        def position(self, num: int, lat: float, lon: float, *_: Any) -> None:
            sent.append((lat, lon))

        def battery(self, num: int, percent: int, voltage: float | None = None) -> None:
            pass

        def text(self, num: int, text: str) -> None:
            pass

    cadence = Cadence(step_m=10 * math.pi, radius_m=100)  # 20 steps round the loop
    walk = TeamActivity(Radios(), [member], cadence)
    for _ in range(20):
        walk.walk()
    distances = [_metres(lat, lon, 30.0, 103.0) for lat, lon in sent]
    assert max(distances) == pytest.approx(200, abs=1)  # the far side of the loop
    assert distances[-1] == pytest.approx(0, abs=0.5)  # back where it started
    assert all(b > a for a, b in itertools.pairwise(distances[:10]))


def test_a_bad_team_speed_is_refused_with_its_value() -> None:
    assert Cadence.from_env({"KIT_SIM_TEAM_SPEED": "30"}).speed == 30
    assert Cadence.from_env({}).speed == 1
    with pytest.raises(ValueError, match=r"KIT_SIM_TEAM_SPEED='fast' is not a number"):
        Cadence.from_env({"KIT_SIM_TEAM_SPEED": "fast"})
    with pytest.raises(ValueError, match=r"KIT_SIM_TEAM_SPEED='0' must be above 0"):
        Cadence.from_env({"KIT_SIM_TEAM_SPEED": "0"})
    with pytest.raises(ValueError, match="must be positive"):
        Cadence(position_s=0)


def test_a_team_on_the_simulated_mesh_reaches_the_kit_over_the_air() -> None:
    """Members on their own nodes (two hops for the searcher) report over LoRa airtime."""
    team = demo_team()
    cadence = Cadence(position_s=30, telemetry_s=60, text_s=0, speed=100)

    async def main() -> MeshRadio:
        net = MeshNet(speed=100, telemetry_s=30)
        async with SimulatedRadio(KIT_NODE) as sim:
            net.add(KIT_NODE, radio=sim)
            for m in team:
                net.add(m.num, member=m)
            net.join(KIT_NODE, LEADER)
            net.join(KIT_NODE, MEDIC)
            net.join(MEDIC, SEARCHER)
            radio = MeshRadio(mesh_config(sim))
            await radio.start()
            walk = TeamActivity(net, team, cadence)
            try:
                await net.start()
                walk.start()
                await until(
                    lambda: all(
                        (m := radio.roster.get(f"!{t.num:08x}")) is not None
                        and m.position is not None
                        and m.battery_percent is not None
                        for t in team
                    ),
                    timeout=20,
                )
                return radio
            finally:
                await walk.close()
                await net.close()
                await radio.close()

    radio = asyncio.run(main())
    assert len(radio.roster) == 3


def _own_telemetry(payload: bytes) -> Any:
    from meshtastic.protobuf import mesh_pb2

    packet = mesh_pb2.MeshPacket(
        to=KIT_NODE, decoded=mesh_pb2.Data(portnum=TELEMETRY_APP, payload=payload)
    )
    setattr(packet, "from", KIT_NODE)
    return packet


@given(st.binary(max_size=120))
def test_any_bytes_as_the_radios_own_telemetry_give_a_percentage_or_are_refused(
    raw: bytes,
) -> None:
    try:
        event = packet_event(_own_telemetry(raw), KIT_NODE)
    except (DecodeError, ValueError):
        return  # the radio's caller counts the packet as dropped
    assert event is None or isinstance(event, ChannelReport)
    if event is not None:
        assert 0 <= event.utilisation <= 100
        assert event.air_util_tx is None or 0 <= event.air_util_tx <= 100


@given(st.floats(width=32), st.one_of(st.none(), st.floats(width=32)), st.booleans())
def test_the_radios_channel_figures_are_read_from_metrics_and_local_stats(
    util: float, air: float | None, local: bool
) -> None:
    from meshtastic.protobuf import telemetry_pb2

    if local:
        stats = telemetry_pb2.LocalStats(channel_utilization=util, air_util_tx=air or 0.0)
        telemetry = telemetry_pb2.Telemetry(local_stats=stats)
    else:
        metrics = telemetry_pb2.DeviceMetrics(channel_utilization=util)
        if air is not None:
            metrics.air_util_tx = air
        telemetry = telemetry_pb2.Telemetry(device_metrics=metrics)
    packet = _own_telemetry(telemetry.SerializeToString())
    if not 0 <= util <= 100:
        with pytest.raises(ValueError, match="is not a percentage"):
            packet_event(packet, KIT_NODE)
        return
    event = packet_event(packet, KIT_NODE)
    assert isinstance(event, ChannelReport) and event.utilisation == util
    expected_air = air or 0.0 if local else air
    if expected_air is not None and not 0 <= expected_air <= 100:
        expected_air = None
    assert event.air_util_tx == expected_air
