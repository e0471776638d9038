"""Web page benchmark: status page weight, first render and report submission in headless Chromium.

Starts a kit (edge + web, real processes) in a temporary folder, feeds its bus a simulated
link, battery, GNSS fix and team roster (what `kit uplink`, `kit drivers` and `kit mesh`
would publish), and drives Debian's /usr/bin/chromium with Playwright. Prints progress to
stderr and one JSON object as the last line of stdout. With ``--screenshots DIR`` it also
saves the main pages (zh) as PNG files for the README.
    .venv/bin/python bench/webpage.py [--rounds 5] [--screenshots docs/screenshots]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")
if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from playwright.sync_api import FilePayload, Page, ViewportSize, sync_playwright

from config.loader import render_default
from config.web.auth import Users
from edge import bus, topics

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench password 1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
PHONE: ViewportSize = {"width": 412, "height": 915}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo() -> bytes:
    img = np.full((1080, 1440, 3), (60, 90, 120), np.uint8)
    cv2.rectangle(img, (300, 250), (1100, 900), (40, 40, 160), -1)
    cv2.putText(img, "BRIDGE", (420, 620), cv2.FONT_HERSHEY_SIMPLEX, 5, (255, 255, 255), 12)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return bytes(data.tobytes())


def start_kit(root: Path, port: int) -> tuple[Path, subprocess.Popen[bytes]]:
    config = root / "kit.toml"
    text = render_default(7, "雅安-救援一队-07", "data", "run", "http://127.0.0.1:9")
    config.write_text(text.replace('listen = "0.0.0.0:8080"', f'listen = "127.0.0.1:{port}"'))
    Users(root / "data" / "web" / "users.json").set("admin", PASSWORD)
    script = (
        "import sys\nfrom pathlib import Path\nfrom edge import supervisor\n"
        "supervisor.PROCESSES = {k: supervisor.PROCESSES[k] for k in ('edge', 'web')}\n"
        f"sys.exit(supervisor.run(Path({str(config)!r})))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return config, proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the kit's web page did not start")


def feed_bus(root: Path, stop: threading.Event) -> None:
    """What the other processes would publish: a link, the battery, a fix, the team."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{root / 'run' / bus.PUB_SOCKET}.sock")
    now_ms = int(time.time() * 1000)
    team = topics.TeamRoster(
        [
            topics.TeamMember(
                "!a1b2c3d4", "张伟", "ZW", 30.6632, 104.0571, now_ms, now_ms, 76, 6.5
            ),
            topics.TeamMember(
                "!0badf00d", "李娜", "LN", 30.6571, 104.0663, now_ms, now_ms, 41, -3.0
            ),
        ]
    )
    messages: list[tuple[Any, Any]] = [
        (topics.LINK_STATE, topics.LinkState("vsat", "ip", True, 254_000.0, 0.62)),
        (topics.LINK_STATE, topics.LinkState("beidou", "beidou", True, 1.3, 10.0)),
        (topics.LINK_STATE, topics.LinkState("tiantong-sms", "sms", False, 14.0, 20.0)),
        (topics.BATTERY_LEVEL, topics.BatteryLevel(68.0, 12.4, False, 31.5)),
        (topics.POSITION_FIX, topics.PositionFix(30.6601, 104.0602, 512.0, now_ms, 14)),
        (topics.TEAM_ROSTER, team),
    ]
    try:
        while not stop.is_set():
            for topic, message in messages:
                sock.send_multipart(bus.encode(topic, message))
            stop.wait(1.0)
    finally:
        sock.close(0)


def status_weight(page: Page, url: str) -> int:
    """Bytes of every response of a first load of the status page (the event stream left out)."""
    sizes: list[int] = []

    def on_response(response: Any) -> None:
        if "/events" not in response.url:
            sizes.append(len(response.body()))

    page.on("response", on_response)
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)
    page.remove_listener("response", on_response)
    return sum(sizes)


