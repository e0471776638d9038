"""Power: readers against the simulated battery, the Battery device, and the power policy."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import threading
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.power import (
    INA219_CONFIG,
    LI_ION_CURVE,
    REG_BUS,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT,
    Action,
    Battery,
    DischargeRate,
    INA219Reader,
    Level,
    PowerConfig,
    PowerMode,
    PowerPolicy,
    ShutdownFailed,
    ShutdownSequence,
    SysfsReader,
    Thresholds,
    actions,
    mode,
    percent_from_volts,
    swap16,
    volts_from_percent,
)
from sim.power import FakeINA219, SimBattery, SimulatedPower, SysfsTree

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

NORMAL, SAVE, CRITICAL = PowerMode.NORMAL, PowerMode.SAVE, PowerMode.CRITICAL
DEFAULT = Thresholds()
modes = st.sampled_from(list(PowerMode))
percents = st.floats(0, 100, allow_nan=False)


def run(main: Coroutine[Any, Any, T]) -> T:
    async def checked() -> T:
        result = await asyncio.wait_for(main, 10)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "tasks left running"
        return result

    return asyncio.run(checked())


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    threads = set(threading.enumerate())
    yield
    assert not set(threading.enumerate()) - threads, "threads left running"


class Clock:
    """Emulated seconds, moved by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# --- voltage curve ---------------------------------------------------------------------


@pytest.mark.parametrize("cells", [1, 2, 3, 4])
def test_the_curve_spans_empty_to_full_for_every_cell_count(cells: int) -> None:
    assert percent_from_volts(3.0 * cells, cells) == 0.0
    assert percent_from_volts(4.2 * cells, cells) == 100.0
    assert percent_from_volts(2.5 * cells, cells) == 0.0
    assert percent_from_volts(4.35 * cells, cells) == 100.0
    assert percent_from_volts(3.82 * cells, cells) == pytest.approx(50.0)


@given(st.floats(2.5, 4.4), st.floats(2.5, 4.4), st.integers(1, 4))
def test_more_voltage_never_means_less_charge(a: float, b: float, cells: int) -> None:
    lo, hi = sorted((a, b))
    assert percent_from_volts(lo * cells, cells) <= percent_from_volts(hi * cells, cells)


@given(percents, st.integers(1, 4))
def test_volts_from_percent_inverts_the_curve(percent: float, cells: int) -> None:
    assert percent_from_volts(volts_from_percent(percent, cells), cells) == pytest.approx(
        percent, abs=1e-6
    )


def test_curve_points_rise() -> None:
    assert all(a < b for (a, _), (b, _) in itertools.pairwise(LI_ION_CURVE))


# --- sysfs reader ----------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    tree = SysfsTree(SimBattery(percent=64.4, load_w=10.0, cells=2, clock=Clock()), tmp_path)
    tree.update()
    return tree


def test_sysfs_reader_reads_the_simulated_battery(tree: SysfsTree) -> None:
    reading = SysfsReader(root=tree.root).read()
    b = tree.battery
    assert reading.problems == ()
    assert reading.percent == 64
    assert reading.volts == pytest.approx(b.volts, abs=1e-6)
    assert reading.amps == pytest.approx(-10.0 / b.volts, abs=1e-6)
    assert reading.on_mains is False
    assert reading.charging is False


def test_sysfs_reader_sees_mains_and_charging(tree: SysfsTree) -> None:
    tree.battery.mains = True
    tree.update()
    reading = SysfsReader("BAT0", root=tree.root).read()
    assert reading.on_mains is True
    assert reading.charging is True
    assert reading.amps is not None and reading.amps > 0


def test_sysfs_reader_takes_the_current_sign_from_the_status(tree: SysfsTree) -> None:
    tree.fault["current_now"] = "1500000"  # a driver that reports discharge as positive
    tree.update()
    assert SysfsReader(root=tree.root).read().amps == pytest.approx(-1.5)


def test_sysfs_garbage_capacity_is_unknown_with_the_reason(tree: SysfsTree) -> None:
    tree.fault["capacity"] = "abc"
    tree.update()
    reading = SysfsReader(root=tree.root).read()
    path = tree.root / "BAT0" / "capacity"
    assert reading.percent is None
    assert reading.volts is not None  # the rest is still read
    assert reading.problems == (f"{path} 不是数字：'abc' / {path} is not a number: 'abc'",)


