"""Battery and mains power: pluggable readers, the Battery device, and the power policy.

Readers (each a :class:`PowerSource`):

- :class:`SysfsReader`: Linux ``/sys/class/power_supply`` (a fuel gauge or a UPS driver
  that registers a battery). ``capacity`` is the percentage, ``voltage_now`` µV,
  ``current_now`` µA, ``status`` Charging/Discharging/Full/Not charging; mains and USB
  supplies say ``online``. Drivers disagree on the sign of ``current_now``: the magnitude
  is taken from the file and the sign from ``status`` (+ charging, − discharging).
- :class:`INA219Reader`: an INA219 current/voltage monitor on I2C, as on Waveshare UPS
  HATs. See its docstring for the chip assumptions.
- ``sim.power.SimulatedPower`` (``KIT_BACKEND=sim``): a simulated battery behind both
  readers above.

The policy (:func:`mode`, :func:`actions`, :class:`ShutdownSequence`) is kept apart as
pure functions so it can be tested exhaustively: the battery device only measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import shlex
import statistics
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Self

import smbus2
from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.backend import choose
from edge.errors import KitError
from edge.topics import BatteryLevel, DeviceState

log = logging.getLogger(__name__)


class BadPowerConfig(KitError, ValueError):
    """Power settings that contradict each other."""


class ShutdownFailed(KitError, RuntimeError):
    """The shutdown command did not run or did not succeed."""


# --- state of charge from voltage ------------------------------------------------------

# Resting (open-circuit) voltage of one Li-ion cell (NMC/graphite, 18650 class) against
# state of charge. Under load the voltage sags, so the estimate reads low: the kit then
# saves power a little early, never late.
LI_ION_CURVE: tuple[tuple[float, float], ...] = (
    (3.00, 0.0),
    (3.45, 5.0),
    (3.68, 10.0),
    (3.74, 20.0),
    (3.77, 30.0),
    (3.79, 40.0),
    (3.82, 50.0),
    (3.87, 60.0),
    (3.92, 70.0),
    (3.98, 80.0),
    (4.06, 90.0),
    (4.20, 100.0),
)


def percent_from_volts(volts: float, cells: int) -> float:
    """State of charge of a ``cells``-in-series Li-ion pack at ``volts`` (linear between points)."""
    per_cell = volts / cells
    points = LI_ION_CURVE
    if per_cell <= points[0][0]:
        return 0.0
    if per_cell >= points[-1][0]:
        return 100.0
    i = bisect_left([v for v, _ in points], per_cell)
    (v0, p0), (v1, p1) = points[i - 1], points[i]
    return p0 + (p1 - p0) * (per_cell - v0) / (v1 - v0)


def volts_from_percent(percent: float, cells: int) -> float:
    """The inverse of :func:`percent_from_volts` (for simulators)."""
    points = LI_ION_CURVE
    percent = min(100.0, max(0.0, percent))
    i = max(1, bisect_left([p for _, p in points], percent))
    (v0, p0), (v1, p1) = points[i - 1], points[i]
    return cells * (v0 + (v1 - v0) * (percent - p0) / (p1 - p0))


# --- readings and sources --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PowerReading:
    """One look at the battery. ``None`` means unknown; ``problems`` say why (bilingual)."""

    percent: float | None
    volts: float | None
    amps: float | None  # battery current: + charging, − discharging
    on_mains: bool | None  # external power present
    charging: bool | None
    problems: tuple[str, ...] = ()


def _unknown(*problems: str) -> PowerReading:
    return PowerReading(None, None, None, None, None, problems)


class PowerSource(Protocol):
    """Where battery readings come from: a reader, or a simulator wrapping one."""

    @property
    def describe(self) -> str: ...

    def read(self) -> PowerReading:
        """Never raises for a hardware fault: an unreadable value comes back ``None`` with why."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


SYSFS_ROOT = Path("/sys/class/power_supply")
EXTERNAL_TYPES = frozenset(
    {"Mains", "USB", "USB_C", "USB_PD", "USB_PD_DRP", "USB_DCP", "USB_CDP", "USB_ACA", "Wireless"}
)


