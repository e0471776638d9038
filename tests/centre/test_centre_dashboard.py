"""The centre's dashboard: operator logins (no default, back-off, CSRF), machine access to the
order and export APIs, and the page in headless Chromium — kits and a member's track on the
offline map, reports arriving live, the filters, media, and an order typed on the page queued
for the kit and shown acknowledged and delivered to the handheld when the kit's receipt
comes back. Every request the page makes goes to the centre."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from centre_helpers import batch
from hygiene import nothing_left_open  # noqa: F401
from playwright.sync_api import Browser, Page, expect, sync_playwright

from centre.dashboard.access import Tokens
from centre.store import Store
from config.web.auth import Users
from edge.item import Item, Kind, MediaRef, Position, new_item

PASSWORD = "correct horse battery"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
MEMBER = "!a1b2c3d4"
BROWSER_HEADERS = {"Sec-Fetch-Mode": "cors", "Origin": "http://evil.example"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Centre:
    """``kit centre`` in its own process (its threads and sockets are not this test's)."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "centre.toml"
        config.write_text(
            f'data_dir = "{root}"\nlisten = "127.0.0.1:{self.port}"\n{extra}'
            '[[kits]]\nkit_id = 7\nname = "北川一队"\n[[kits]]\nkit_id = 8\nname = "汶川二队"\n',
            encoding="utf-8",
        )
        Users(root / "dashboard" / "operators.json").set("zhang", PASSWORD)
        self.log = (root / "centre.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from centre.app import main; sys.exit(main())",
             "--config", str(config)],
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, (root / "centre.log").read_text()
            try:  # a plain socket: a failed request's exception would keep its socket alive
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the centre did not start"
            time.sleep(0.1)

    def post_items(self, kit: int, body: bytes, link: str) -> int:
        headers = {"Kit-Id": str(kit), "Content-Type": "application/cbor", "Kit-Link": link}
        with requests.post(f"{self.url}/v1/items", data=body, headers=headers, timeout=30) as r:
            return r.status_code

    def orders(self, kit: int) -> list[dict[str, Any]]:
        with requests.get(f"{self.url}/v1/orders?kit_id={kit}", timeout=30) as r:
            assert r.status_code == 200, r.text
            orders: list[dict[str, Any]] = r.json()["orders"]
            return orders

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            self.proc.kill()
            self.proc.wait()
            self.log.close()


def at(minutes_ago: float) -> int:
    return int(time.time() * 1000 - minutes_ago * 60_000)


def item(kind: Kind, text: str | None, lat: float, lon: float, **kw: Any) -> Item:
    return new_item(
        kind,
        source=kw.pop("source", "web"),
        text=text,
        position=Position(lat, lon),
        created_ms=kw.pop("created_ms", at(5)),
        clock_ok=True,
        **kw,
    )


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    running = Centre(tmp_path_factory.mktemp("dash"))
    try:
        seed = [
            (1, item(Kind.SITUATION, "三号楼倒塌", 30.6600, 104.0640, data={"count": 4})),
            (2, item(Kind.NEEDS, "需要饮用水 200 箱", 30.6610, 104.0650, created_ms=at(600))),
            *[
                (
                    10 + i,
                    item(Kind.TRACK, None, 30.655 + i * 0.001, 104.06, source=f"mesh:{MEMBER}"),
                )
                for i in range(4)
            ],
        ]
        assert running.post_items(7, batch(seed), "vsat") == 200
        far = [(1, item(Kind.CASUALTIES, "远处伤员 2 人", 31.5, 105.5, data={"count": 2}))]
        assert running.post_items(8, batch(far), "tiantong") == 200
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, centre: Centre) -> Iterator[Page]:
    """A logged-in dashboard; afterwards, every request it made must have gone to the centre."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
    p = context.new_page()
    seen: list[str] = []
    p.on("request", lambda r: seen.append(r.url))
    try:
        p.goto(f"{centre.url}/dashboard")
        assert urlparse(p.url).path == "/dashboard/login"
        p.fill('input[name="user"]', "zhang")
        p.fill('input[name="password"]', PASSWORD)
        p.click('button[type="submit"]')
        p.wait_for_url(f"{centre.url}/dashboard")
        expect(p.locator("body[data-ready='1']")).to_have_count(1)
        expect(p.locator("#live")).to_have_class("live up")
        yield p
    finally:
        context.close()
    host = urlparse(centre.url).netloc
    outside = [
        u for u in seen if not u.startswith(("blob:", "data:")) and urlparse(u).netloc != host
    ]
    assert seen and outside == [], f"requests that left the centre: {outside}"


# -- access, over HTTP ---------------------------------------------------------------------


def test_dashboard_and_browser_api_calls_need_an_operator_login(centre: Centre) -> None:
    with requests.Session() as s:
        check_logged_out(s, centre)


def check_logged_out(s: requests.Session, centre: Centre) -> None:
    first = s.get(f"{centre.url}/dashboard", allow_redirects=False, timeout=30)
    assert first.status_code == 303 and first.headers["Location"] == "/dashboard/login"
    assert s.get(f"{centre.url}/dashboard/api/items", timeout=30).status_code == 401
    assert s.get(f"{centre.url}/dashboard/media/7/1", timeout=30).status_code == 401
    order = s.post(
        f"{centre.url}/v1/orders", json={"kit_id": 7, "text": "撤离"}, headers=BROWSER_HEADERS
    )
    assert order.status_code == 401 and "log in at /dashboard first" in order.text
    geo = s.get(f"{centre.url}/v1/export/geojson", headers=BROWSER_HEADERS, timeout=30)
    assert geo.status_code == 401
    assert centre.orders(7) == []
    page = s.get(f"{centre.url}/dashboard/login", timeout=30)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_a_logged_in_browser_needs_the_csrf_token_to_send_an_order(centre: Centre) -> None:
    with requests.Session() as s:
        check_csrf(s, centre)


def check_csrf(s: requests.Session, centre: Centre) -> None:
    origin = {"Origin": centre.url}
    resp = s.post(
        f"{centre.url}/dashboard/login",
        data={"user": "zhang", "password": PASSWORD},
        headers=origin,
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 303, resp.text
    html = s.get(f"{centre.url}/dashboard", timeout=30).text
    token = html.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
    body = {"kit_id": 8, "target": "^all", "text": "注意余震"}
    forged = s.post(f"{centre.url}/v1/orders", json=body, headers=origin, timeout=30)
    assert forged.status_code == 403 and "CSRF" in forged.text
    other = {"Origin": "http://evil.example", "X-CSRF-Token": token}
    assert s.post(f"{centre.url}/v1/orders", json=body, headers=other).status_code == 403
    assert centre.orders(8) == []
    ok = s.post(f"{centre.url}/v1/orders", json=body, headers={**origin, "X-CSRF-Token": token})
    assert ok.status_code == 201, ok.text
    assert [o["target"] for o in centre.orders(8)] == ["^all"]


def test_machines_use_a_bearer_token_or_the_centres_own_host(tmp_path: Path) -> None:
    running = Centre(tmp_path, "[dashboard]\ntrust_loopback = false\n")
    try:
        url = f"{running.url}/v1/export/geojson"
        with requests.get(url, timeout=30) as refused:
            assert refused.status_code == 401 and "bearer token" in refused.text
        token = Tokens(tmp_path / "dashboard" / "tokens.json").add("yizhangtu")
        with requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as ok:
            assert ok.status_code == 200 and ok.json()["type"] == "FeatureCollection"
        forged = {"Authorization": f"Bearer {token[:-3]}xyz"}
        with requests.get(url, headers=forged, timeout=30) as bad:
            assert bad.status_code == 401 and "invalid bearer token" in bad.text
    finally:
        running.stop()


def test_wrong_passwords_back_off_and_then_even_the_right_one_waits(tmp_path: Path) -> None:
    running = Centre(tmp_path)
    try:
        with requests.Session() as s:
            headers = {"Origin": running.url}

            def log_in(password: str) -> requests.Response:
                return s.post(
                    f"{running.url}/dashboard/login",
                    data={"user": "zhang", "password": password},
                    headers=headers,
                    allow_redirects=False,
                    timeout=30,
                )

            statuses = [log_in("wrong password!").status_code for _ in range(5)]
            assert statuses == [401, 401, 401, 401, 429]
            late = log_in(PASSWORD)
            assert late.status_code == 429 and int(late.headers["Retry-After"]) >= 1
            assert "密码错误次数过多" in late.text
            assert "centre_s" not in s.cookies
    finally:
        running.stop()


def test_operator_add_reads_the_password_from_stdin_and_refuses_a_short_one(
    tmp_path: Path,
) -> None:
    config = tmp_path / "centre.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n', encoding="utf-8")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from centre.app import main; sys.exit(main(sys.argv[1:]))",
    ]
    args = ["operator", "add", "li", "--config", str(config)]
    short = subprocess.run([*cmd, *args], input="short\n", capture_output=True, text=True)
    assert short.returncode == 2 and "a password needs 10-256 characters" in short.stderr
    assert not (tmp_path / "dashboard" / "operators.json").exists()
    done = subprocess.run([*cmd, *args], input=PASSWORD + "\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Users(tmp_path / "dashboard" / "operators.json").check("li", PASSWORD)


# -- the page in Chromium ------------------------------------------------------------------


def test_the_map_shows_each_kit_and_a_members_track(page: Page) -> None:
    expect(page.locator('.marker.kit[data-id="kit-7"]')).to_have_count(1)
    expect(page.locator('.marker.kit[data-id="kit-8"]')).to_have_count(1)
    expect(page.locator(f'.marker.member[data-id="member-{MEMBER}"]')).to_have_count(1)
    expect(page.locator(".marker.trail")).to_have_count(3)
    row = page.locator('#kit-rows tr[data-kit="7"]')
    expect(row).to_contain_text("北川一队")
    expect(row).to_contain_text("ip:vsat")
    expect(row).to_contain_text("未上报")  # battery: kits send no status item yet


def test_a_report_posted_to_the_centre_appears_in_the_feed_without_reload(
    page: Page, centre: Centre
) -> None:
    expect(page.locator("#feed li.item")).to_have_count(3)  # tracks are on the map, not here
    sos = item(Kind.SOS, "楼顶 5 人等待救援", 30.6590, 104.0630, created_ms=at(1))
    assert centre.post_items(7, batch([(3, sos)]), "beidou") == 200
    new = page.locator('#feed li[data-id="7-3"]')
    expect(new).to_contain_text("楼顶 5 人等待救援")
    expect(new).to_contain_text("经 ip:beidou")
    expect(new).to_contain_text("1 份")
    assert centre.post_items(7, batch([(3, sos)]), "tiantong") == 200
    # A further copy changes no feed position (the store counts it): shown on the next query.
    page.select_option('select[name="priority"]', "0")
    expect(page.locator('#feed li[data-id="7-3"]')).to_contain_text("2 份")
    page.select_option('select[name="priority"]', "")
    expect(page.locator('.marker.report[data-id="report-7-3"]')).to_have_count(1)


def test_the_filters_narrow_the_feed_by_kind_priority_area_and_time(page: Page) -> None:
    feed = page.locator("#feed li.item")
    page.select_option('select[name="kind"]', "needs")
    expect(feed).to_have_count(1)
    expect(feed.first).to_contain_text("需要饮用水")
    page.select_option('select[name="kind"]', "")
    page.select_option('select[name="priority"]', "0")
    expect(feed).to_have_count(1)
    expect(feed.first).to_contain_text("楼顶 5 人")
    page.select_option('select[name="priority"]', "")
    page.check('input[name="area"]')  # the map is centred on kit 7; kit 8's report is far away
    expect(page.locator('#feed li[data-id="8-1"]')).to_have_count(0)
    expect(page.locator('#feed li[data-id="7-1"]')).to_have_count(1)
    page.uncheck('input[name="area"]')
    expect(page.locator('#feed li[data-id="8-1"]')).to_have_count(1)
    since = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() - 3600))
    page.fill('input[name="since"]', since)
    page.locator('input[name="since"]').dispatch_event("change")
    expect(page.locator('#feed li[data-id="7-2"]')).to_have_count(0)  # ten hours old
    expect(page.locator('#feed li[data-id="7-1"]')).to_have_count(1)


def codec2_note(folder: Path) -> bytes:
    out = folder / "note.c2"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=300:duration=2", "-ar", "8000", "-ac", "1", "-c:a", "libcodec2",
         "-mode", "700C", "-f", "codec2", str(out)],
        check=True,
    )  # fmt: skip
    return out.read_bytes()


def jpeg() -> bytes:
    import cv2
    import numpy as np

    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (0, 0, 200)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data)


def media_item(kind: Kind, data: bytes, name: str, mime: str) -> Item:
    ref = MediaRef(name, len(data), hashlib.sha256(data).hexdigest(), mime)
    return new_item(kind, source="web", media=ref, created_ms=at(2), clock_ok=True)


async def ingest_inline(
    root: Path, kit: int, entries: list[tuple[int, Item]], blobs: dict[int, bytes]
) -> tuple[int, ...]:
    """Files that travelled inside their items (as over Beidou), stored by a second process."""
    store = await Store.open(root / "centre.sqlite3", root / "media")
    try:
        return (await store.ingest(kit, entries, link="beidou", blobs=blobs)).stored
    finally:
        await store.close()


def test_photos_show_and_voice_notes_play_decoded(
    page: Page, centre: Centre, tmp_path: Path
) -> None:
    photo, voice = jpeg(), codec2_note(tmp_path)
    entries = [
        (20, media_item(Kind.THUMBNAIL, photo, "thumbs/a.jpg", "image/jpeg")),
        (21, media_item(Kind.VOICE, voice, "voice/a.c2", "audio/x-codec2")),
    ]
    blobs = {20: photo, 21: voice}
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop runs in this thread
        stored = pool.submit(asyncio.run, ingest_inline(centre.root, 7, entries, blobs)).result()
    assert stored == (20, 21)
    img = page.locator('#feed li[data-id="7-20"] img')
    expect(img).to_have_count(1)
    page.wait_for_function(
        "document.querySelector('#feed li[data-id=\"7-20\"] img').naturalWidth === 64"
    )
    audio = page.locator('#feed li[data-id="7-21"] audio')
    expect(audio).to_have_count(1)
    wav = page.request.get(f"{centre.url}/dashboard/media/7/21")
    assert wav.status == 200 and wav.headers["content-type"] == "audio/wav"
    assert wav.body()[:4] == b"RIFF" and len(wav.body()) > 8000 * 2 * 1.5  # ~2 s of speech


def test_an_order_typed_on_the_page_is_queued_and_shown_delivered_when_the_receipt_comes(
    page: Page, centre: Centre
) -> None:
    # The member's tracks came through kit 7: offered as a target there, not for kit 8.
    page.select_option('select[name="kit_id"]', "8")
    expect(page.locator("#targets option")).to_have_count(1)  # the whole team only
    page.select_option('select[name="kit_id"]', "7")
    expect(page.locator(f'#targets option[value="{MEMBER}"]')).to_have_count(1)
    page.fill('input[name="target"]', MEMBER)
    page.fill('input[name="text"]', "向东撤离到学校操场")
    page.click('#order button[type="submit"]')
    expect(page.locator("#order-msg")).to_contain_text("指令已排队")
    orders = centre.orders(7)
    assert [(o["target"], o["text"], o["state"]) for o in orders] == [
        (MEMBER, "向东撤离到学校操场", "queued")
    ]
    order_id = orders[0]["order_id"]
    row = page.locator(f'#order-rows tr[data-order="{order_id}"]')
    expect(row).to_contain_text("排队中")
    # The kit's receipt comes back: it took the order over Beidou, the handheld ACKed it.
    receipt = new_item(
        Kind.RECEIPT,
        source="mesh",
        data={"order_id": order_id, "link": "beidou", "member": MEMBER, "delivered": True},
        clock_ok=True,
    )
    assert centre.post_items(7, batch([(30, receipt)]), "beidou") == 200
    expect(row).to_have_attribute("data-state", "delivered")
    expect(row).to_contain_text("套件已确认（经 beidou）")
    expect(row).to_contain_text(f"已送达 {MEMBER}")
