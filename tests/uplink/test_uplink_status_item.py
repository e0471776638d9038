"""The kit's periodic status item: when it is filed, what it says, that it fits one Beidou
message, and (real processes) that it crosses a narrow link to the centre's dashboard."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import zmq.asyncio
from hygiene import no_thread_left, run  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from config.loader import load
from config.web.auth import Users
from drivers.power import PowerConfig
from edge import bus, topics
from edge.item import Item, Kind, Priority, new_item
from edge.statusreport import (
    BEIDOU_ROOM,
    SIZING_SEQ,
    SOURCE,
    KitStatus,
    StatusConfig,
    StatusReporter,
    format_links,
    packed_size,
    parse_links,
    read_status,
    status_item,
)
from sim.harness import KIT_ID, centre, free_port, kit, kit_security
from uplink import compact, frames

P = Priority
PASSWORD = "correct horse battery"
LINKS = (("beidou", True), ("tiantong", False), ("vsat", True))


def status(**kw: Any) -> KitStatus:
    values: dict[str, Any] = {
        "backlog": {P.P0: 0, P.P1: 0, P.P2: 3, P.P3: 1, P.P4: 0},
        "disk_pct": 37,
        "battery_pct": 87,
        "hours_left": 41.4,
        "mains": False,
        "power": "normal",
        "links": LINKS,
        "fix": True,
    }
    values.update(kw)
    return KitStatus(**values)


# -- when a status is filed ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A reporter on a fake clock; ``current`` is what the kit knows, ``filed`` what it filed."""

    def __init__(self, interval_s: int = 600, min_interval_s: int = 120) -> None:
        self.clock = Clock()
        self.current = status()
        self.filed: list[Item] = []
        self.refuse = False

        async def read() -> KitStatus:
            return self.current

        async def file(item: Item) -> dict[str, Any]:
            if self.refuse:
                error = {"type": "StoreError", "zh": "存储写入失败", "en": "store write failed"}
                return {"ok": False, "error": error}
            self.filed.append(item)
            return {"ok": True, "seq": len(self.filed), "new": True, "state": "ACCEPTED"}

        config = StatusConfig(interval_s=interval_s, min_interval_s=min_interval_s)
        self.reporter = StatusReporter(config, read, file, clock=self.clock)

    def at(self, seconds: float, current: KitStatus | None = None) -> str | None:
        """Move the clock to ``seconds`` after start (the kit now ``current``) and look once."""
        if current is not None:
            self.current = current
        self.clock.now = 1000.0 + seconds
        return asyncio.run(self.reporter.step())


def test_the_first_status_waits_the_minimum_interval_then_one_comes_every_interval() -> None:
    h = Harness()
    # The other processes have not all reported yet; and a daemon restarting in a loop
    # must not send a status at each start.
    assert h.at(5) is None and h.at(119) is None
    assert h.at(120) == "first"
    assert h.at(400) is None and h.at(719) is None
    assert h.at(720) == "interval"
    assert h.at(1319) is None
    assert h.at(1320) == "interval"
    assert len(h.filed) == 3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"battery_pct": 49}, "battery 49 %"),
        ({"links": (("beidou", True), ("tiantong", False), ("vsat", False))}, "links"),
        ({"backlog": {P.P0: 1, P.P1: 0, P.P2: 3}}, "P0/P1 backlog 1 / 0"),
        ({"backlog": {P.P0: 0, P.P1: 2, P.P2: 3}}, "P0/P1 backlog 0 / 2"),
        ({"power": "save"}, "power save"),
    ],
)
def test_an_important_change_files_a_status_early_but_not_before_the_minimum_interval(
    change: dict[str, Any], reason: str
) -> None:
    h = Harness()
    assert h.at(120) == "first"

    assert h.at(125, status(**change)) is None  # 5 s after the last one: waits
    assert h.at(239) is None
    got = h.at(240)  # min_interval_s after the last
    assert got is not None and got.startswith(reason)
    assert len(h.filed) == 2


