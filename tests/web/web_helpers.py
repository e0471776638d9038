"""Helpers for the web page's tests: configs, a photo, a running page in this process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp.test_utils import TestClient, TestServer
from conftest import endpoint

from config.loader import load, render_default
from config.web.server import KitWeb, make_app
from edge.client import EdgeClient

PASSWORD = "correct horse battery"
REPO = Path(__file__).resolve().parents[2]


def write_config(
    path: Path, root: Path, *, listen: str = "127.0.0.1:0", name: str = "测试套件", extra: str = ""
) -> Path:
    """A kit config at ``path`` whose data and sockets are under ``root`` (shared by copies)."""
    text = render_default(7, name, str(root / "data"), str(root / "run"), "http://127.0.0.1:9")
    text = text.replace('listen = "0.0.0.0:8080"', f'listen = "{listen}"')
    text = text.replace("rate = 1000000 ", "rate = 1000    ")
    path.write_text(text + extra, encoding="utf-8")
    return path


def jpeg(width: int = 640, height: int = 480, label: str = "TEST") -> bytes:
    img = np.zeros((height, width, 3), np.uint8)
    cv2.circle(img, (width // 2, height // 2), min(width, height) // 4, (0, 0, 255), -1)
    cv2.putText(img, label, (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    ok, data = cv2.imencode(".jpg", img)
    assert ok
    return bytes(data.tobytes())


def settle(fds: set[str]) -> None:
    """Wait (up to 2 s) for ZeroMQ's I/O thread to close the connections of closed sockets."""
    for _ in range(100):
        if not set(os.listdir("/proc/self/fd")) - fds:
            return
        time.sleep(0.02)


def edge_status(config: Path) -> dict[str, Any]:
    fds = set(os.listdir("/proc/self/fd"))
    with EdgeClient(endpoint(config), timeout_s=5.0) as client:
        status = client.status()
    settle(fds)
    return status


def edge_get(config: Path, seq: int) -> dict[str, Any]:
    fds = set(os.listdir("/proc/self/fd"))
    with EdgeClient(endpoint(config), timeout_s=5.0) as client:
        got = client.get(seq)
    settle(fds)
    return got


@contextlib.asynccontextmanager
async def page(config: Path) -> AsyncIterator[tuple[KitWeb, TestClient[Any, Any]]]:
    """The web page app on a test server, with its own visitor cookie jar."""
    fds = set(os.listdir("/proc/self/fd"))
    kit = KitWeb(load(config))
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(kit)))
    await client.start_server()
    try:
        yield kit, client
    finally:
        await client.close()
        await kit.edge.close()
        kit.tiles.close()
        # ZeroMQ's I/O thread closes a closed socket's connection a moment later: let it.
        for _ in range(100):
            if not set(os.listdir("/proc/self/fd")) - fds:
                break
            await asyncio.sleep(0.02)


async def csrf(client: TestClient[Any, Any], path: str = "/report") -> str:
    """Open a page (which sets the visitor cookie) and read its CSRF token."""
    text = await (await client.get(path)).text()
    found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', text)
    assert found, text[:500]
    return found.group(1)


async def login(client: TestClient[Any, Any], user: str = "admin", password: str = PASSWORD) -> int:
    token = await csrf(client, "/login")
    response = await client.post(
        "/login",
        data={"csrf": token, "user": user, "password": password},
        allow_redirects=False,
    )
    return response.status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_kit(config: Path, processes: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """`kit run` with only ``processes`` (the supervisor the web page asks for restarts)."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom edge import supervisor\n"
        f"supervisor.PROCESSES = {{k: supervisor.PROCESSES[k] for k in {processes!r}}}\n"
        f"sys.exit(supervisor.run(Path({str(config)!r}), poll_s=0.2))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"kit exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def stop_kit(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()