def test_sysfs_out_of_range_and_unreadable_values_are_reported(tree: SysfsTree) -> None:
    tree.fault["capacity"] = "250"
    tree.update()
    (tree.root / "BAT0" / "voltage_now").unlink()
    (tree.root / "BAT0" / "voltage_now").mkdir()  # reading it fails with EISDIR
    reading = SysfsReader(root=tree.root).read()
    cap, volts = tree.root / "BAT0" / "capacity", tree.root / "BAT0" / "voltage_now"
    assert reading.percent is None and reading.volts is None
    assert reading.problems == (
        f"{cap} 数值 250 超出范围 / {cap} value 250 out of range (0..100)",
        f"读取 {volts} 失败：Is a directory / cannot read {volts}: Is a directory",
    )


def test_sysfs_without_a_battery_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "hid-mouse-battery").mkdir()
    (tmp_path / "hid-mouse-battery" / "type").write_text("Battery\n")
    (tmp_path / "hid-mouse-battery" / "scope").write_text("Device\n")
    reading = SysfsReader(root=tmp_path).read()
    assert reading.percent is None
    assert reading.problems == (
        f"{tmp_path} 下没有电池；I2C UPS 扩展板请设 power.source = 'ina219' / "
        f"no battery under {tmp_path}; for an I2C UPS HAT set power.source = 'ina219'",
    )
    missing = SysfsReader("BAT1", root=tmp_path).read()
    assert missing.problems == (
        f"未找到电池 {tmp_path / 'BAT1'} / no battery at {tmp_path / 'BAT1'}",
    )


def test_sysfs_missing_capacity_is_named(tree: SysfsTree) -> None:
    (tree.root / "BAT0" / "capacity").unlink()
    path = tree.root / "BAT0" / "capacity"
    assert SysfsReader(root=tree.root).read().problems == (f"缺少 {path} / {path} is missing",)


# --- INA219 ----------------------------------------------------------------------------


def ina219(battery: SimBattery, **kw: Any) -> tuple[FakeINA219, INA219Reader]:
    chip = FakeINA219(battery)
    opened: list[int] = []

    def smbus(bus: int) -> FakeINA219:
        opened.append(bus)
        return chip

    return chip, INA219Reader(smbus=smbus, **kw)


def test_ina219_reader_programs_the_chip_and_reads_volts_and_amps() -> None:
    battery = SimBattery(percent=55.0, load_w=6.0, cells=2, clock=Clock())
    chip, reader = ina219(battery)
    reading = reader.read()
    assert chip.writes == [(REG_CONFIG, INA219_CONFIG), (REG_CALIBRATION, 4096)]
    assert reading.problems == ()
    assert reading.volts == pytest.approx(battery.volts, abs=0.004)
    assert reading.amps == pytest.approx(battery.amps, abs=0.001)
    assert reading.percent == pytest.approx(55.0, abs=0.5)
    assert (reading.on_mains, reading.charging) == (False, False)
    reader.read()
    assert len(chip.writes) == 2, "calibration is read back, not rewritten each time"


def test_fake_ina219_registers_are_big_endian_behind_little_endian_smbus_words() -> None:
    battery = SimBattery(percent=100.0, load_w=0.0, cells=2, clock=Clock())  # 8.40 V
    chip = FakeINA219(battery)
    assert chip.read_word_data(0x42, REG_CONFIG) == 0x9F39  # 0x399F on the wire, swapped
    chip.write_word_data(0x42, REG_CALIBRATION, 0x0010)  # the host sends 0x1000 swapped
    assert chip.writes == [(REG_CALIBRATION, 0x1000)]
    assert swap16(chip.read_word_data(0x42, REG_BUS)) == 2100 << 3 | 0x2  # 8.400 V / 4 mV, CNVR
    chip.write_word_data(0x42, REG_CALIBRATION, swap16(0x1001))
    assert swap16(chip.read_word_data(0x42, REG_CALIBRATION)) == 0x1000, "bit 0 does not exist"


