"""The page in headless Chromium (Debian's, driven by Playwright) on a running kit: a report
with a photo reaches the store, a link setting is applied, a bad value shows its error, the
map shows a team member — and every request the page makes goes to the kit."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import zmq
import zmq.asyncio
from hygiene import nothing_left_open  # noqa: F401
from playwright.sync_api import Browser, Page, expect, sync_playwright
from web_helpers import (
    PASSWORD,
    edge_get,
    edge_status,
    free_port,
    jpeg,
    settle,
    start_kit,
    stop_kit,
    wait_http,
    write_config,
)

from config.web.auth import Users
from config.web.tiles import lat_lon_to_tile
from edge import bus, topics

zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


@dataclass
class Kit:
    config: Path
    url: str
    host: str


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    root = tmp_path_factory.mktemp("webkit")
    port = free_port()
    config = write_config(root / "kit.toml", root, listen=f"127.0.0.1:{port}")
    Users(root / "data" / "web" / "users.json").set("admin", PASSWORD)
    proc = start_kit(config, ("edge", "uplink", "web"))
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc)
        yield Kit(config, f"http://127.0.0.1:{port}", f"127.0.0.1:{port}")
    finally:
        stop_kit(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, kit: Kit) -> Iterator[Page]:
    """A fresh phone-sized page; afterwards, every request it made must have gone to the kit."""
    context = browser.new_context(
        viewport={"width": 412, "height": 900}, locale="zh-CN", service_workers="block"
    )
    p = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    p.on("request", lambda r: requests.append(r.url))
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        yield p
    finally:
        context.close()
    assert requests, "the page made no requests at all"
    outside = [
        u
        for u in requests
        if not (u.startswith(("blob:", "data:")) or urlparse(u).netloc == kit.host)
    ]
    assert outside == [], f"requests that left the kit: {outside}"
    assert dialogs == [], f"a script ran: {dialogs}"


def log_in(page: Page, kit: Kit) -> None:
    page.goto(f"{kit.url}/config")
    assert urlparse(page.url).path == "/login"
    page.fill('input[name="user"]', "admin")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{kit.url}/config")


def test_a_report_with_a_photo_filed_from_the_page_is_accepted_in_the_store(
    page: Page, kit: Kit
) -> None:
    evil = "<script>window.__x = 1</script><img src=x onerror=alert(1)>楼房倒塌，三人被困"
    page.goto(f"{kit.url}/report")
    page.click("label.kind-trapped")
    page.fill('input[name="count"]', "3")
    page.fill('textarea[name="text"]', evil)
    page.click("#pos-map")
    page.locator("#pick-map").click()  # a tap in its middle
    expect(page.locator("#lat")).to_have_value(re.compile(r"^30\.6\d+$"))
    page.set_input_files(
        "#photos", files=[{"name": "scene.jpg", "mimeType": "image/jpeg", "buffer": jpeg()}]
    )
    expect(page.locator("#previews img")).to_have_count(1)
    page.click("#submit")
    expect(page.locator("#form-msg")).to_have_text(re.compile(r"^已受理 #\d+$"), timeout=20_000)
    seq = int(page.locator("#form-msg").inner_text().split("#")[1])

    stored = edge_get(kit.config, seq)
    assert (stored["kind"], stored["priority"]) == ("trapped", "P0")
    status = edge_status(kit.config)
    assert status["states"].get("ACCEPTED.P3", 0) + status["states"].get("IN_FLIGHT.P3", 0) >= 2
    assert status["states"].get("ACCEPTED.P4", 0) + status["states"].get("IN_FLIGHT.P4", 0) >= 1
    # Its delivery state, polled by the page (the centre is unreachable: it waits for a link).
    expect(page.locator(f'#my-reports li[data-seq="{seq}"] .state')).to_have_text(
        re.compile("已受理，等待链路|发送中"), timeout=10_000
    )
    assert page.evaluate("window.__x") is None

    page.goto(f"{kit.url}/map")
    marker = page.locator(f'.marker.report[data-id="report-{seq}"]')
    expect(marker).to_have_count(1, timeout=10_000)
    marker.click()
    expect(page.locator("#popup")).to_contain_text("<script>window.__x = 1</script>")
    photo = page.locator("#popup img")
    expect(photo).to_have_attribute("src", f"/photos/{seq}/0")
    page.wait_for_function("() => document.querySelector('#popup img').naturalWidth > 0")
    assert page.evaluate("window.__x") is None


def test_changing_a_link_setting_on_the_page_is_applied_by_the_uplink(page: Page, kit: Kit) -> None:
    log_in(page, kit)
    page.click('details[id="g-links[0]"] > summary')
    page.fill('input[name="links[0].rate"]', "2345")
    page.click("#save")
    expect(page.locator("#saved")).to_contain_text("已请求重启：uplink")
    assert "rate = 2345.0" in kit.config.read_text()
    # The uplink restarts with the new setting and reports the link with it.
    deadline = time.monotonic() + 40
    rate = None
    while time.monotonic() < deadline:
        rate = (edge_status(kit.config)["links"].get("ethernet") or {}).get("rate_bps")
        if rate == 2345.0:
            break
        time.sleep(0.5)
    assert rate == 2345.0
    page.goto(f"{kit.url}/")
    expect(page.locator('#link-rows tr[data-link="ethernet"]')).to_contain_text("2.3 KB/s")


def test_a_bad_value_is_shown_next_to_its_field_with_its_key_path_and_not_saved(
    page: Page, kit: Kit
) -> None:
    before = kit.config.read_bytes()
    log_in(page, kit)
    page.click('details[id="g-links[0]"] > summary')
    page.fill('input[name="links[0].rate"]', "-1")
    page.click("#save")
    error = page.locator('.field-error[data-path="links[0].rate"]')
    expect(error).to_have_text("links[0].rate: Input should be greater than 0")
    expect(error).to_be_visible()
    expect(page.locator('input[name="links[0].rate"]')).to_have_value("-1")
    assert kit.config.read_bytes() == before


def test_the_map_shows_the_kit_and_a_team_member_from_the_mesh_roster(page: Page, kit: Kit) -> None:
    member = topics.TeamMember(
        node="!a1b2c3d4",
        name="张伟 救援一队",
        short="ZW",
        lat=30.6612,
        lon=104.0645,
        position_ms=int(time.time() * 1000),
        last_heard_ms=int(time.time() * 1000),
        battery_pct=76,
        snr=6.5,
    )

    # As `kit mesh` and `kit drivers` do: publish on the bus (same encoding) until the edge has it.
    # (Playwright's sync API owns this thread's event loop: a plain ZeroMQ socket here.)
    fds = set(os.listdir("/proc/self/fd"))
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.connect(f"ipc://{kit.config.parent / 'run' / bus.PUB_SOCKET}.sock")
    try:
        for _ in range(100):
            publisher.send_multipart(bus.encode(topics.TEAM_ROSTER, topics.TeamRoster([member])))
            fix = topics.PositionFix(30.6601, 104.0602, 500.0, int(time.time() * 1000), 11)
            publisher.send_multipart(bus.encode(topics.POSITION_FIX, fix))
            status = edge_status(kit.config)
            if status.get("team") and status.get("position"):
                break
            time.sleep(0.1)
    finally:
        publisher.close(0)
    settle(fds)
    page.goto(f"{kit.url}/map")
    marker = page.locator('.marker.member[data-id="member-!a1b2c3d4"]')
    expect(marker).to_have_count(1, timeout=10_000)
    expect(marker).to_contain_text("ZW")
    expect(page.locator('.marker.kit[data-id="kit"]')).to_have_count(1)
    # The marker sits where the member is: its screen position matches the projection.
    where = page.evaluate(
        """() => { const c = (s) => { const r = document.querySelector(s).getBoundingClientRect();
                                      return [r.x + r.width / 2, r.y + r.height / 2]; };
                    const m = c('.marker.member'), k = c('.marker.kit');
                    return [m[0] - k[0], m[1] - k[1]]; }"""
    )
    zoom = 14  # the sample map's starting zoom
    mx, my = lat_lon_to_tile(member.lat, member.lon, zoom)  # type: ignore[arg-type]
    kx, ky = lat_lon_to_tile(30.6601, 104.0602, zoom)
    assert where == [
        pytest.approx((mx - kx) * 256, abs=1.5),
        pytest.approx((my - ky) * 256, abs=1.5),
    ]
    marker.click()
    expect(page.locator("#popup")).to_contain_text("张伟 救援一队 (!a1b2c3d4)")
    expect(page.locator("#popup")).to_contain_text("76 %")
