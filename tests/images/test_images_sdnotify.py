"""The kit's processes tell systemd they are ready, alive and stopping (edge/sdnotify.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hygiene import nothing_left_open, run, until  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st

from edge.sdnotify import Notifier, _address, _watchdog_s, systemd_notify

KIT = [sys.executable, "-m", "edge.cli"]


@contextlib.contextmanager
def notify_socket(path: str) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's (a path, or "\\0name" for abstract)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float = 20.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def test_ready_status_and_stopping_reach_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        try:
            notifier.ready("edge ready")
            notifier.status("正在发送 / sending")
            notifier.watchdog()
            notifier.stopping()
            notifier.stopping()  # sent once only
        finally:
            notifier.close()
        assert receive(sock) == "READY=1\nSTATUS=edge ready"
        assert receive(sock) == "STATUS=正在发送 / sending"
        assert receive(sock) == "WATCHDOG=1"
        assert receive(sock) == "STOPPING=1"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)


def test_an_abstract_socket_name_with_a_leading_at_is_used() -> None:
    name = f"kit-test-{uuid.uuid4().hex}"
    with notify_socket("\0" + name) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            notifier.ready()
        finally:
            notifier.close()
        assert receive(sock) == "READY=1"


@pytest.mark.parametrize("value", ["", "relative/notify", "notify"])
def test_without_a_usable_notify_socket_nothing_is_sent(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "200000"})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.close()


def test_a_notify_socket_nobody_reads_drops_messages_instead_of_blocking(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        try:
            sent = [notifier.send("WATCHDOG=1") for _ in range(1000)]
        finally:
            notifier.close()
        assert sent[0] is True and sent[-1] is False  # the queue filled; no call blocked
        assert receive(sock) == "WATCHDOG=1"


def test_a_vanished_notify_socket_does_not_break_the_process(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.send("READY=1") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("env", "seconds"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.2),
        ({"WATCHDOG_USEC": "14000000", "WATCHDOG_PID": str(os.getpid())}, 14.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": " 200000"}, None),
        ({"WATCHDOG_USEC": "9" * 400}, None),  # past uint64: not systemd's
        ({}, None),
    ],
)
def test_watchdog_interval_from_the_environment(env: dict[str, str], seconds: float | None) -> None:
    assert _watchdog_s(env) == seconds


@given(st.text(), st.text())
def test_any_environment_value_gives_an_interval_or_none(usec: str, pid: str) -> None:
    seconds = _watchdog_s({"WATCHDOG_USEC": usec, "WATCHDOG_PID": pid})
    assert seconds is None or seconds > 0


@given(st.text())
def test_any_notify_socket_value_gives_an_address_or_none(value: str) -> None:
    address = _address(value)
    assert address is None or address.startswith(("/", "\0"))


def test_pings_stop_while_the_event_loop_is_stuck_and_resume_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "notify")

    async def main(sock: socket.socket) -> None:
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        pinger = asyncio.create_task(notifier.ping_while_healthy())
        try:
            await asyncio.sleep(0)  # the pinger waits its 0.1 s
            time.sleep(0.4)  # a stuck call blocks the loop well past the interval
            await until(lambda: "watchdog ping withheld" in caplog.text)
            with pytest.raises(BlockingIOError):
                sock.recv(4096)  # the late wake-up sent nothing
            pings: list[bytes] = []

            def pinged() -> bool:
                with contextlib.suppress(BlockingIOError):
                    pings.append(sock.recv(4096))
                return bool(pings)

            await until(pinged)
            assert pings == [b"WATCHDOG=1"]
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
            notifier.close()

    caplog.set_level(logging.WARNING, "kit.sdnotify")
    with notify_socket(path) as sock:
        sock.setblocking(False)
        run(main(sock))


def test_systemd_notify_sends_stopping_when_stop_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    async def main() -> None:
        stop = asyncio.Event()
        async with systemd_notify(stop) as notifier:
            notifier.ready()
            stop.set()

    with notify_socket(path) as sock:
        run(main())
        assert receive(sock) == "READY=1"
        assert receive(sock) == "STOPPING=1"


def start(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_extra, "KIT_BACKEND": "sim"}
    return subprocess.Popen([*KIT, *args], env=env, stderr=subprocess.PIPE)


def stop_process(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=20)
    return err.decode(errors="replace")


def test_kit_edge_is_ready_once_it_serves_pings_the_watchdog_and_says_stopping(
    kit_config: Path, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path) as sock:
        proc = start(
            ["edge", "--config", str(kit_config)],
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
        )
        try:
            assert receive(sock) == "READY=1\nSTATUS=edge ready"
            status = subprocess.run(  # serving when it said so: the first call is answered
                [*KIT, "status", "--json", "--config", str(kit_config)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert json.loads(status.stdout)["edge"]["running"] is True, status.stderr
            assert [receive(sock) for _ in range(3)] == ["WATCHDOG=1"] * 3
            proc.send_signal(signal.SIGTERM)
            messages = [receive(sock)]
            while messages[-1] == "WATCHDOG=1":
                messages.append(receive(sock))
            assert messages[-1] == "STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            err = stop_process(proc)
        assert "Traceback" not in err, err


@pytest.mark.parametrize(
    ("args", "status"),
    [(["uplink"], "uplink running"), (["web", "--listen", "127.0.0.1:0"], "web on :")],
)
def test_service_processes_notify_ready_and_stopping(
    kit_config: Path, tmp_path: Path, args: list[str], status: str
) -> None:
    path = str(tmp_path / "notify")
    with notify_socket(path) as sock:
        proc = start([*args, "--config", str(kit_config)], {"NOTIFY_SOCKET": path})
        try:
            ready = receive(sock)
            assert ready.startswith("READY=1\nSTATUS=" + status), ready
            proc.send_signal(signal.SIGTERM)
            assert receive(sock) == "STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            err = stop_process(proc)
        assert "Traceback" not in err, err