def test_fake_ina219_computes_current_and_power_only_once_calibrated() -> None:
    battery = SimBattery(percent=50.0, load_w=10.0, cells=2, clock=Clock())
    chip = FakeINA219(battery)

    def reg(r: int) -> int:
        return swap16(chip.read_word_data(0x42, r))

    shunt = reg(REG_SHUNT) - 0x10000  # negative: discharging
    assert shunt == round(battery.amps * 0.1 / 10e-6)
    assert reg(REG_CURRENT) == 0 and reg(REG_POWER) == 0
    chip.write_word_data(0x42, REG_CALIBRATION, swap16(4096))
    assert reg(REG_CURRENT) - 0x10000 == shunt  # cal 4096: one current LSB per shunt LSB
    assert reg(REG_POWER) == abs(shunt) * (reg(REG_BUS) >> 3) // 5000
    chip.write_word_data(0x42, REG_CONFIG, swap16(0x8000))  # RST
    assert reg(REG_CALIBRATION) == 0 and reg(REG_CONFIG) == 0x399F


def test_ina219_reader_recalibrates_after_a_brownout() -> None:
    battery = SimBattery(percent=70.0, load_w=5.0, clock=Clock())
    chip, reader = ina219(battery)
    reader.read()
    chip.brownout()
    reading = reader.read()
    assert chip.writes[2:] == [(REG_CONFIG, INA219_CONFIG), (REG_CALIBRATION, 4096)]
    assert reading.amps == pytest.approx(battery.amps, abs=0.001)


def test_ina219_infers_mains_from_the_charging_current() -> None:
    battery = SimBattery(percent=40.0, mains=True, clock=Clock())
    _, reader = ina219(battery)
    reading = reader.read()
    assert (reading.on_mains, reading.charging) == (True, True)
    assert reading.amps == pytest.approx(20.0 / battery.volts, abs=0.001)


def test_ina219_errors_are_unknown_with_the_reason() -> None:
    battery = SimBattery(clock=Clock())
    chip, reader = ina219(battery)
    chip.fail = True
    reading = reader.read()
    why = os.strerror(errno.EREMOTEIO)
    assert reading.percent is None
    assert reading.problems == (
        f"INA219 I2C 1 0x42 无应答：{why} / INA219 I2C 1 0x42 did not answer: {why}",
    )
    chip.fail = False
    assert reader.read().percent is not None, "the next look reopens the bus"
    _, elsewhere = ina219(battery, address=0x43)
    assert "INA219 I2C 1 0x43 did not answer" in elsewhere.read().problems[0]


def test_ina219_without_i2c_enabled_says_how_to_enable_it() -> None:
    def no_bus(bus: int) -> FakeINA219:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))

    reading = INA219Reader(smbus=no_bus).read()
    assert reading.problems == (
        "无法打开 /dev/i2c-1（No such file or directory）；请在 config.txt 启用 "
        "dtparam=i2c_arm=on / cannot open /dev/i2c-1 (No such file or directory); "
        "enable I2C with dtparam=i2c_arm=on in config.txt",
    )


def test_ina219_overflow_and_wrong_cell_count_are_reported() -> None:
    battery = SimBattery(percent=50.0, load_w=60.0, cells=2, clock=Clock())  # ~7.8 A
    _, reader = ina219(battery)
    reading = reader.read()
    assert reading.amps is None
    assert reading.problems == (
        "INA219 I2C 1 0x42 电流超出量程 / INA219 I2C 1 0x42 current out of range (overflow)",
    )
    _, four = ina219(SimBattery(percent=50.0, cells=2, clock=Clock()), cells=4)
    reading = four.read()
    assert reading.percent is None
    assert "below 9.6 V: no battery, or wrong cell count" in reading.problems[0]


# --- the battery device ----------------------------------------------------------------