class SysfsReader:
    """Reads a battery (and any mains/USB supply) from ``/sys/class/power_supply``.

    ``supply`` names the battery's folder (``BAT0``, ``battery``…); empty picks the first
    system battery (``type`` Battery, ``scope`` not Device, which would be a mouse's).
    ``root`` is injectable so tests and the simulator can use a folder of their own.
    """

    def __init__(self, supply: str = "", root: Path = SYSFS_ROOT) -> None:
        self.supply = supply
        self.root = root

    @property
    def describe(self) -> str:
        return f"sysfs {self.root / (self.supply or '*')}"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def read(self) -> PowerReading:
        problems: list[str] = []
        external = self._external(problems)
        battery = self._battery(problems)
        if battery is None:
            return PowerReading(None, None, None, external, None, tuple(problems))
        status = _attr(battery, "status", problems)
        percent = _number(battery, "capacity", 1.0, (0, 100), problems, required=True)
        volts = _number(battery, "voltage_now", 1e-6, (0, 100), problems)
        amps = _number(battery, "current_now", 1e-6, (-100, 100), problems)
        charging = {"Charging": True, "Discharging": False, "Not charging": False, "Full": False}
        is_charging = charging.get(status or "")
        if status is not None and status not in charging and status != "Unknown":
            problems.append(
                f"{battery / 'status'} 内容无法识别：{status!r} / "
                f"{battery / 'status'}: unknown status {status!r}"
            )
        if amps is not None and status in ("Charging", "Discharging"):
            amps = abs(amps) if status == "Charging" else -abs(amps)
        if external is None and status in charging:
            external = status in ("Charging", "Full", "Not charging")
        elif status in ("Charging", "Full"):
            external = True
        return PowerReading(percent, volts, amps, external, is_charging, tuple(problems))

    def _battery(self, problems: list[str]) -> Path | None:
        if self.supply:
            path = self.root / self.supply
            if path.is_dir():
                return path
            problems.append(f"未找到电池 {path} / no battery at {path}")
            return None
        for path in self._supplies():
            kind = _attr(path, "type", [])
            if kind == "Battery" and _attr(path, "scope", []) != "Device":
                return path
        problems.append(
            f"{self.root} 下没有电池；I2C UPS 扩展板请设 power.source = 'ina219' / "
            f"no battery under {self.root}; for an I2C UPS HAT set power.source = 'ina219'"
        )
        return None

    def _external(self, problems: list[str]) -> bool | None:
        """Any mains/USB supply online; ``None`` when the kit has no such supply to ask."""
        seen = False
        for path in self._supplies():
            if _attr(path, "type", []) not in EXTERNAL_TYPES:
                continue
            online = _number(path, "online", 1.0, (0, 1), problems)
            if online is not None:
                seen = True
                if online:
                    return True
        return False if seen else None

    def _supplies(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir())
        except OSError:
            return []


def _attr(folder: Path, name: str, problems: list[str]) -> str | None:
    """One sysfs attribute's text, or ``None`` (a read error goes into ``problems``)."""
    path = folder / name
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(f"读取 {path} 失败：{why} / cannot read {path}: {why}")
        return None


def _number(
    folder: Path,
    name: str,
    scale: float,
    bounds: tuple[float, float],
    problems: list[str],
    *,
    required: bool = False,
) -> float | None:
    text = _attr(folder, name, problems)
    path = folder / name
    if text is None:
        if required and not path.exists():
            problems.append(f"缺少 {path} / {path} is missing")
        return None
    try:
        value = int(text) * scale
    except ValueError:
        problems.append(f"{path} 不是数字：{text[:20]!r} / {path} is not a number: {text[:20]!r}")
        return None
    lo, hi = bounds
    if not lo <= value <= hi:
        problems.append(
            f"{path} 数值 {text} 超出范围 / {path} value {text} out of range ({lo:g}..{hi:g})"
        )
        return None
    return value


class SMBusLike(Protocol):
    """The part of :class:`smbus2.SMBus` the INA219 reader uses (the simulator has it too)."""

    def read_word_data(self, i2c_addr: int, register: int) -> int: ...

    def write_word_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def close(self) -> None: ...


