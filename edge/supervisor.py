"""`kit run`: start the kit's processes and restart any that dies (systemd does this on the Pi)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from config.loader import load
from config.web.restart import take_requests

log = logging.getLogger("kit.run")

# The kit's processes, each a `kit` subcommand. Later issues add uplink, mesh, media, web.
PROCESSES: dict[str, list[str]] = {
    "edge": ["edge"],
    "uplink": ["uplink"],
    "drivers": ["drivers"],
    "mesh": ["mesh"],
    "media": ["media"],
    "web": ["web"],
}

MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 10.0


@dataclass
class Child:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)


def _start(child: Child, config: Path) -> None:
    cmd = [sys.executable, "-m", "edge.cli", *child.args, "--config", str(config)]
    child.proc = subprocess.Popen(cmd)
    child.started = time.monotonic()
    log.info("started %s (pid %d)", child.name, child.proc.pid)


def run(config: Path, poll_s: float = 0.5) -> int:
    """Run every process until SIGINT/SIGTERM; a crashed one restarts with growing back-off."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children = [Child(name, args) for name, args in PROCESSES.items()]
    runtime_dir = load(config).config.paths.runtime_dir
    for child in children:
        _start(child, config)
    while True:
        time.sleep(poll_s)
        if stopping:  # children got the same Ctrl-C: their exit now is no crash
            break
        restart = take_requests(runtime_dir)  # the web page changed their config
        for child in children:
            if child.name in restart and child.proc is not None and child.proc.poll() is None:
                log.info("restarting %s: its config changed", child.name)
                child.proc.terminate()
                child.restarts = 0
        now = time.monotonic()
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                continue
            if child.proc is not None:
                code = child.proc.returncode
                # A process that ran a while before dying gets a fresh back-off.
                if now - child.started > 60:
                    child.restarts = 0
                delay = min(MAX_BACKOFF_S, 0.5 * 2**child.restarts)
                log.error("%s exited with %s; restarting in %.1f s", child.name, code, delay)
                child.proc = None
                child.restarts += 1
                child.next_start = now + delay
            if now >= child.next_start:
                _start(child, config)
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %.0f s; killing it", child.name, STOP_GRACE_S)
            child.proc.kill()
            child.proc.wait()
    log.info("all processes stopped")
    return 0
