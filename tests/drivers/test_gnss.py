"""The GNSS driver against a simulated receiver on a real pty (and through real gpsd)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from drivers.backend import BadBackend
from drivers.gnss import (
    ClockNotSet,
    Fix,
    FixQuality,
    GnssReceiver,
    Gpsd,
    chrony_conf,
    gpsd_default,
    set_system_clock,
)
from drivers.serialio import Backoff
from sim.gnss import Circle, Fault, SimulatedReceiver, Timing, Waypoints

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

SPEED = 10.0  # ten epochs a real second
FAST = Backoff(first_s=0.05, max_s=0.2)
QUICK = Timing(time_s=0.5, acquire_s=1.0, boot_s=10.0)  # emulated seconds
CHENGDU = (30.6586, 104.0647)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def receiver(backend: Any, **kw: Any) -> GnssReceiver:
    options: dict[str, Any] = {"backoff": FAST, "silence_s": 0.5, "synchronised": lambda: False}
    return GnssReceiver(backend, **(options | kw))


def simulated(track: Any = None, **kw: Any) -> SimulatedReceiver:
    options: dict[str, Any] = {"speed": SPEED, "timing": QUICK, "start": CHENGDU}
    return SimulatedReceiver(track, **(options | kw))


# --- the fix -----------------------------------------------------------------------------


def test_the_fix_follows_the_track_with_satellites_per_constellation() -> None:
    async def main() -> None:
        fixes: list[Fix] = []
        async with (
            simulated(Circle(*CHENGDU, radius_m=100, speed_mps=15)) as sim,
            receiver(sim, on_fix=fixes.append) as gnss,
        ):
            assert not gnss.fix.valid
            await until(lambda: gnss.fix.valid)
            await asyncio.sleep(0.5)
            fix = gnss.fix
            sent = {o.time_ms: o for o in sim.sent}
            assert fix.time_ms in sent
            assert fix.lat == pytest.approx(sent[fix.time_ms].lat, abs=1e-6)
            assert fix.lon == pytest.approx(sent[fix.time_ms].lon, abs=1e-6)
            assert fix.quality is FixQuality.FIX_3D
            assert (fix.alt_m, fix.satellites_used, fix.hdop) == (505.0, 15, 0.9)
            assert fix.used == {"GPS": 7, "BeiDou": 8}
            assert fix.in_view == {"GPS": 10, "BeiDou": 12}
            assert fix.speed_mps == pytest.approx(15.0, abs=0.01)
            assert fix.position is not None and fix.position.accuracy_m == pytest.approx(4.5)
            state = gnss.state()
            assert (state.name, state.kind, state.online) == ("gnss", "gnss", True)
            assert state.summary == "3D 定位，15 颗卫星 / 3D fix, 15 satellites"
            assert state.detail["in_view_beidou"] == 12 and state.detail["used_gps"] == 7
            assert state.detail["quality"] == "3D"
            assert fixes[0].valid  # the no-fix epochs before it were not reported

    run(main())


@pytest.mark.parametrize("talker", ["GP", "GB", "BD"])
def test_single_constellation_talkers_are_read_alike(talker: str) -> None:
    async def main() -> None:
        track = Waypoints([(30.0, 104.0), (30.001, 104.0), (30.001, 104.001)], speed_mps=10)
        async with simulated(track, talker=talker) as sim, receiver(sim) as gnss:
            await until(lambda: gnss.fix.valid)
            system = "GPS" if talker == "GP" else "BeiDou"
            assert set(gnss.fix.in_view) == {system}
            assert gnss.fix.lat is not None and 30.0 <= gnss.fix.lat <= 30.001

    run(main())


def test_fix_loss_is_reported_at_once_and_the_recovery_too() -> None:
    async def main() -> None:
        fixes: list[Fix] = []
        async with simulated() as sim, receiver(sim, on_fix=fixes.append) as gnss:
            await until(lambda: gnss.fix.valid)
            sim.lose_fix()
            await until(lambda: not gnss.fix.valid)
            assert not fixes[-1].valid
            state = gnss.state()
            assert state.online  # the receiver still talks
            assert state.summary == "无定位：卫星信号不足 / no fix: not enough satellites"
            sim.regain_fix()
            await until(lambda: gnss.fix.valid)
            assert fixes[-1].valid
            assert [f.valid for f in fixes].count(False) == 1

    run(main())


def test_a_module_reboot_is_silence_then_a_cold_start() -> None:
    async def main() -> None:
        async with simulated() as sim, receiver(sim) as gnss:
            await until(lambda: gnss.fix.valid)
            sim.reboot()  # 10 emulated s of silence: 1 s here, twice the driver's silence_s
            await until(lambda: not gnss.online, timeout=2.0)
            assert not gnss.fix.valid
            assert gnss.state().summary == "无定位：0.5 秒无数据 / no fix: no data for 0.5 s"
            await until(lambda: gnss.online, timeout=2.0)
            assert not gnss.fix.valid  # cold start: no fix yet
            await until(lambda: gnss.fix.valid, timeout=2.0)

    run(main())


def test_on_fix_is_called_about_once_a_second_not_on_every_sentence() -> None:
    async def main() -> None:
        fixes: list[Fix] = []
        async with (
            simulated(speed=30.0) as sim,
            receiver(sim, on_fix=fixes.append) as gnss,
        ):
            await until(lambda: gnss.fix.valid)
            start = len(sim.sent)
            await asyncio.sleep(2.2)
            assert len(sim.sent) - start >= 40
            assert 2 <= len(fixes) <= 4

    run(main())


def test_line_damage_is_counted_and_the_fix_carries_on() -> None:
    async def main() -> None:
        async with simulated() as sim, receiver(sim) as gnss:
            await until(lambda: gnss.fix.valid)
            for fault in Fault:
                sim.inject(fault)
            await until(lambda: {"garbage_bytes", "truncated", "bad_checksum"} <= set(gnss.dropped))
            assert gnss.dropped["garbage_bytes"] == 32
            await asyncio.sleep(0.3)
            assert gnss.fix.valid and gnss.online

    run(main())


def test_the_receiver_reopens_its_path_when_unplugged_and_plugged(tmp_path: Path) -> None:
    link = tmp_path / "ttyGNSS"

    async def main() -> None:
        async with (
            simulated(link=link) as sim,
            GnssReceiver(str(link), backoff=FAST, silence_s=0.5) as gnss,
        ):
            await until(lambda: gnss.fix.valid)
            await sim.unplug()
            await until(lambda: not gnss.fix.valid and not gnss.online)
            assert gnss.state().summary == "无定位：设备断开 / no fix: device disconnected"
            await sim.plug()
            await until(lambda: gnss.fix.valid, timeout=4.0)
            assert gnss.reconnects == 1

    run(main())


# --- the clock ---------------------------------------------------------------------------


def test_a_gnss_clock_90_s_ahead_is_measured_and_the_system_clock_is_not_ok() -> None:
    async def main() -> None:
        async with simulated() as sim, receiver(sim) as gnss:
            sim.clock_offset_s = 90.0
            assert gnss.clock_offset_s is None and gnss.gnss_time_ms() is None
            await until(lambda: gnss.clock_offset_s is not None)
            await asyncio.sleep(0.3)
            assert gnss.clock_offset_s == pytest.approx(90.0, abs=0.3)
            assert not gnss.clock_ok
            assert gnss.gnss_time_ms() == pytest.approx(time.time() * 1000 + 90_000, abs=300)
            assert gnss.state().detail["clock_ok"] is False
            sim.clock_offset_s = 0.0
            await asyncio.sleep(1.0)  # the median forgets 90 s within 15 epochs
            assert gnss.clock_ok

    run(main())


def test_the_fallback_steps_the_clock_once_after_a_steady_3d_fix() -> None:
    async def main() -> None:
        steps: list[float] = []
        async with simulated() as sim:
            sim.clock_offset_s = 90.0
            async with receiver(sim, clock_setter=steps.append, clock_steady_s=0.5) as gnss:
                await until(lambda: bool(steps), timeout=4.0)
                assert steps[0] == pytest.approx(time.time() + 90.0, abs=0.5)
                await asyncio.sleep(1.0)
                assert len(steps) == 1 and gnss.clock_steps == 1  # once, not on every epoch

    run(main())


def test_the_fallback_leaves_a_synchronised_clock_alone() -> None:
    async def main() -> None:
        steps: list[float] = []
        async with simulated() as sim:
            sim.clock_offset_s = 90.0
            async with receiver(
                sim, clock_setter=steps.append, clock_steady_s=0.3, synchronised=lambda: True
            ) as gnss:
                await until(lambda: gnss.clock_offset_s is not None)
                await asyncio.sleep(1.0)
                assert steps == [] and gnss.clock_ok

    run(main())


def test_without_cap_sys_time_the_real_setter_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(clock: int, value: float) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(time, "clock_settime", refuse)
    with pytest.raises(ClockNotSet) as err:
        set_system_clock(1_800_000_000.0)
    assert str(err.value) == (
        "无权设置系统时钟：需要 CAP_SYS_TIME（以 root 运行或授予该权限） / not allowed to set "
        "the system clock: needs CAP_SYS_TIME (run as root or grant the capability)"
    )


# --- gpsd --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(
    shutil.which("gpsd") is None, reason="gpsd not installed (Debian packages gpsd, gpsd-clients)"
)
def test_the_fix_comes_through_real_gpsd_reading_the_simulated_receiver(tmp_path: Path) -> None:
    async def main() -> None:
        port = free_port()
        async with simulated(Circle(*CHENGDU)) as sim:
            gpsd = subprocess.Popen(
                ["gpsd", "-N", "-n", "-b", "-S", str(port), "-F", str(tmp_path / "sock"), sim.path],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                async with receiver(Gpsd("127.0.0.1", port)) as gnss:
                    await until(lambda: gnss.fix.valid, timeout=8.0)
                    # GSV comes after RMC and GGA: the next epoch has it
                    await until(lambda: gnss.fix.in_view == {"GPS": 10, "BeiDou": 12})
                    assert gnss.state().detail["source"] == f"gpsd://127.0.0.1:{port}"
                    gpsd.terminate()
                    await asyncio.to_thread(gpsd.wait, 5)
                    await until(lambda: not gnss.online)
            finally:
                if gpsd.poll() is None:
                    gpsd.kill()
                gpsd.wait()

    run(main(), timeout=30)


# --- backends and image files ------------------------------------------------------------


def test_kit_backend_chooses_between_the_images_gpsd_and_a_simulated_receiver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KIT_BACKEND", raising=False)
    assert GnssReceiver().backend == Gpsd("127.0.0.1", 2947)
    monkeypatch.setenv("KIT_BACKEND", "sim")
    assert isinstance(GnssReceiver().backend, SimulatedReceiver)
    monkeypatch.setenv("KIT_BACKEND", "fake")
    with pytest.raises(BadBackend):
        GnssReceiver()


def test_gpsd_defaults_start_reading_at_boot_and_never_write_to_the_receiver() -> None:
    text = gpsd_default("/dev/serial/by-id/usb-u-blox_GNSS-if00")
    assert 'DEVICES="/dev/serial/by-id/usb-u-blox_GNSS-if00"' in text.splitlines()
    assert 'GPSD_OPTIONS="-n -b"' in text.splitlines()
    assert 'START_DAEMON="true"' in text.splitlines()
    with pytest.raises(ValueError, match="invalid GNSS device path"):
        gpsd_default('/dev/ttyACM0" -G')


def test_chrony_takes_nmea_from_shared_memory_and_steps_at_boot() -> None:
    lines = chrony_conf().splitlines()
    assert "refclock SHM 0 refid NMEA offset 0.200 delay 0.2 precision 1e-1" in lines
    assert "makestep 1 3" in lines
    assert "#refclock PPS /dev/pps0 lock NMEA refid PPS precision 1e-7" in lines
    with_pps = chrony_conf(pps_device="/dev/pps0").splitlines()
    assert "refclock PPS /dev/pps0 lock NMEA refid PPS precision 1e-7" in with_pps