def test_small_changes_wait_for_the_interval_and_a_change_undone_in_between_is_no_change() -> None:
    h = Harness()
    assert h.at(120) == "first"
    # A link that dropped and came back before the minimum interval is not worth a message.
    flap = status(links=(("beidou", False), ("tiantong", False), ("vsat", True)))
    assert h.at(135, flap) is None
    assert h.at(245, status()) is None
    # 87 % → 60 %: no threshold crossed; more P2/P3 items: not urgent; GNSS and disk: no rush.
    calm = status(battery_pct=60, backlog={P.P2: 90, P.P3: 4}, fix=False, disk_pct=90)
    assert h.at(300, calm) is None
    assert h.at(719) is None
    assert h.at(720) == "interval"
    assert h.filed[-1].data["battery_pct"] == 60 and len(h.filed) == 2


def test_the_battery_crossing_each_threshold_either_way_is_reported() -> None:
    h = Harness(min_interval_s=60)
    assert h.at(60) == "first"
    levels = [(51, None), (50, None), (49, "battery 49 %"), (21, None), (19, "battery 19 %")]
    levels += [(11, None), (9, "battery 9 %"), (12, "battery 12 %"), (55, "battery 55 %")]
    t = 60.0
    for level, expected in levels:
        t += 60
        assert h.at(t, status(battery_pct=level)) == expected, level


def test_a_refused_status_is_tried_again_after_the_minimum_interval() -> None:
    h = Harness()
    h.refuse = True
    assert h.at(120) is None and h.filed == []
    h.refuse = False
    assert h.at(200) is None  # no retry storm on a failing disk
    assert h.at(240) == "retry"
    assert len(h.filed) == 1


def test_the_config_keeps_the_minimum_interval_below_the_interval() -> None:
    with pytest.raises(ValueError, match="min_interval_s must not exceed interval_s"):
        StatusConfig(interval_s=60, min_interval_s=120)
    with pytest.raises(ValueError, match="greater than or equal to 60"):
        StatusConfig(interval_s=10, min_interval_s=5)


# -- what the edge daemon knows ------------------------------------------------------------


class Outbox:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "outbox.sqlite3"

    async def queued(self) -> dict[Priority, int]:
        return {P.P0: 1, P.P1: 0, P.P2: 4, P.P3: 0, P.P4: 2}


def test_the_status_reads_the_daemons_latest_reports_and_leaves_out_stale_ones(
    tmp_path: Path,
) -> None:
    now = time.monotonic()
    old = now - 600  # that process stopped reporting ten minutes ago
    daemon = SimpleNamespace(
        store=Outbox(tmp_path),
        links={
            "beidou": (now, topics.LinkState("beidou", "beidou", True, 10.0, 2.0)),
            "vsat": (old, topics.LinkState("vsat", "ip", True, 1e5, 0.6)),
        },
        battery=(now, topics.BatteryLevel(63.4, 12.2, True, hours_left=None)),
        power_mode=(old, topics.PowerModeChanged("save", 28.0, "battery level")),
        fix=(old, topics.PositionFix(30.6, 104.0, 500.0, 0, 9)),
        devices={"gnss": (now, topics.DeviceState("gnss", "gnss", True, "无定位", "no fix"))},
        config=SimpleNamespace(power=PowerConfig(save_percent=30, critical_percent=10)),
    )
    got = asyncio.run(read_status(daemon))  # type: ignore[arg-type]
    assert got.backlog == {P.P0: 1, P.P1: 0, P.P2: 4, P.P3: 0, P.P4: 2}
    assert (got.battery_pct, got.hours_left, got.mains) == (63, None, True)
    assert got.power == "save"  # sent once, on change: never stale
    assert got.links == (("beidou", True), ("vsat", False))  # the uplink's old word: offline
    assert got.fix is False  # the receiver reports, but no position for ten minutes
    assert got.disk_pct is not None and 0 <= got.disk_pct <= 100
    daemon.battery = (now, topics.BatteryLevel(float("nan"), None, False))
    daemon.devices = {}
    got = asyncio.run(read_status(daemon))  # type: ignore[arg-type]
    assert got.battery_pct is None and got.fix is None  # no reading, no receiver
    # No mode change heard yet: the mode the drivers' policy gives for the level.
    daemon.power_mode = None
    daemon.battery = (now, topics.BatteryLevel(25.0, 11.8, False))
    assert asyncio.run(read_status(daemon)).power == "save"  # type: ignore[arg-type]
    daemon.battery = (now, topics.BatteryLevel(25.0, 11.8, True))
    assert asyncio.run(read_status(daemon)).power == "normal"  # type: ignore[arg-type]


