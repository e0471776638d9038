"""The kit's companion driver against the simulated Pico (the firmware's own logic) on a pty."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from hygiene import nothing_left_open, run, until  # noqa: F401

from drivers.companion import CompanionError, CompanionEvent, CompanionReader, flash_main
from drivers.power import Battery, PowerConfig
from firmware import kitlink, supervisor
from sim.companion import SimulatedPico

FAST = supervisor.Config(
    watchdog_ms=1000,
    boot_grace_ms=1500,
    off_ms=300,
    max_cycles_per_hour=2,
    long_press_ms=400,
    debounce_ms=20,
    samples=2,
)


class Wired:
    """A simulated Pico and the kit's reader on the two ends of one pty."""

    def __init__(self, config: supervisor.Config = FAST, **pico: int | bool) -> None:
        self.pico = SimulatedPico(config=config, **pico)  # type: ignore[arg-type]
        self.buttons: list[str] = []
        self.events: list[CompanionEvent] = []
        self.reader: CompanionReader | None = None

    async def __aenter__(self) -> Wired:
        await self.pico.start()
        self.reader = CompanionReader(
            self.pico.path,
            heartbeat_s=0.2,
            on_button=self.buttons.append,
            on_event=self.events.append,
        )
        await self.reader.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.reader is not None
        await self.reader.close()
        await self.pico.close()


def test_readings_reach_the_kit_as_power_readings() -> None:
    async def main() -> None:
        async with Wired(mv=7820, ma=-950, temp_dc=312) as w:
            assert w.reader is not None
            await until(lambda: w.reader is not None and w.reader.read().volts is not None)
            reading = w.reader.read()
            assert reading.volts == pytest.approx(7.82)
            assert reading.amps == pytest.approx(-0.95)
            assert reading.on_mains is False and reading.charging is False
            assert reading.percent == pytest.approx(68.0)  # 3.91 V a cell
            assert reading.problems == ()
            battery = Battery(PowerConfig(source="companion"), backend=w.reader)
            level = await battery.read_now()
            assert level is not None and level.volts == pytest.approx(7.82)
            w.pico.mains, w.pico.ma = True, 1500
            await until(lambda: w.reader is not None and w.reader.read().on_mains is True)
            assert w.reader.read().charging is True

    run(main())


def test_a_silent_companion_makes_the_reading_unknown() -> None:
    async def main() -> None:
        async with Wired() as w:
            assert w.reader is not None
            await until(lambda: w.reader is not None and w.reader.read().volts is not None)
            w.reader.heartbeats = False
            await until(lambda: w.reader is not None and w.reader.read().percent is None)
            assert "silent" in w.reader.read().problems[0]

    run(main())


def test_heartbeats_keep_the_pi_on_and_their_absence_power_cycles_it() -> None:
    async def main() -> None:
        async with Wired() as w:
            assert w.reader is not None
            await asyncio.sleep(2.5)  # past the boot grace and two watchdog periods
            assert w.pico.pi_power and len(w.pico.power_log) == 1
            w.reader.heartbeats = False
            await until(lambda: not w.pico.pi_power)
            w.reader.heartbeats = True
            await until(lambda: w.pico.pi_power)
            await until(lambda: any(e.name == "CYCLED" for e in w.events))
            cycled = [e for e in w.events if e.name == "CYCLED"]
            assert cycled[0].arg == "heartbeat"
            assert [on for _, on in w.pico.power_log] == [True, False, True]

    run(main())


def test_button_presses_reach_the_kit() -> None:
    async def main() -> None:
        async with Wired() as w:
            await w.pico.hold(0.1)
            await until(lambda: w.buttons == ["short"])
            await w.pico.hold(0.7)
            await until(lambda: w.buttons == ["short", "long"])
            await asyncio.sleep(0.2)
            assert w.buttons == ["short", "long"]  # a long press is not also a short one

    run(main())


def test_garbage_on_the_line_is_skipped_and_counted() -> None:
    async def main() -> None:
        async with Wired() as w:
            assert w.reader is not None
            await until(lambda: w.reader is not None and w.reader.answers > 0)
            w.pico.inject(b"\x00\xff\xfe noise $1,PWR,1,2*FFFF\n$$$\n")
            w.pico.inject(kitlink.encode(9, "PWR", ("99999999", "0", "0", "0")))  # out of range
            w.pico.inject(b"junk" + kitlink.encode(10, "EVT", ("BTN", "long")))
            await until(lambda: w.buttons == ["long"])
            assert w.reader.malformed >= 3
            answers = w.reader.answers
            await until(lambda: w.reader is not None and w.reader.answers > answers + 1)
            assert w.reader.read().volts == pytest.approx(7.4)

    run(main())


def test_commands_are_acknowledged_or_refused() -> None:
    async def main() -> None:
        async with Wired() as w:
            assert w.reader is not None
            await until(lambda: w.reader is not None and w.reader.answers > 0)
            with pytest.raises(CompanionError, match="refused WDT 99999"):
                await w.reader.set_watchdog(99999)
            await w.reader.set_watchdog(30)
            assert w.pico.supervisor.watchdog_ms == 30000
            await w.reader.power_off_after(0)
            await until(lambda: not w.pico.pi_power)
            with pytest.raises(CompanionError, match="did not answer HB"):
                await w.reader.command("HB", timeout=0.3)  # the Pi is off: nobody hears

    run(main())


def test_power_config_selects_the_companion() -> None:
    reader = PowerConfig(source="companion", companion_device="/dev/ttyUSB1").reader()
    assert isinstance(reader, CompanionReader) and reader.describe == "companion /dev/ttyUSB1"
    with pytest.raises(ValueError, match="companion_device"):
        PowerConfig(source="companion", companion_device="ttyUSB1")


def test_firmware_flash_copies_every_file_then_resets(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[list[str]] = []

    def runner(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    assert flash_main("/dev/null", runner=runner) == 0
    copied = [c[-1] for c in calls if "cp" in c]
    assert copied == [":kitlink.py", ":supervisor.py", ":main.py"]
    assert all(Path(c[-2]).is_file() for c in calls if "cp" in c)
    assert calls[-1][-1] == "reset" and all(c[2] == "/dev/null" for c in calls)


def test_firmware_flash_without_a_board_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    def runner(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "mpremote: no device found\n")

    assert flash_main(None, runner=runner) == 1
    err = capsys.readouterr().err
    assert "未找到运行 MicroPython 的 Pico" in err and "no board running MicroPython found" in err
    assert flash_main("/dev/ttyACM9-missing") == 1
    assert "no device /dev/ttyACM9-missing" in capsys.readouterr().err