def first_render_ms(page: Page, url: str) -> float:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => document.getElementById('q-P0').textContent !== '–'")
    paint = page.evaluate(
        "() => { const p = performance.getEntriesByName('first-contentful-paint')[0];"
        " const n = performance.getEntriesByType('navigation')[0];"
        " return p ? p.startTime : n.domContentLoadedEventEnd; }"
    )
    return float(paint)


def submit_ms(page: Page, url: str, jpeg: bytes) -> float:
    page.goto(f"{url}/report", wait_until="load")
    page.click("label.kind-situation")
    page.fill('textarea[name="text"]', "桥梁垮塌，道路中断")
    page.click("#pos-kit")
    page.wait_for_function("() => document.getElementById('lat').value !== ''")
    upload: FilePayload = {"name": "bridge.jpg", "mimeType": "image/jpeg", "buffer": jpeg}
    page.set_input_files("#photos", files=[upload])
    started = time.perf_counter()
    page.click("#submit")
    page.wait_for_function(
        "() => document.getElementById('form-msg').textContent.startsWith('已受理')"
    )
    return (time.perf_counter() - started) * 1000


def screenshots(browser: Any, url: str, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=PHONE, locale="zh-CN", device_scale_factor=1)
    page = context.new_page()
    made = []
    page.goto(f"{url}/", wait_until="load")
    page.wait_for_function("() => document.querySelectorAll('#link-rows tr').length >= 3")
    page.screenshot(path=str(folder / "status.png"), full_page=True)
    page.goto(f"{url}/report", wait_until="load")
    page.click("label.kind-trapped")
    page.fill('input[name="count"]', "3")
    page.fill('textarea[name="text"]', "楼房倒塌，三人被困，需要破拆工具")
    page.click("#pos-map")
    page.locator("#pick-map").click()
    page.screenshot(path=str(folder / "report.png"), full_page=True)
    page.goto(f"{url}/map", wait_until="load")
    page.wait_for_selector(".marker.member")
    page.wait_for_timeout(500)
    page.screenshot(path=str(folder / "map.png"))
    page.goto(f"{url}/login", wait_until="load")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{url}/config")
    page.click('details[id="g-kit"] > summary')
    page.fill('input[name="kit.id"]', "0")
    page.click("#save")
    page.wait_for_selector(".field-error")
    page.screenshot(path=str(folder / "config.png"))
    context.close()
    made += ["status.png", "report.png", "map.png", "config.png"]
    return [str(folder / m) for m in made]


def main(rounds: int, shots: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "webpage", "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="kit-bench-web-") as tmp:
        root = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        say("starting the kit (edge + web) …")
        config, proc = start_kit(root, port)
        stop = threading.Event()
        feeder = threading.Thread(target=feed_bus, args=(root, stop), daemon=True)
        feeder.start()
        try:
            time.sleep(2.5)  # the feed reaches the edge and the page's status
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                try:
                    weights, renders, submits = [], [], []
                    jpeg = photo()
                    for i in range(rounds):
                        say(f"round {i + 1}/{rounds} …")
                        context = browser.new_context(viewport=PHONE, locale="zh-CN")
                        page = context.new_page()
                        weights.append(status_weight(page, url))
                        context.close()
                        context = browser.new_context(viewport=PHONE, locale="zh-CN")
                        page = context.new_page()
                        renders.append(first_render_ms(page, f"{url}/"))
                        submits.append(submit_ms(page, url, jpeg))
                        context.close()
                    result["page_weight_kb"] = round(max(weights) / 1024, 1)
                    result["first_render_ms"] = round(statistics.median(renders), 1)
                    result["report_submit_ms"] = round(statistics.median(submits), 1)
                    result["photo_bytes"] = len(jpeg)
                    if shots is not None:
                        say(f"screenshots → {shots} …")
                        result["screenshots"] = screenshots(browser, url, shots)
                finally:
                    browser.close()
        finally:
            stop.set()
            feeder.join()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            del config
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, default=None)
    args = ap.parse_args()
    print(json.dumps(main(args.rounds, args.screenshots), ensure_ascii=False))