# INA219 registers and bits (TI datasheet SBOS448).
REG_CONFIG, REG_SHUNT, REG_BUS, REG_POWER, REG_CURRENT, REG_CALIBRATION = range(6)
CONFIG_RESET = 0x8000
BUS_CNVR, BUS_OVF = 0x0002, 0x0001
BUS_LSB_V = 0.004
SHUNT_LSB_V = 10e-6
CURRENT_LSB_A = 100e-6
# 32 V bus range, PGA /8 (±320 mV shunt), 12-bit 32-sample averaging on both ADCs
# (17 ms per conversion, quiet readings), shunt and bus continuous.
INA219_CONFIG = 1 << 13 | 3 << 11 | 0xD << 7 | 0xD << 3 | 0x7


def swap16(word: int) -> int:
    """SMBus words travel low byte first; the INA219 sends and expects high byte first."""
    return ((word & 0xFF) << 8) | (word >> 8 & 0xFF)


def signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def ina219_calibration(shunt_ohms: float) -> int:
    """Calibration register for :data:`CURRENT_LSB_A` (datasheet: 0.04096 / (LSB × R))."""
    return int(0.04096 / (CURRENT_LSB_A * shunt_ohms)) & 0xFFFE  # bit 0 does not exist


class INA219Reader:
    """A battery behind an INA219 on I2C (Waveshare UPS HAT and similar).

    Assumptions, as on the Waveshare UPS HATs: the chip at 0x40–0x43 (HAT (B): 0x42,
    HAT (C): 0x43; other boards strap 0x40/0x41), a 0.1 Ω shunt in the battery lead,
    current positive while the battery charges. The reader programs the 32 V / ±320 mV
    range with a 100 µA current LSB (calibration 4096 at 0.1 Ω, so ±3.2 A full scale),
    reads the calibration back on every look and rewrites it when the chip lost it (a
    brown-out resets it to 0, and the current register then reads 0).

    Registers are 16-bit big-endian; SMBus word transfers are little-endian, so every
    word is byte-swapped both ways. Bus voltage is bits 15..3 of register 0x02 at 4 mV,
    bit 0 flagging a math overflow; current is register 0x04 (signed) × 100 µA.

    The INA219 gives no percentage: it is estimated from the voltage with a Li-ion curve
    (:data:`LI_ION_CURVE`, ``cells`` in series, 1S–4S). Mains is inferred from the
    current: charging above 50 mA means external power, discharging above 50 mA means
    none, in between is unknown.
    """

    MAINS_AMPS = 0.05

    def __init__(
        self,
        *,
        bus: int = 1,
        address: int = 0x42,
        cells: int = 2,
        shunt_ohms: float = 0.1,
        smbus: Callable[[int], SMBusLike] = smbus2.SMBus,
    ) -> None:
        self.bus = bus
        self.address = address
        self.cells = cells
        self.calibration = ina219_calibration(shunt_ohms)
        self._smbus = smbus
        self._port: SMBusLike | None = None

    @property
    def describe(self) -> str:
        return f"INA219 I2C {self.bus} 0x{self.address:02x}"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._drop()

    def read(self) -> PowerReading:
        try:
            port = self._open()
        except OSError as exc:
            return _unknown(
                f"无法打开 /dev/i2c-{self.bus}（{exc.strerror or exc}）；"
                f"请在 config.txt 启用 dtparam=i2c_arm=on / "
                f"cannot open /dev/i2c-{self.bus} ({exc.strerror or exc}); "
                f"enable I2C with dtparam=i2c_arm=on in config.txt"
            )
        try:
            if self._word(port, REG_CALIBRATION) != self.calibration:
                self._program(port)
            bus_word = self._word(port, REG_BUS)
            current_word = self._word(port, REG_CURRENT)
        except OSError as exc:
            self._drop()
            why = exc.strerror or str(exc)
            return _unknown(
                f"{self.describe} 无应答：{why} / {self.describe} did not answer: {why}"
            )
        volts = (bus_word >> 3) * BUS_LSB_V
        problems: list[str] = []
        amps: float | None = signed16(current_word) * CURRENT_LSB_A
        if bus_word & BUS_OVF:
            amps = None
            problems.append(
                f"{self.describe} 电流超出量程 / {self.describe} current out of range (overflow)"
            )
        floor = self.cells * LI_ION_CURVE[0][0] * 0.8
        if volts < floor:
            problems.append(
                f"电池电压 {volts:.2f} V 低于 {floor:.1f} V，未接电池或节数设置错误 / "
                f"battery at {volts:.2f} V, below {floor:.1f} V: no battery, or wrong cell count"
            )
            return PowerReading(None, volts, amps, None, None, tuple(problems))
        on_mains = charging = None
        if amps is not None and abs(amps) >= self.MAINS_AMPS:
            on_mains = charging = amps > 0
        percent = percent_from_volts(volts, self.cells)
        return PowerReading(percent, volts, amps, on_mains, charging, tuple(problems))

    def _open(self) -> SMBusLike:
        if self._port is None:
            self._port = self._smbus(self.bus)
        return self._port

    def _drop(self) -> None:
        if self._port is not None:
            with contextlib.suppress(OSError):
                self._port.close()
            self._port = None

    def _program(self, port: SMBusLike) -> None:
        log.info("programming %s (calibration %d)", self.describe, self.calibration)
        self._put(port, REG_CONFIG, INA219_CONFIG)
        self._put(port, REG_CALIBRATION, self.calibration)

    def _word(self, port: SMBusLike, register: int) -> int:
        return swap16(port.read_word_data(self.address, register))

    def _put(self, port: SMBusLike, register: int, value: int) -> None:
        port.write_word_data(self.address, register, swap16(value))