def test_hours_left_is_close_to_the_truth_for_a_steady_load() -> None:
    clock = Clock()
    battery = SimBattery(capacity_wh=100.0, percent=90.0, load_w=10.0, clock=clock)
    source = SimulatedPower("ina219", battery)
    levels: list[Level] = []
    device = Battery(PowerConfig(), backend=source, on_level=levels.append, clock=clock)

    async def main() -> None:
        for _ in range(60):  # one hour, a reading every minute
            clock.t += 60
            await device.read_now()

    run(main())
    truth = battery.hours_left()
    assert truth == pytest.approx(8.0)
    assert levels[-1].hours_left == pytest.approx(truth, rel=0.05)
    assert levels[-1].percent == pytest.approx(80.0, abs=0.5)
    assert levels[0].hours_left is None, "nothing said before ten minutes of samples"


def test_hours_left_ignores_noise_and_integer_percentages() -> None:
    rate = DischargeRate()
    noise = [0.0, 1.5, -1.0, 2.0, -2.0, 0.5, -1.5, 1.0]
    for minute in range(40):  # 6 %/h, read as whole percent plus noise
        rate.add(minute * 60.0, round(80.0 - minute / 10.0) + noise[minute % len(noise)])
    assert rate.percent_per_hour() == pytest.approx(6.0, rel=0.25)


def test_hours_left_is_none_while_charging() -> None:
    clock = Clock()
    battery = SimBattery(percent=50.0, mains=True, clock=clock)
    levels: list[Level] = []
    device = Battery(PowerConfig(), backend=SimulatedPower("ina219", battery), clock=clock)
    device.on_level = levels.append

    async def main() -> None:
        for _ in range(30):
            clock.t += 60
            await device.read_now()

    run(main())
    assert all(level.hours_left is None and level.on_mains for level in levels)


def test_the_battery_smooths_a_bad_sample_away(tree: SysfsTree) -> None:
    device = Battery(PowerConfig(), backend=SysfsReader(root=tree.root))

    async def main() -> list[Level | None]:
        out = [await device.read_now() for _ in range(3)]
        tree.fault["capacity"] = "20"  # one glitch from the fuel gauge
        tree.update()
        out.append(await device.read_now())
        return out

    assert [level and level.percent for level in run(main())] == [64, 64, 64, 64]


def test_an_unknown_reading_is_not_passed_on_and_the_state_says_why() -> None:
    battery = SimBattery(clock=Clock())
    source = SimulatedPower("ina219", battery)
    assert source.chip is not None
    source.chip.fail = True
    levels: list[Level] = []
    device = Battery(PowerConfig(), backend=source, on_level=levels.append)
    assert run(device.read_now()) is None
    assert levels == []
    state = device.state()
    why = os.strerror(errno.EREMOTEIO)
    assert not state.online
    assert state.summary == (
        f"电量未知：INA219 I2C 1 0x42 无应答：{why} / "
        f"level unknown: INA219 I2C 1 0x42 did not answer: {why}"
    )


def test_the_battery_runs_on_the_simulator_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")
    levels: list[Level] = []

    async def on_level(level: Level) -> None:
        levels.append(level)

    async def main() -> None:
        device = Battery(PowerConfig(source="sysfs"), on_level=on_level)
        assert isinstance(device.source, SimulatedPower)
        await device.start()
        try:
            while not levels:
                await asyncio.sleep(0.01)
        finally:
            await device.close()
        state = device.state()
        assert state.online
        assert state.summary == "电量 80%，电池供电 / battery 80 %, on battery"
        assert state.detail["source"] == "simulated sysfs battery"

    run(main())
    assert levels[0].percent == 80.0


def test_no_battery_configured() -> None:
    device = Battery(PowerConfig(source="none"))
    run(device.start())
    run(device.close())
    assert device.state().summary == "未配置电池 / no battery configured"


def test_level_becomes_the_bus_message() -> None:
    message = Level(42.0, 7.5, False, 3.0).topic()
    assert (message.percent, message.volts, message.on_mains) == (42.0, 7.5, False)


# --- config ----------------------------------------------------------------------------


def test_power_config_rejects_save_not_above_critical() -> None:
    with pytest.raises(ValidationError) as err:
        PowerConfig(save_percent=10, critical_percent=10)
    assert err.value.errors()[0]["msg"] == (
        "Value error, 省电阈值 10% 必须高于关机阈值 10% / "
        "save_percent (10) must be above critical_percent (10)"
    )


