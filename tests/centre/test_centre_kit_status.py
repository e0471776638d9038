"""Kits' status items at the centre: the newest by the kit's creation time is what the
dashboard's kit list shows (on SQLite and PostgreSQL), whatever order copies arrive in;
and the page in headless Chromium shows it, Chinese first, with its age."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centre_helpers import KITS, RunningCentre, answer, batch
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from pg_helpers import pg_server_fixture as pg_server_fixture
from playwright.sync_api import expect, sync_playwright

from centre.config import CentreConfig
from centre.dashboard import queries
from centre.keys import STORE
from config.web.auth import Users
from edge.item import DataValue, Item, Kind, new_item
from edge.statusreport import SOURCE

PASSWORD = "correct horse battery"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def made(minutes_ago: float) -> int:
    return int(time.time() * 1000 - minutes_ago * 60_000)


def status(minutes_ago: float, source: str = SOURCE, **data: DataValue) -> Item:
    return new_item(
        Kind.SENSOR, source=source, data=data, created_ms=made(minutes_ago), clock_ok=True
    )


def kits_of(centre: RunningCentre) -> dict[int, dict[str, Any]]:
    return {k["kit_id"]: k for k in centre.call(queries.kits(centre.runner.app[STORE]))}


def test_an_older_status_arriving_late_never_replaces_the_newer_one(
    centre: RunningCentre,
) -> None:
    newer = status(2, battery_pct=15, backlog=4, backlog_p0=1, power="save", links="bd+ vsat-")
    older = status(30, battery_pct=80, backlog=0, power="normal", links="bd+ vsat+")
    answer(centre.post_items(7, batch([(9, newer)]), "beidou"))
    answer(centre.post_items(7, batch([(3, older)]), "vsat"))  # the slow copy, late
    kit = kits_of(centre)[7]
    assert kit["status_ms"] == newer.created_ms and kit["status_clock_ok"] is True
    assert (kit["battery_pct"], kit["backlog"], kit["backlog_p0"], kit["power"]) == (
        15,
        4,
        1,
        "save",
    )
    assert kit["reported_links"] == {"bd": True, "vsat": False}
    # Another sensor of the kit's is not its status.
    answer(centre.post_items(7, batch([(10, status(1, source="kit:temp", temp_c=31))]), "vsat"))
    assert kits_of(centre)[7]["battery_pct"] == 15
    # The feed is for reports: the kit's statuses are in the kit list, not in the feed;
    # any other sensor of the kit's still is.
    store = centre.runner.app[STORE]
    feed = centre.call(queries.items(store, queries.Filters.parse({}), 100))
    assert [(e["kind"], e["source"]) for e in feed] == [("sensor", "kit:temp")]
    asked = centre.call(queries.items(store, queries.Filters.parse({"kind": "sensor"}), 100))
    assert sorted(e["source"] for e in asked) == ["kit:status", "kit:status", "kit:temp"]


def test_a_kit_that_never_sent_a_status_shows_none_and_odd_values_are_left_out(
    centre: RunningCentre,
) -> None:
    odd = status(1, battery_pct=True, backlog="many", power="turbo", fix=1, links="vsat+ ++ -x")
    answer(centre.post_items(8, batch([(1, odd)]), "vsat"))
    kits = kits_of(centre)
    silent = kits[7]
    assert silent["status_ms"] is None and silent["battery_pct"] is None
    assert silent["backlog"] is None and silent["reported_links"] == {}
    odd_kit = kits[8]
    assert odd_kit["status_ms"] is not None
    assert [odd_kit[k] for k in ("battery_pct", "backlog", "power", "fix")] == [None] * 4
    assert odd_kit["reported_links"] == {"vsat": True}


@pytest.fixture
def sqlite_centre(tmp_path: Path) -> Iterator[RunningCentre]:
    config = CentreConfig(listen="127.0.0.1:0", data_dir=tmp_path / "centre", kits=KITS)
    Users(config.data_dir / "dashboard" / "operators.json").set("zhang", PASSWORD)
    running = RunningCentre(config)
    try:
        yield running
    finally:
        running.stop()


def test_the_kit_list_shows_the_reported_status_and_its_age_chinese_first(
    sqlite_centre: RunningCentre,
) -> None:
    report = status(
        12,
        battery_pct=87,
        hours_left=41,
        mains=False,
        power="save",
        backlog=5,
        backlog_p0=1,
        backlog_p1=2,
        links="beidou+ vsat- +1",
        disk_pct=37,
        fix=True,
    )
    answer(sqlite_centre.post_items(7, batch([(4, report)]), "beidou"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(locale="zh-CN")
            page.goto(f"{sqlite_centre.url}/dashboard/login")
            page.fill('input[name="user"]', "zhang")
            page.fill('input[name="password"]', PASSWORD)
            page.click('button[type="submit"]')
            expect(page.locator("body[data-ready='1']")).to_have_count(1)
            row = page.locator('#kit-rows tr[data-kit="7"]')
            battery = row.locator("td.battery")
            expect(battery).to_contain_text("87 % · 约剩 41 小时 · 省电模式")
            expect(battery).to_contain_text(re.compile("状态生成于 1[23] 分钟前"))
            expect(row.locator("td.backlog")).to_have_text("5 (P0 1 · P1 2)")
            expect(row.locator('.link.reported.up[data-link="beidou"]')).to_have_text("beidou 在线")
            expect(row.locator('.link.reported.down[data-link="vsat"]')).to_have_text("vsat 离线")
            expect(row).to_contain_text("另有 1 条在线、0 条离线")
            silent = page.locator('#kit-rows tr[data-kit="8"]')
            expect(silent.locator("td.battery")).to_have_text("未上报")
            expect(silent.locator("td.backlog")).to_have_text("未上报")
        finally:
            browser.close()