# --- config ----------------------------------------------------------------------------


class PowerConfig(BaseModel):
    """Where the battery is read and when the kit saves power or shuts down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["sysfs", "ina219", "companion", "none"] = Field(
        "sysfs",
        title="电量来源 / Battery source",
        description="sysfs: a Linux battery driver; ina219: an I2C UPS HAT; companion: the "
        "Pico companion on a UART (firmware/); none: mains only.",
    )
    companion_device: str = Field(
        "/dev/ttyAMA0",
        title="伴随单片机串口 / Companion serial port",
        description="Serial device of the Pico companion (power.source = 'companion').",
        min_length=1,
        max_length=4096,
        pattern=r"^/[^\x00-\x1f]*$",
    )
    companion_baud: int = Field(
        115200,
        title="伴随单片机波特率 / Companion baud rate",
        description="UART speed of the companion (8N1); the firmware uses 115200.",
        ge=1200,
        le=1000000,
    )
    sysfs_supply: str = Field(
        "",
        title="电池名称 / Battery name",
        description="Folder under /sys/class/power_supply (e.g. BAT0); empty: the first battery.",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]*$",
    )
    sysfs_root: str = Field(
        str(SYSFS_ROOT),
        title="电源目录 / Power-supply folder",
        description="Where the battery driver's folders are; only `kit sim` points it elsewhere.",
        min_length=1,
        max_length=4096,
    )
    i2c_bus: int = Field(
        1, title="I2C 总线 / I2C bus", description="N of /dev/i2c-N (1 on a Pi).", ge=0, le=31
    )
    i2c_address: int = Field(
        0x42,
        title="I2C 地址 / I2C address",
        description="INA219 address: 0x42 on Waveshare UPS HAT (B), 0x43 on (C); 0x40-0x4F.",
        ge=0x40,
        le=0x4F,
    )
    cells: int = Field(
        2,
        title="串联节数 / Cells in series",
        description="Li-ion cells in series (1S-4S), for the voltage-to-percent curve.",
        ge=1,
        le=4,
    )
    shunt_ohms: float = Field(
        0.1,
        title="分流电阻 / Shunt resistor",
        description="INA219 shunt in ohms (0.1 on Waveshare UPS HATs).",
        ge=0.001,
        le=10.0,
    )
    save_percent: float = Field(
        30.0,
        title="省电阈值 / Power-save level",
        description="Below this percent on battery: pause bulk media uploads, poll slower.",
        ge=5,
        le=80,
    )
    critical_percent: float = Field(
        10.0,
        title="关机阈值 / Critical level",
        description="Below this percent on battery: flush the store and shut down cleanly.",
        ge=2,
        le=50,
    )
    hysteresis_percent: float = Field(
        5.0,
        title="回差 / Hysteresis",
        description="A mode is left only this many percent above its threshold (no flapping).",
        ge=1,
        le=20,
    )
    poll_s: float = Field(
        30.0,
        title="读取间隔 / Poll interval",
        description="Seconds between battery readings.",
        ge=5,
        le=600,
    )
    save_poll_s: float = Field(
        120.0,
        title="省电读取间隔 / Power-save poll interval",
        description="Seconds between battery readings in power-save mode.",
        ge=5,
        le=1800,
    )
    settle_timeout_s: float = Field(
        30.0,
        title="收尾等待 / Settle timeout",
        description="Before shutting down, most seconds to let in-flight work finish.",
        ge=1,
        le=600,
    )
    flush_timeout_s: float = Field(
        30.0,
        title="落盘等待 / Flush timeout",
        description="Before shutting down, most seconds to let the store flush to disk.",
        ge=1,
        le=600,
    )
    shutdown_command: list[str] = Field(
        ["systemctl", "poweroff"],
        title="关机命令 / Shutdown command",
        description="Program and arguments run to power the kit off.",
        min_length=1,
        max_length=16,
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.save_percent <= self.critical_percent:
            raise BadPowerConfig(
                f"省电阈值 {self.save_percent:g}% 必须高于关机阈值 {self.critical_percent:g}%",
                f"save_percent ({self.save_percent:g}) must be above "
                f"critical_percent ({self.critical_percent:g})",
            )
        if self.save_poll_s < self.poll_s:
            raise BadPowerConfig(
                f"省电读取间隔 {self.save_poll_s:g} 秒不能短于读取间隔 {self.poll_s:g} 秒",
                f"save_poll_s ({self.save_poll_s:g}) must not be shorter than "
                f"poll_s ({self.poll_s:g})",
            )
        if not all(self.shutdown_command):
            raise BadPowerConfig("关机命令含空参数", "shutdown_command has an empty argument")
        return self

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.save_percent, self.critical_percent, self.hysteresis_percent)

    def reader(self) -> PowerSource:
        """The real reader this config names."""
        if self.source == "sysfs":
            return SysfsReader(self.sysfs_supply, Path(self.sysfs_root))
        if self.source == "ina219":
            return INA219Reader(
                bus=self.i2c_bus,
                address=self.i2c_address,
                cells=self.cells,
                shunt_ohms=self.shunt_ohms,
            )
        if self.source == "companion":
            from drivers.companion import CompanionReader  # it imports this module

            return CompanionReader(
                self.companion_device, baud=self.companion_baud, cells=self.cells
            )
        raise BadPowerConfig(
            "电量来源为 none，没有可读取的电池",
            "power.source is 'none': there is no battery to read",
        )


# --- the battery device ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """The battery as the rest of the kit sees it: smoothed, with an estimate of time left."""

    percent: float
    volts: float | None
    on_mains: bool  # unknown counts as on battery: the cautious side
    hours_left: float | None  # None while charging, on mains, or not yet measurable

    def topic(self) -> BatteryLevel:
        """The bus message (:data:`edge.topics.BATTERY_LEVEL`)."""
        return BatteryLevel(self.percent, self.volts, self.on_mains, self.hours_left)


class DischargeRate:
    """Percent per hour over the recent past, robust to noise and to integer percentages.

    The slope is Theil–Sen (the median of the slopes between every pair of samples), so a
    few outliers or a load spike do not swing it. ``window_s`` keeps the estimate recent;
    nothing is said before ``min_span_s`` of samples exist.
    """

    def __init__(self, window_s: float = 1800.0, min_span_s: float = 600.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, t: float, percent: float) -> None:
        self._samples.append((t, percent))
        while self._samples and t - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def reset(self) -> None:
        self._samples.clear()

    def percent_per_hour(self) -> float | None:
        """How fast the level falls (positive while discharging); ``None`` if too early."""
        s = list(self._samples)
        if len(s) < 3 or s[-1][0] - s[0][0] < self.min_span_s:
            return None
        slopes = [
            (p0 - p1) / (t1 - t0)
            for i, (t0, p0) in enumerate(s)
            for t1, p1 in s[i + 1 :]
            if t1 > t0
        ]
        return statistics.median(slopes) * 3600.0

    def hours_left(self, percent: float) -> float | None:
        rate = self.percent_per_hour()
        if rate is None or rate < 0.05:  # not measurably falling
            return None
        return percent / rate


LevelCallback = Callable[[Level], Awaitable[None] | None]


def _simulator(config: PowerConfig) -> PowerSource:
    # Loaded only when KIT_BACKEND=sim asks for it: a driver import must not pull in sim/.
    from sim.power import SimulatedPower

    kind: Literal["sysfs", "ina219"] = "ina219" if config.source == "ina219" else "sysfs"
    return SimulatedPower(kind, cells=config.cells, address=config.i2c_address)


class Battery:
    """The kit's battery as a device: reads it every ``poll_s``, smooths, reports levels.

    ``backend`` is a :class:`PowerSource`, or ``None`` for ``KIT_BACKEND``'s choice (the
    reader ``config`` names, or a simulated battery). Each good reading goes into a
    median of the last few (a load spike or a bad sample does not move the level) and
    into :class:`DischargeRate`; ``on_level`` (sync or async) then gets a :class:`Level`.
    Unknown readings are not passed on — the policy keeps its mode — and
    :meth:`state` says why. Set :attr:`low_power` to read every ``save_poll_s`` instead.
    """

    kind = "power"
    SMOOTHING = 5  # readings in the median

    def __init__(
        self,
        config: PowerConfig,
        *,
        on_level: LevelCallback | None = None,
        backend: PowerSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "battery",
    ) -> None:
        self.name = name
        self.config = config
        self.on_level = on_level
        self.low_power = False
        self.source: PowerSource | None = None
        self._owned = False
        if backend is not None or config.source != "none":
            self.source, self._owned = choose(
                backend, real=config.reader, sim=lambda: _simulator(config)
            )
        self._clock = clock
        self._rate = DischargeRate()
        self._percents: deque[float] = deque(maxlen=self.SMOOTHING)
        self._volts: deque[float] = deque(maxlen=self.SMOOTHING)
        self._last: PowerReading | None = None
        self._level: Level | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def poll_s(self) -> float:
        return self.config.save_poll_s if self.low_power else self.config.poll_s

    @property
    def level(self) -> Level | None:
        return self._level

    async def start(self) -> None:
        if self.source is None:
            return
        if self._owned:
            await self.source.start()
        self._task = asyncio.create_task(self._poll(), name=f"{self.name} poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.source is not None and self._owned:
            await self.source.close()

    async def read_now(self) -> Level | None:
        """Take one reading now (also what the poll loop does); the new level, if known."""
        if self.source is None:
            return None
        reading = await asyncio.to_thread(self.source.read)
        level = self._take(reading)
        if level is not None and self.on_level is not None:
            try:
                result = self.on_level(level)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener's bug must not stop the battery being watched
                log.exception("battery on_level listener failed")
        return level

    def state(self) -> DeviceState:
        if self.source is None:
            return DeviceState(self.name, self.kind, False, "未配置电池", "no battery configured")
        last, level = self._last, self._level
        detail: dict[str, str | int | float | bool | None] = {
            "source": self.source.describe,
            "poll_s": self.poll_s,
            "problems": " | ".join(last.problems) if last and last.problems else None,
        }
        if last is None or level is None or last.percent is None:
            why = last.problems[0] if last and last.problems else "尚未读取 / not read yet"
            zh, _, en = why.partition(" / ")
            return DeviceState(
                self.name, self.kind, False, f"电量未知：{zh}", f"level unknown: {en}", detail
            )
        detail |= {
            "percent": round(level.percent, 1),
            "volts": None if level.volts is None else round(level.volts, 3),
            "amps": None if last.amps is None else round(last.amps, 3),
            "on_mains": level.on_mains,
            "hours_left": None if level.hours_left is None else round(level.hours_left, 1),
        }
        power_zh, power_en = (
            ("外部供电", "on mains") if level.on_mains else ("电池供电", "on battery")
        )
        left_zh = left_en = ""
        if level.hours_left is not None:
            left_zh = f"，约剩 {level.hours_left:.1f} 小时"
            left_en = f", about {level.hours_left:.1f} h left"
        return DeviceState(
            self.name,
            self.kind,
            True,
            f"电量 {level.percent:.0f}%，{power_zh}{left_zh}",
            f"battery {level.percent:.0f} %, {power_en}{left_en}",
            detail,
        )

    async def _poll(self) -> None:
        while True:
            try:
                await self.read_now()
            except Exception:  # this loop must outlive any fault; the next poll retries
                log.exception("battery reading failed")
            await asyncio.sleep(self.poll_s)

    def _take(self, reading: PowerReading) -> Level | None:
        previous, self._last = self._last, reading
        if reading.problems and (previous is None or previous.problems != reading.problems):
            log.warning("battery: %s", "; ".join(reading.problems))
        if reading.percent is None:
            return None
        on_mains = bool(reading.on_mains)
        if self._level is not None and on_mains != self._level.on_mains:
            # Plugging in lifts the voltage at once: old samples would mislead both figures.
            self._percents.clear()
            self._volts.clear()
            self._rate.reset()
        self._percents.append(reading.percent)
        if reading.volts is not None:
            self._volts.append(reading.volts)
        percent = statistics.median(self._percents)
        hours = None
        if on_mains or reading.charging:
            self._rate.reset()
        else:
            self._rate.add(self._clock(), percent)
            hours = self._rate.hours_left(percent)
        volts = statistics.median(self._volts) if self._volts else None
        self._level = Level(percent, volts, on_mains, hours)
        return self._level


# --- policy ----------------------------------------------------------------------------


class PowerMode(enum.Enum):
    """How hard the kit saves power, least first."""

    NORMAL = "normal"
    SAVE = "save"  # shed bulk media uploads (P4), poll slower
    CRITICAL = "critical"  # flush and shut down cleanly

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {PowerMode.NORMAL: 0, PowerMode.SAVE: 1, PowerMode.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Percent levels of the policy (see :class:`PowerConfig`)."""

    save: float = 30.0
    critical: float = 10.0
    hysteresis: float = 5.0