def test_power_config_bounds_and_unknown_keys() -> None:
    with pytest.raises(ValidationError) as err:
        PowerConfig.model_validate(
            {"cells": 5, "i2c_address": 0x30, "source": "acpi", "poll": 30, "poll_s": 1}
        )
    assert {(e["loc"][0], e["type"]) for e in err.value.errors()} == {
        ("cells", "less_than_equal"),
        ("i2c_address", "greater_than_equal"),
        ("source", "literal_error"),
        ("poll", "extra_forbidden"),
        ("poll_s", "greater_than_equal"),
    }


def test_every_power_setting_is_titled_in_both_languages() -> None:
    for name, field in PowerConfig.model_fields.items():
        assert field.title and " / " in field.title, name
        assert field.description, name


# --- policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "on_mains", "previous", "expected"),
    [
        (50, False, NORMAL, NORMAL),
        (29.9, False, NORMAL, SAVE),
        (9.9, False, NORMAL, CRITICAL),
        (9.9, False, SAVE, CRITICAL),
        (34.9, False, SAVE, SAVE),
        (35, False, SAVE, NORMAL),
        (14.9, False, CRITICAL, CRITICAL),
        (15, False, CRITICAL, SAVE),
        (40, False, CRITICAL, NORMAL),
        (1, True, CRITICAL, NORMAL),
        (None, False, SAVE, SAVE),
        (None, False, NORMAL, NORMAL),
    ],
)
def test_mode_table(
    percent: float | None, on_mains: bool, previous: PowerMode, expected: PowerMode
) -> None:
    assert mode(percent, on_mains, previous, DEFAULT) is expected


def no_hysteresis(percent: float) -> PowerMode:
    return CRITICAL if percent < 10 else SAVE if percent < 30 else NORMAL


@given(percents, modes)
def test_mode_is_never_less_cautious_than_the_thresholds(
    percent: float, previous: PowerMode
) -> None:
    new = mode(percent, False, previous, DEFAULT)
    raw = no_hysteresis(percent)
    assert raw.severity <= new.severity <= max(raw.severity, previous.severity)


@given(st.one_of(st.none(), percents), modes)
def test_mains_always_means_normal(percent: float | None, previous: PowerMode) -> None:
    assert mode(percent, True, previous, DEFAULT) is NORMAL


@given(percents, modes)
def test_mode_is_stable(percent: float, previous: PowerMode) -> None:
    once = mode(percent, False, previous, DEFAULT)
    assert mode(percent, False, once, DEFAULT) is once


@given(
    st.sampled_from([DEFAULT.save, DEFAULT.critical]),
    st.lists(st.floats(-2, 2, allow_nan=False), min_size=2, max_size=200),
    modes,
)
def test_a_level_wobbling_around_a_threshold_does_not_flap(
    threshold: float, noise: list[float], start: PowerMode
) -> None:
    current = mode(threshold + noise[0], False, start, DEFAULT)  # settle in first
    changes = 0
    for offset in noise[1:]:
        new = mode(threshold + offset, False, current, DEFAULT)
        changes += new is not current
        current = new
    # At most one step down, never back: a return would need threshold + 5 %.
    assert changes <= 1


@given(st.lists(st.tuples(st.one_of(st.none(), percents), st.booleans()), max_size=50))
def test_actions_along_any_path_leave_the_owner_consistent(
    path: list[tuple[float | None, bool]],
) -> None:
    current = NORMAL
    bulk_paused = slow = False
    shutdowns = 0
    for percent, on_mains in path:
        new = mode(percent, on_mains, current, DEFAULT)
        for action in actions(current, new):
            if action is Action.PAUSE_BULK:
                assert not bulk_paused
                bulk_paused = True
            elif action is Action.RESUME_BULK:
                assert bulk_paused
                bulk_paused = False
            elif action is Action.SLOW_POLLING:
                slow = True
            elif action is Action.NORMAL_POLLING:
                slow = False
            else:
                shutdowns += 1
        entered_critical = new is CRITICAL and current is not CRITICAL
        shutdowns -= entered_critical
        current = new
        assert bulk_paused == slow == (current is not NORMAL)
        assert shutdowns == 0