# -- what it says, and its size ------------------------------------------------------------


def test_the_status_item_carries_every_value_as_a_p2_sensor_reading_of_the_kit() -> None:
    item = status_item(status(backlog={P.P0: 1, P.P1: 2, P.P2: 3, P.P3: 1, P.P4: 7}))
    assert (item.kind, item.priority, item.source) == (Kind.SENSOR, P.P2, SOURCE)
    assert dict(item.data) == {
        "battery_pct": 87,
        "hours_left": 41,
        "mains": False,
        "power": "normal",
        "backlog": 14,
        "backlog_p0": 1,
        "backlog_p1": 2,
        "links": "beidou+ tiantong- vsat+",
        "disk_pct": 37,
        "fix": True,
    }
    unknown = status_item(KitStatus(backlog={P.P0: 0}))  # nothing else reported yet
    assert dict(unknown.data) == {"backlog": 0, "backlog_p0": 0, "backlog_p1": 0}


def test_a_typical_status_fits_one_sealed_beidou_message_and_unpacks_the_same(
    tmp_path: Path,
) -> None:
    item = status_item(status(power="critical", hours_left=1234.0))
    payload = compact.pack_items([(SIZING_SEQ, item)])
    assert len(payload) == packed_size(item) <= BEIDOU_ROOM == 62
    security = kit_security(KIT_ID, tmp_path / "kit-security.sqlite3")
    try:
        sealed = frames.fragment(KIT_ID, 1, payload, frames.MTU_BEIDOU, sealer=security)
    finally:
        security.state.close()
    assert len(sealed) == 1 and len(sealed[0]) <= frames.MTU_BEIDOU == 77
    ((seq, back),) = compact.unpack_items(payload, kit_id=KIT_ID)
    assert seq == SIZING_SEQ and dict(back.data) == dict(item.data)
    assert back.source == SOURCE and back.kind is Kind.SENSOR


link_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,31}", fullmatch=True)
link_lists = st.lists(st.tuples(link_names, st.booleans()), max_size=32, unique_by=lambda x: x[0])
statuses = st.builds(
    KitStatus,
    backlog=st.dictionaries(st.sampled_from(list(P)), st.integers(0, 10_000_000)),
    disk_pct=st.none() | st.integers(0, 100),
    battery_pct=st.none() | st.integers(0, 100),
    hours_left=st.none() | st.floats(0, 100_000),
    mains=st.none() | st.booleans(),
    power=st.none() | st.sampled_from(["normal", "save", "critical"]),
    links=link_lists.map(lambda links: tuple(sorted(links))),
    fix=st.none() | st.booleans(),
)


@given(statuses)
@settings(max_examples=60, deadline=None)
def test_any_status_fits_one_beidou_message_naming_what_links_it_can(s: KitStatus) -> None:
    item = status_item(s)
    assert packed_size(item) <= BEIDOU_ROOM
    assert compact.count_fitting([(SIZING_SEQ, item)], frames.MTU_BEIDOU) == 1
    told = parse_links(item.data.get("links"))
    # Every link it names has its true state; the others are counted, never lost.
    assert told.links.items() <= dict(s.links).items()
    if "links" in item.data:
        up = sum(1 for _, online in s.links if online)
        named_up = sum(told.links.values())
        assert named_up + told.more_up == up
        assert len(told.links) - named_up + told.more_down == len(s.links) - up


@given(link_lists)
@settings(max_examples=40, deadline=None)
def test_links_text_reads_back_as_written(links: list[tuple[str, bool]]) -> None:
    told = parse_links(format_links(links))
    assert told.links == dict(links) and (told.more_up, told.more_down) == (0, 0)