def mode(
    percent: float | None, on_mains: bool, previous: PowerMode, thresholds: Thresholds
) -> PowerMode:
    """The power mode for a battery level, given the mode the kit is in.

    Mains always means NORMAL. An unknown level keeps the previous mode (a failed sensor
    must neither shut the kit down nor end power saving). Falling below a threshold
    enters its mode at once; a mode is left only once the level is ``hysteresis`` above
    its threshold, so a level wobbling around a threshold does not flap.
    """
    if on_mains:
        return PowerMode.NORMAL
    if percent is None:
        return previous
    t = thresholds
    if percent < t.critical or (
        previous is PowerMode.CRITICAL and percent < t.critical + t.hysteresis
    ):
        return PowerMode.CRITICAL
    if percent < t.save or (previous is not PowerMode.NORMAL and percent < t.save + t.hysteresis):
        return PowerMode.SAVE
    return PowerMode.NORMAL


class Action(enum.Enum):
    """What the owner process must do on a change of mode."""

    PAUSE_BULK = "pause_bulk"  # stop P4 bulk media uploads (they resume where they stopped)
    SLOW_POLLING = "slow_polling"  # devices and links poll at their power-save interval
    RESUME_BULK = "resume_bulk"
    NORMAL_POLLING = "normal_polling"
    SHUT_DOWN = "shut_down"  # run the ShutdownSequence


