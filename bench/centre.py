"""Centre benchmark: items acknowledged per second from 500 simulated kits, on SQLite, on
PostgreSQL with one worker, and on PostgreSQL with four workers.

The centre runs as the real ``kit centre`` process (``--workers 4`` for the last); a
throwaway PostgreSQL server (with fsync, as SQLite has synchronous=FULL) is started in a
temporary folder. Each simulated kit posts one new item at a time over the IP ingest
(``POST /v1/items``, one [seq, item] per batch, as a kit on a slow link does) and counts
it when the answer acknowledges it; kits share 64 HTTP connections. Counted over
``--seconds`` after a warm-up. Then the dashboard's first render on the SQLite run's data
(500 kits): from navigation to the feed and the kits' map markers drawn, in headless
Chromium, median of ``--rounds``.
Prints progress to stderr and one JSON object as the last line of stdout.
    .venv/bin/python bench/centre.py [--seconds 10] [--kits 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

if not __package__:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from centre.pgserver import PgServer
from edge.item import Kind, Position, new_item, to_wire

CONNECTIONS = 64
WARM_UP_S = 3.0
ROUNDS = 5


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Centre:
    """``kit centre`` in a process, its log in a file."""

    def __init__(
        self, root: Path, kits: int, database: str, workers: int, data: Path | None = None
    ) -> None:
        root.mkdir()
        self.port = free_port()
        config = root / "centre.toml"
        enrolled = "".join(
            f'[[kits]]\nkit_id = {k}\nname = "kit {k}"\n' for k in range(1, kits + 1)
        )
        config.write_text(
            f'data_dir = "{data or root / "data"}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'database = "{database}"\nworkers = {workers}\n{enrolled}',
            encoding="utf-8",
        )
        self.log = root / "centre.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from centre.app import main; sys.exit(main())",
                 "--config", str(config)],
                stderr=log,
            )  # fmt: skip

    async def ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"centre exited:\n{self.log.read_text()}")
            try:
                async with http.get(
                    f"http://127.0.0.1:{self.port}/v1/acks", headers={"Kit-Id": "1"}
                ) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("centre did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(centre: Centre, kits: int, seconds: float) -> float:
    """Items acknowledged per second, counted after the warm-up."""
    wire = to_wire(
        new_item(
            Kind.SITUATION,
            source="web",
            text="三号楼倒塌，被困 4 人",
            position=Position(31.83, 104.46, 650.0),
            data={"count": 4},
            clock_ok=True,
        )
    )
    url = f"http://127.0.0.1:{centre.port}/v1/items"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    counted = 0
    async with aiohttp.ClientSession(connector=connector) as http:
        await centre.ready(http)
        start = time.monotonic() + WARM_UP_S
        end = start + seconds

        async def kit(kit_id: int) -> None:
            nonlocal counted
            headers = {"Kit-Id": str(kit_id), "Content-Type": "application/cbor"}
            seq = 0
            while time.monotonic() < end:
                body = cbor2.dumps([[seq, wire]])
                async with http.post(url, data=body, headers=headers) as resp:
                    answer = cbor2.loads(await resp.read()) if resp.status == 200 else {}
                acked = any(lo <= seq <= hi for lo, hi in answer.get("acks", []))
                if not acked:
                    raise RuntimeError(f"kit {kit_id} seq {seq} not acknowledged: {resp.status}")
                if start <= time.monotonic() <= end:
                    counted += 1
                seq += 1

        await asyncio.gather(*(kit(k) for k in range(1, kits + 1)))
    return counted / seconds


async def measure(root: Path, name: str, kits: int, seconds: float, db: str, workers: int) -> float:
    centre = Centre(root / name, kits, db, workers)
    try:
        return round(await load(centre, kits, seconds), 1)
    finally:
        centre.stop()


def first_render_ms(root: Path, kits: int, rounds: int) -> float:
    """Median ms from navigation to the feed and the kits' markers drawn (logged in)."""
    from playwright.sync_api import sync_playwright

    from config.web.auth import Users

    data = root / "sqlite" / "data"
    Users(data / "dashboard" / "operators.json").set("bench", "bench-password")
    centre = Centre(root / "dashboard", kits, "", 1, data=data)
    times: list[float] = []
    try:
        asyncio.run(_ready(centre))
        url = f"http://127.0.0.1:{centre.port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                page.goto(f"{url}/dashboard/login")
                page.fill('input[name="user"]', "bench")
                page.fill('input[name="password"]', "bench-password")
                page.click('button[type="submit"]')
                page.wait_for_url(f"{url}/dashboard")
                for _ in range(rounds):
                    page.goto(f"{url}/dashboard")
                    page.wait_for_selector("#feed li.item", timeout=60_000)
                    page.wait_for_selector(".marker.kit", timeout=60_000)
                    times.append(float(page.evaluate("performance.now()")))
                context.close()
            finally:
                browser.close()
    finally:
        centre.stop()
    return round(statistics.median(times), 1)


async def _ready(centre: Centre) -> None:
    async with aiohttp.ClientSession() as http:
        await centre.ready(http)


async def main(kits: int, seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "centre", "kits": kits, "path": "POST /v1/items, 1 item"}
    with tempfile.TemporaryDirectory(prefix="kit-bench-centre-") as tmp:
        root = Path(tmp)
        say(f"SQLite, one process: {kits} kits for {seconds:.0f} s …")
        result["ingest_per_s_sqlite"] = await measure(root, "sqlite", kits, seconds, "", 1)
        say(f"dashboard first render, {kits} kits' items, {ROUNDS} rounds …")
        result["dashboard_first_render_ms"] = await asyncio.to_thread(
            first_render_ms, root, kits, ROUNDS
        )
        pg = PgServer()
        try:
            pg.start(fsync=True)
            say(f"PostgreSQL, one worker: {kits} kits for {seconds:.0f} s …")
            url = pg.new_database()
            result["ingest_per_s_pg_1worker"] = await measure(root, "pg1", kits, seconds, url, 1)
            say(f"PostgreSQL, four workers: {kits} kits for {seconds:.0f} s …")
            url = pg.new_database()
            result["ingest_per_s_pg_4workers"] = await measure(root, "pg4", kits, seconds, url, 4)
        finally:
            pg.remove()
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kits", type=int, default=500)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.kits, args.seconds)), ensure_ascii=False))
