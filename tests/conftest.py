"""Shared fixtures: a kit config in a temporary folder, and a running edge daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.loader import render_default
from edge.client import EdgeClient
from edge.errors import EdgeUnavailable

os.environ.setdefault("KIT_CLOCK_SYNCED", "1")


@pytest.fixture
def kit_config(tmp_path: Path) -> Path:
    path = tmp_path / "kit.toml"
    path.write_text(render_default(7, "测试套件 / test kit", "data", "run"))
    return path


def endpoint(config: Path) -> str:
    return f"ipc://{config.parent / 'run' / 'edge'}.sock"


def start_edge(config: Path) -> subprocess.Popen[bytes]:
    """Start `kit edge` and wait until it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "edge", "--config", str(config)],
        stderr=subprocess.PIPE,
    )
    wait_ready(config, proc)
    return proc


def wait_ready(config: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with EdgeClient(endpoint(config), timeout_s=0.2, retries=0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"edge exited with {proc.returncode}: {err}")
            try:
                client.status()
                return
            except EdgeUnavailable:
                continue
    raise RuntimeError("edge did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture
def edge(kit_config: Path) -> Iterator[EdgeClient]:
    proc = start_edge(kit_config)
    try:
        with EdgeClient(endpoint(kit_config), timeout_s=5.0) as client:
            yield client
    finally:
        stop(proc)