def actions(previous: PowerMode, new: PowerMode) -> list[Action]:
    """The owner's to-do list for ``previous`` → ``new``, in the order to do it."""
    out: list[Action] = []
    saving_before = previous is not PowerMode.NORMAL
    saving_now = new is not PowerMode.NORMAL
    if saving_now and not saving_before:
        out += [Action.PAUSE_BULK, Action.SLOW_POLLING]
    if saving_before and not saving_now:
        out += [Action.RESUME_BULK, Action.NORMAL_POLLING]
    if new is PowerMode.CRITICAL and previous is not PowerMode.CRITICAL:
        out.append(Action.SHUT_DOWN)
    return out


class PowerPolicy:
    """The current mode, kept for the owner: feed it levels, get each transition's actions."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.mode = PowerMode.NORMAL

    def update(self, level: Level) -> list[Action]:
        new = mode(level.percent, level.on_mains, self.mode, self.thresholds)
        todo = actions(self.mode, new)
        if new is not self.mode:
            log.warning(
                "power mode %s -> %s at %.0f %% (%s): %s",
                self.mode.value,
                new.value,
                level.percent,
                "mains" if level.on_mains else "battery",
                ", ".join(a.value for a in todo) or "nothing to do",
            )
        self.mode = new
        return todo


# --- shutting down ---------------------------------------------------------------------

Runner = Callable[[Sequence[str]], Awaitable[int]]
Step = Callable[[], Awaitable[object] | object]


async def run_command(command: Sequence[str]) -> int:
    """Run ``command`` and return its exit status (the default shutdown runner)."""
    proc = await asyncio.create_subprocess_exec(*command)
    return await proc.wait()


class ShutdownSequence:
    """A clean power-off: announce, let work settle, flush, then the shutdown command.

    Each step is the owner's (sync or async callable): ``announce(reason)`` publishes on
    the bus, ``settle()`` returns once in-flight work is done (waited for at most
    ``settle_timeout_s``), ``flush()`` makes the store durable (at most
    ``flush_timeout_s``). A step that fails or times out is logged and the sequence goes
    on: a kit with a dying battery must still power off cleanly. ``runner`` runs the
    command (tests pass a fake one, so they never shut anything down). The sequence runs
    once: a second :meth:`run` waits for the first and returns its result.
    """

    def __init__(
        self,
        *,
        announce: Callable[[str], Awaitable[object] | object],
        settle: Step,
        flush: Step,
        command: Sequence[str] = ("systemctl", "poweroff"),
        runner: Runner = run_command,
        settle_timeout_s: float = 30.0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        self._announce = announce
        self._settle = settle
        self._flush = flush
        self.command = tuple(command)
        self._runner = runner
        self._settle_s = settle_timeout_s
        self._flush_s = flush_timeout_s
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    async def run(self, reason: str) -> None:
        """Shut down for ``reason``; raises :class:`ShutdownFailed` if the command fails."""
        if self._task is None:
            self._task = asyncio.create_task(self._sequence(reason), name="shutdown")
        else:
            log.info("shutdown already under way; not starting it again (%s)", reason)
        await asyncio.shield(self._task)

    async def _sequence(self, reason: str) -> None:
        log.warning("shutdown 1/4: announcing (%s)", reason)
        await self._step("announce", lambda: self._announce(reason), None)
        log.warning("shutdown 2/4: letting in-flight work settle (at most %g s)", self._settle_s)
        await self._step("settle", self._settle, self._settle_s)
        log.warning("shutdown 3/4: flushing (at most %g s)", self._flush_s)
        await self._step("flush", self._flush, self._flush_s)
        line = shlex.join(self.command)
        log.warning("shutdown 4/4: running %s", line)
        try:
            status = await self._runner(self.command)
        except OSError as exc:
            log.error("shutdown command %s could not run: %s", line, exc)
            raise ShutdownFailed(
                f"关机命令无法运行：{line}（{exc.strerror or exc}）",
                f"shutdown command could not run: {line} ({exc.strerror or exc})",
            ) from exc
        if status != 0:
            log.error("shutdown command %s exited with %d", line, status)
            raise ShutdownFailed(
                f"关机命令 {line} 失败，退出码 {status}",
                f"shutdown command {line} failed with exit status {status}",
            )
        log.warning("shutdown command accepted; powering off")

    async def _step(self, name: str, step: Step, timeout: float | None) -> None:
        async def call() -> None:
            result = step()
            if inspect.isawaitable(result):
                await result

        try:
            await asyncio.wait_for(call(), timeout)
        except TimeoutError:
            log.error("shutdown step %s did not finish within %g s; going on", name, timeout)
        except Exception:
            log.exception("shutdown step %s failed; going on", name)
        else:
            log.info("shutdown step %s done", name)