def test_actions_in_order() -> None:
    assert actions(NORMAL, SAVE) == [Action.PAUSE_BULK, Action.SLOW_POLLING]
    assert actions(SAVE, CRITICAL) == [Action.SHUT_DOWN]
    assert actions(NORMAL, CRITICAL) == [Action.PAUSE_BULK, Action.SLOW_POLLING, Action.SHUT_DOWN]
    assert actions(SAVE, NORMAL) == [Action.RESUME_BULK, Action.NORMAL_POLLING]
    assert actions(CRITICAL, SAVE) == []
    assert actions(SAVE, SAVE) == []


# --- shutting down ---------------------------------------------------------------------


class Owner:
    """Records every step the shutdown sequence asks of the owner."""

    def __init__(self, status: int = 0) -> None:
        self.calls: list[str] = []
        self.status = status

    async def announce(self, reason: str) -> None:
        self.calls.append(f"announce: {reason}")

    async def settle(self) -> None:
        self.calls.append("settle")

    def flush(self) -> None:
        self.calls.append("flush")

    async def runner(self, command: Sequence[str]) -> int:
        self.calls.append("run: " + " ".join(command))
        return self.status

    def sequence(self, **kw: Any) -> ShutdownSequence:
        steps: dict[str, Any] = {
            "announce": self.announce,
            "settle": self.settle,
            "flush": self.flush,
            "runner": self.runner,
        }
        return ShutdownSequence(**(steps | kw))


def test_low_battery_saves_then_shuts_down_once() -> None:
    clock = Clock()
    battery = SimBattery(capacity_wh=10.0, percent=40.0, load_w=10.0, clock=clock)
    policy = PowerPolicy(PowerConfig().thresholds)
    owner = Owner()
    shutdown = owner.sequence()
    done: list[Action] = []

    async def on_level(level: Level) -> None:
        for action in policy.update(level):
            done.append(action)
            if action is Action.SHUT_DOWN:
                await shutdown.run("battery critical")

    device = Battery(PowerConfig(), backend=SimulatedPower("ina219", battery), clock=clock)
    device.on_level = on_level

    async def main() -> None:
        for _ in range(40):  # 10 % per 6 minutes
            clock.t += 60
            await device.read_now()
        await shutdown.run("asked twice")

    run(main())
    assert done == [Action.PAUSE_BULK, Action.SLOW_POLLING, Action.SHUT_DOWN]
    assert owner.calls == [
        "announce: battery critical",
        "settle",
        "flush",
        "run: systemctl poweroff",
    ]


def test_shutdown_runs_once_even_when_asked_at_the_same_time() -> None:
    owner = Owner()
    sequence = owner.sequence(command=["true"])

    async def main() -> None:
        await asyncio.gather(sequence.run("a"), sequence.run("b"))

    run(main())
    assert owner.calls == ["announce: a", "settle", "flush", "run: true"]


def test_shutdown_goes_on_past_a_step_that_hangs_or_fails() -> None:
    owner = Owner()

    async def hangs() -> None:
        await asyncio.sleep(60)

    def fails() -> None:
        raise RuntimeError("store gone")

    sequence = owner.sequence(settle=hangs, announce=lambda reason: fails(), settle_timeout_s=0.05)
    run(sequence.run("test"))
    assert owner.calls == ["flush", "run: systemctl poweroff"]


def test_a_failing_shutdown_command_is_reported() -> None:
    owner = Owner(status=1)
    with pytest.raises(ShutdownFailed) as err:
        run(owner.sequence().run("test"))
    assert str(err.value) == (
        "关机命令 systemctl poweroff 失败，退出码 1 / "
        "shutdown command systemctl poweroff failed with exit status 1"
    )

    async def missing(command: Sequence[str]) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    with pytest.raises(ShutdownFailed) as err:
        run(owner.sequence(runner=missing, command=["poweroff-now"]).run("test"))
    assert str(err.value) == (
        "关机命令无法运行：poweroff-now（No such file or directory） / "
        "shutdown command could not run: poweroff-now (No such file or directory)"
    )
