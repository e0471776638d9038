"""The companion's power button held: the drivers process shuts the kit down cleanly
(settle, flush, power-off command), once; a short press does not."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from conftest import start_edge, stop
from hygiene import nothing_left_open, run, until  # noqa: F401

from config.loader import parse
from drivers.companion import CompanionReader
from drivers.process import Drivers
from edge import bus
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from firmware import supervisor
from sim.companion import SimulatedPico

# The process-wide ZeroMQ context (and its I/O thread) outlives every test: make it now.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)
FAST = supervisor.Config(long_press_ms=400, debounce_ms=20, samples=2)


def test_holding_the_companions_power_button_shuts_the_kit_down_once(tmp_path: Path) -> None:
    pico = SimulatedPico(config=FAST)
    commands: list[tuple[str, ...]] = []

    async def power_off(command: Sequence[str]) -> int:
        commands.append(tuple(command))
        return 0

    async def main() -> None:
        await pico.start()
        path = tmp_path / "kit.toml"
        path.write_text(
            '[kit]\nid = 7\nname = "测试套件"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
            f'[power]\nsource = "companion"\ncompanion_device = "{pico.path}"\n'
            "[gnss]\nenabled = false\n"
        )
        config = parse(path)
        proc = start_edge(path)
        edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=5.0)
        publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
        drivers = Drivers(config, edge, publisher, shutdown_runner=power_off)
        try:
            assert drivers.battery is not None
            assert isinstance(drivers.battery.source, CompanionReader)
            await drivers.start()
            await pico.hold(0.1)  # a short press: nothing
            await asyncio.sleep(1.0)
            assert commands == []
            await pico.hold(0.7)
            await until(lambda: bool(commands), timeout=30)
            await pico.hold(0.7)  # held again while shutting down: still once
            await asyncio.sleep(1.0)
            assert commands == [tuple(config.power.shutdown_command)]
        finally:
            await drivers.close()
            for device in drivers.devices:
                await device.close()
            publisher.close()
            await edge.close()
            stop(proc)
            await pico.close()

    run(main(), 60)


pytestmark = pytest.mark.timeout(90)
