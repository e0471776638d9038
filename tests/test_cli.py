"""The `kit` command as a user runs it: run, report, status, clean stop, restart on crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import endpoint, wait_ready

from edge.client import EdgeClient

KIT = [sys.executable, "-m", "edge.cli"]


def kit(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return subprocess.run([*KIT, *args, *extra], capture_output=True, text=True, timeout=60)


@pytest.fixture
def running_kit(kit_config: Path):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([*KIT, "run", "--config", str(kit_config)], stderr=subprocess.PIPE)
    try:
        wait_ready(kit_config, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
        if proc.stderr:
            proc.stderr.close()


def test_report_then_status_json(running_kit: subprocess.Popen[bytes], kit_config: Path) -> None:
    r = kit(
        "report",
        "sos",
        "--text",
        "三人被困",
        "--position",
        "30.657,104.066",
        "--count",
        "3",
        "--json",
        config=kit_config,
    )
    assert r.returncode == 0, r.stderr
    filed = json.loads(r.stdout)
    assert (filed["kind"], filed["priority"], filed["state"]) == ("sos", "P0", "ACCEPTED")
    r = kit("report", "situation", "-t", "桥梁冲毁", config=kit_config)
    assert r.returncode == 0 and r.stdout.startswith("已受理 / accepted: #2 P1 situation")
    status = json.loads(kit("status", "--json", config=kit_config).stdout)
    assert status["edge"]["running"] is True
    assert status["queued"] == {"P0": 1, "P1": 1, "P2": 0, "P3": 0, "P4": 0}
    assert status["kit"] == {"id": 7, "name": "测试套件 / test kit"}
    table = kit("status", config=kit_config).stdout
    assert "待发送 / queued   P0:1  P1:1" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "sos", "--position", "123,0"], "latitude out of range (-90..90): 123.0"),
        (["report", "situation"], "the item has no content"),
        (["report", "rumour", "-t", "x"], "invalid kind 'rumour'"),
        (["report", "message", "-t", "x", "--priority", "P7"], "invalid priority 'P7'"),
        (["report", "casualties", "-n", "-4"], "invalid count: -4"),
    ],
)
def test_bad_report_gets_one_line_error_and_nothing_is_filed(
    running_kit: subprocess.Popen[bytes], kit_config: Path, args: list[str], message: str
) -> None:
    r = kit(*args, config=kit_config)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("错误 / error: ") and message in lines[0]
    with EdgeClient(endpoint(kit_config)) as client:
        assert sum(client.status()["queued"].values()) == 0


def test_non_utf8_text_from_the_shell_is_refused(
    running_kit: subprocess.Popen[bytes], kit_config: Path
) -> None:
    r = subprocess.run(
        [
            *map(os.fsencode, KIT),
            b"report",
            b"message",
            b"-t",
            b"\xff\xfe",
            b"--config",
            os.fsencode(kit_config),
        ],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "text is not valid UTF-8" in r.stderr.decode()


def test_status_without_a_running_kit_says_so(kit_config: Path) -> None:
    r = kit("status", "--json", config=kit_config)
    assert r.returncode == 1
    assert json.loads(r.stdout)["edge"]["running"] is False
    assert "start it with `kit run`" in r.stderr


def test_kit_run_restarts_a_crashed_edge_and_stops_cleanly(
    running_kit: subprocess.Popen[bytes], kit_config: Path
) -> None:
    with EdgeClient(endpoint(kit_config)) as client:
        first_pid = client.status()["pid"]
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                pid = client.status()["pid"]
                if pid != first_pid:
                    break
            except Exception:
                time.sleep(0.1)
        assert pid != first_pid
    running_kit.send_signal(signal.SIGINT)
    assert running_kit.wait(20) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone too
