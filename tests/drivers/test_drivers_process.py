"""`kit drivers`: the SOS button files a P0 with the GNSS position; low battery pauses bulk,
then settles, flushes and powers off once; `kit run` with KIT_BACKEND=sim shows every device."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import zmq.asyncio
from conftest import start_edge, stop

from config.loader import parse
from drivers.beidou import BeidouTerminal
from drivers.gnss import GnssReceiver
from drivers.gpio import GpioConfig, GpioPanel
from drivers.power import Battery, Level, PowerConfig
from drivers.process import Drivers
from drivers.tiantong import TiantongModem
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from mesh.config import MeshConfig
from mesh.radio import MeshRadio
from uplink.compact import pack_items
from uplink.frames import MTU_BEIDOU, fragment

KIT_ID = 7

pytestmark = pytest.mark.timeout(90)

PANEL = "[gpio]\nbutton_pin = 17\nlink_led_pin = 5\nqueue_led_pin = 6\nbattery_led_pin = 13\n"
PANEL += "buzzer_pin = 18\nhold_s = 1.0\nshort_press_s = 0.5\n"
POWER = '[power]\nsource = "ina219"\n'
EVERY_DEVICE = {"gnss": True, "battery": True, "panel": True, "beidou": True, "mesh": True}
BASE = '[kit]\nid = 7\nname = "测试套件"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "kit.toml"
    path.write_text(BASE + PANEL + POWER + extra)
    return path


def test_sos_hold_files_a_p0_with_the_gnss_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")
    path = write_config(tmp_path)
    config = parse(path)
    proc = start_edge(path)

    async def main() -> None:
        edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=5.0)
        publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
        drivers = Drivers(config, edge, publisher)
        assert drivers.gnss is not None and drivers.panel is not None
        await drivers.start()
        try:
            deadline = time.monotonic() + 20
            while drivers.last_fix is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert drivers.last_fix is not None, drivers.gnss.state()
            button = drivers.panel.simulated_button
            await button.hold(0.2)  # a short press: status chirp, no SOS
            await asyncio.sleep(0.3)
            assert drivers.sos_sent == []
            await button.hold(1.5)
            deadline = time.monotonic() + 5
            while not drivers.sos_sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(drivers.sos_sent) == 1
            got = await edge.call({"op": "get", "seq": drivers.sos_sent[0]})
            assert (got["kind"], got["priority"], got["state"]) == ("sos", "P0", "ACCEPTED")
            sos = drivers.sos_item()
            position = sos.position
            assert position is not None
            # the SOS fits one 77-byte Beidou message, position and all
            assert len(fragment(KIT_ID, 1, pack_items([(1, sos)]), MTU_BEIDOU)) == 1
            assert abs(position.lat - 30.6586) < 0.01 and abs(position.lon - 104.0647) < 0.01
            assert drivers.panel.state().detail["sos_holds"] == 1
        finally:
            await drivers.close()
            publisher.close()
            await edge.close()

    try:
        asyncio.run(main())
    finally:
        stop(proc)


def test_low_battery_pauses_bulk_then_flushes_and_powers_off_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")
    path = write_config(tmp_path)
    config = parse(path)
    proc = start_edge(path)
    commands: list[tuple[str, ...]] = []

    async def power_off(command: Sequence[str]) -> int:
        commands.append(tuple(command))
        return 0

    async def main() -> list[str]:
        ctx = zmq.asyncio.Context.instance()
        edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=5.0)
        publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
        modes = bus.Subscriber(ctx, config.endpoint(bus.SUB_SOCKET), topics.POWER_MODE)
        drivers = Drivers(config, edge, publisher, shutdown_runner=power_off)
        seen: list[str] = []
        try:
            await asyncio.sleep(0.3)  # the subscription reaches the proxy
            for percent in (60.0, 28.0, 27.0, 9.0, 8.0, 7.0):
                await drivers._on_level(Level(percent, 7.2, False, 1.0))
            deadline = time.monotonic() + 10
            while not commands and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            while True:
                try:
                    _, change = await asyncio.wait_for(modes.receive(), 0.5)
                except TimeoutError:
                    break
                seen.append(change.mode)
        finally:
            await drivers.close()
            modes.close()
            publisher.close()
            await edge.close()
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        stop(proc)
    # save at 28 %, critical at 9 %, then the shutdown's own announcement; once each.
    assert seen == ["save", "critical", "critical"]
    assert commands == [tuple(config.power.shutdown_command)]
    # flushed: the WAL was folded into the database before the power-off
    wal = tmp_path / "data" / "outbox.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_kit_run_with_simulated_devices_shows_every_device_in_kit_status(tmp_path: Path) -> None:
    link = '[[links]]\nkind = "beidou"\nname = "beidou"\ncentre_id = "0300001"\n'
    path = write_config(tmp_path, "[mesh]\nenabled = true\n" + link)
    env = {**os.environ, "KIT_BACKEND": "sim"}
    run = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            out = subprocess.run(
                [sys.executable, "-m", "edge.cli", "status", "--json", "--config", str(path)],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0:
                status = json.loads(out.stdout)
                devices = status.get("devices") or {}
                assert isinstance(devices, dict)
                if set(EVERY_DEVICE) <= set(devices) and all(d["online"] for d in devices.values()):
                    break
            time.sleep(0.5)
        devices = status["devices"]
        assert isinstance(devices, dict)
        assert {name: d["online"] for name, d in devices.items()} == EVERY_DEVICE, devices
        assert status["links"]["beidou"]["online"] is True  # type: ignore[index]
        assert status["position"] is not None and status["battery"] is not None
        table = subprocess.run(
            [sys.executable, "-m", "edge.cli", "status", "--config", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for name in EVERY_DEVICE:
            assert f"    {name}" in table
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise


def test_every_device_reports_its_state_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Owners publish states from the first second: a device not yet started says so.
    monkeypatch.setenv("KIT_BACKEND", "sim")

    async def nothing() -> None:
        return None

    devices = [
        BeidouTerminal(),
        TiantongModem(),
        GnssReceiver(),
        Battery(PowerConfig()),
        GpioPanel(GpioConfig(button_pin=17), on_sos=nothing),
        MeshRadio(MeshConfig(enabled=True)),
    ]
    for device in devices:
        state = device.state()
        assert state.name == device.name and not state.online, state
        assert state.summary_zh and state.summary_en