@given(st.text(max_size=300) | st.integers() | st.none())
def test_a_malformed_links_text_from_outside_never_raises(text: object) -> None:
    told = parse_links(text)
    assert all(isinstance(k, str) and isinstance(v, bool) for k, v in told.links.items())
    assert told.more_up >= 0 and told.more_down >= 0


# -- end to end: a kit's edge and uplink processes, a centre, a Beidou-sized link ----------


def test_the_status_crosses_a_beidou_sized_link_to_the_dashboards_kit_list(
    tmp_path: Path,
) -> None:
    """The kit's real edge daemon and uplink, the real centre with its UDP frame gateway:
    the battery and power mode the drivers would publish and the backlog of thumbnails a
    P0–P2 link cannot carry appear on the dashboard's kit list. (Which changes file a
    status early is for the units above: the minimum interval would make this test wait.)"""

    async def go() -> None:
        gw_port = free_port(socket.SOCK_DGRAM)
        gateway = (
            f'[[gateways]]\nname = "beidou"\nkind = "udp"\nlisten = "127.0.0.1:{gw_port}"\n'
            "mtu = 77\nmissing_after_s = 3\n"
        )
        link = (
            f'[[links]]\nkind = "datagram"\nname = "beidou"\ngateway = "127.0.0.1:{gw_port}"\n'
            'mtu = 77\nmin_interval = 0.5\nrate = 150\nrtt = 1.0\nack_timeout = 8\nclasses = ["P0", "P1", "P2"]\n'
        )
        Users(tmp_path / "centre" / "dashboard" / "operators.json").set("zhang", PASSWORD)
        async with (
            centre(tmp_path, udp_gateways=[gateway]) as (url, _),
            kit(tmp_path, link, "[status]\ninterval_s = 60\nmin_interval_s = 5\n") as k,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        ):
            for i in range(2):
                thumb = k.media(f"thumb/{i}.webp", os.urandom(3000), "image/webp")
                await k.edge.accept(new_item("thumbnail", source="drone-1", media=thumb))
            config = load(tmp_path / "kit.toml").config
            ctx = zmq.asyncio.Context()
            publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
            battery = topics.BatteryLevel(87.0, 12.4, False, hours_left=41.2)

            async def drivers() -> None:  # what `kit drivers` publishes, every so often
                while True:
                    await publisher.publish(topics.BATTERY_LEVEL, battery)
                    await publisher.publish(
                        topics.POWER_MODE, topics.PowerModeChanged("save", 87.0, "test")
                    )
                    await asyncio.sleep(0.2)

            publishing = asyncio.create_task(drivers())
            try:
                login = await session.post(
                    f"{url}/dashboard/login",
                    data={"user": "zhang", "password": PASSWORD},
                    headers={"Origin": url},
                    allow_redirects=False,
                )
                assert login.status == 303, await login.text()

                async def kit_row(ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
                    for _ in range(300):
                        async with session.get(f"{url}/dashboard/api/kits") as r:
                            assert r.status == 200, await r.text()
                            row: dict[str, Any] = next(
                                x for x in (await r.json())["kits"] if x["kit_id"] == KIT_ID
                            )
                        if ready(row):
                            return row
                        await asyncio.sleep(0.1)
                    log = (tmp_path / "edge.log").read_text()[-3000:]
                    raise AssertionError(f"no such status at the centre: {row}\n{log}")

                # The first status may come before the uplink's first link report (or the
                # power mode) reached the edge daemon: a change files the next one.
                first = await kit_row(
                    lambda r: r["reported_links"] == {"beidou": True} and r["power"] == "save"
                )
                assert first["battery_pct"] == 87 and first["hours_left"] == 41
                assert first["mains"] is False
                # The two thumbnails (and an earlier status, if not acknowledged yet).
                assert 2 <= first["backlog"] <= 3 and first["backlog_p0"] == 0
                assert first["backlog_p1"] == 0
                assert first["reported_links"] == {"beidou": True}
                assert first["links"].keys() == {"beidou"}  # it came over the narrow link
                assert first["status_clock_ok"] is True and first["disk_pct"] is not None
            finally:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
                publisher.close()
                ctx.term()

    run(go(), timeout=90)
