"""A simulated battery, seen through a fake sysfs tree and a fake INA219, for the real readers.

:class:`SimBattery` holds energy in Wh and drains it at ``load_w`` (or charges at
``charge_w`` while ``mains`` is on) over emulated time: ``speed`` emulated seconds per
second of ``clock``. Its voltage follows :data:`drivers.power.LI_ION_CURVE` at rest (no
sag under load is modelled).

It is shown to the drivers two ways, so the same readers run against it as on a Pi:

- :class:`SysfsTree` writes ``BAT0/`` and ``AC/`` as the kernel's
  ``/sys/class/power_supply`` does, into a folder of its own, and rewrites them as the
  battery changes; ``fault`` puts garbage into an attribute.
- :class:`FakeINA219` has :class:`smbus2.SMBus`'s word methods and answers as the chip
  does: registers 0x00–0x05, big-endian words over a little-endian SMBus, current and
  power only once calibrated, reset by the RST bit or a brown-out, and ``OSError``
  (errno 121, as the i2c-dev driver reports a missing chip) at another address or
  when ``fail`` is set.

:class:`SimulatedPower` is the ``KIT_BACKEND=sim`` power source: one of the two with the
matching real reader, and the battery in reach (``source.battery.mains = True``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from drivers.power import (
    BUS_CNVR,
    BUS_LSB_V,
    BUS_OVF,
    CONFIG_RESET,
    REG_BUS,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT,
    SHUNT_LSB_V,
    INA219Reader,
    PowerReading,
    PowerSource,
    SysfsReader,
    swap16,
    volts_from_percent,
)

CONFIG_DEFAULT = 0x399F  # INA219 power-on config: 32 V, /8, 12-bit, continuous
PGA_RANGE_V = (0.04, 0.08, 0.16, 0.32)  # by config bits 12..11


class SimBattery:
    """A Li-ion pack draining or charging over emulated time."""

    def __init__(
        self,
        *,
        capacity_wh: float = 100.0,
        percent: float = 80.0,
        load_w: float = 8.0,
        charge_w: float = 20.0,
        mains: bool = False,
        cells: int = 2,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity_wh = capacity_wh
        self.cells = cells
        self.speed = speed
        self._clock = clock
        self._energy_wh = capacity_wh * percent / 100.0
        self._load_w = load_w
        self._charge_w = charge_w
        self._mains = mains
        self._at = clock()

    def now(self) -> float:
        """Emulated seconds (the clock the driver under test should use)."""
        return self._clock() * self.speed

    @property
    def load_w(self) -> float:
        return self._load_w

    @load_w.setter
    def load_w(self, watts: float) -> None:
        self._advance()
        self._load_w = watts

    @property
    def mains(self) -> bool:
        return self._mains

    @mains.setter
    def mains(self, on: bool) -> None:
        self._advance()
        self._mains = on

    @property
    def percent(self) -> float:
        self._advance()
        return 100.0 * self._energy_wh / self.capacity_wh

    @property
    def volts(self) -> float:
        return volts_from_percent(self.percent, self.cells)

    @property
    def amps(self) -> float:
        """Battery current: + charging, − discharging."""
        percent = self.percent
        if self._mains:
            return self._charge_w / self.volts if percent < 100.0 else 0.0
        return -self._load_w / self.volts if percent > 0.0 else 0.0

    @property
    def status(self) -> str:
        if not self._mains:
            return "Discharging"
        return "Full" if self.percent >= 100.0 else "Charging"

    def hours_left(self) -> float | None:
        """The truth, to compare the driver's estimate with."""
        if self._mains or self._load_w <= 0:
            return None
        return self._energy_wh / self._load_w

    def _advance(self) -> None:
        now = self._clock()
        hours = (now - self._at) * self.speed / 3600.0
        self._at = now
        watts = self._charge_w if self._mains else -self._load_w
        self._energy_wh = min(self.capacity_wh, max(0.0, self._energy_wh + watts * hours))


class SysfsTree:
    """``/sys/class/power_supply`` for a :class:`SimBattery`, in ``root`` (``BAT0``, ``AC``)."""

    def __init__(self, battery: SimBattery, root: Path) -> None:
        self.battery = battery
        self.root = root
        self.fault: dict[str, str] = {}  # attribute of BAT0 -> text written instead

    def update(self) -> None:
        b = self.battery
        volts, amps = b.volts, b.amps
        battery = {
            "type": "Battery",
            "present": "1",
            "technology": "Li-ion",
            "status": b.status,
            "capacity": str(round(b.percent)),
            "voltage_now": str(round(volts * 1e6)),
            "current_now": str(round(amps * 1e6)),
        } | self.fault
        self._write("BAT0", battery)
        self._write("AC", {"type": "Mains", "online": "1" if b.mains else "0"})

    def _write(self, supply: str, attrs: dict[str, str]) -> None:
        folder = self.root / supply
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in attrs.items():
            # Whole files at once, as sysfs shows them: a reader never sees half a value.
            tmp = folder / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="ascii")
            os.replace(tmp, folder / name)


class FakeINA219:
    """An INA219 on an I2C bus, with :class:`smbus2.SMBus`'s word methods."""

    def __init__(self, battery: SimBattery, *, address: int = 0x42, shunt_ohms: float = 0.1):
        self.battery = battery
        self.address = address
        self.shunt_ohms = shunt_ohms
        self.fail = False  # the chip stops answering (loose wire, dead HAT)
        self.writes: list[tuple[int, int]] = []  # (register, value) as the chip understood them
        self._config = CONFIG_DEFAULT
        self._calibration = 0

    def brownout(self) -> None:
        """Power glitch: every register back to its power-on value, calibration lost."""
        self._config, self._calibration = CONFIG_DEFAULT, 0

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        self._check(i2c_addr)
        return swap16(self._register(register))

    def write_word_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self._check(i2c_addr)
        word = swap16(value)
        self.writes.append((register, word))
        if register == REG_CONFIG:
            if word & CONFIG_RESET:
                self.brownout()
            else:
                self._config = word
        elif register == REG_CALIBRATION:
            self._calibration = word & 0xFFFE  # bit 0 is not implemented
        elif register > REG_CALIBRATION:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        # writes to the read-only measurement registers are acknowledged and ignored

    def close(self) -> None:
        return None

    def _check(self, address: int) -> None:
        if self.fail or address != self.address:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))

    def _register(self, register: int) -> int:
        if register == REG_CONFIG:
            return self._config
        if register == REG_CALIBRATION:
            return self._calibration
        if register > REG_CALIBRATION:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        shunt, clipped = self._shunt()
        bus, bus_over = self._bus()
        current = int(shunt * self._calibration / 4096)  # the chip truncates toward zero
        over = clipped or bus_over or not -0x8000 <= current <= 0x7FFF
        if register == REG_SHUNT:
            return shunt & 0xFFFF
        if register == REG_BUS:
            return bus << 3 | BUS_CNVR | (BUS_OVF if over else 0)
        if register == REG_CURRENT:
            return max(-0x8000, min(0x7FFF, current)) & 0xFFFF
        assert register == REG_POWER
        return min(0xFFFF, abs(current) * bus // 5000)

    def _shunt(self) -> tuple[int, bool]:
        """Shunt register (10 µV, signed) and whether the PGA range clipped it."""
        limit = PGA_RANGE_V[self._config >> 11 & 0x3]
        volts = self.battery.amps * self.shunt_ohms
        clipped = abs(volts) > limit
        volts = max(-limit, min(limit, volts))
        return round(volts / SHUNT_LSB_V), clipped

    def _bus(self) -> tuple[int, bool]:
        full_scale = 32.0 if self._config & 0x2000 else 16.0
        volts = self.battery.volts
        return round(min(volts, full_scale) / BUS_LSB_V), volts > full_scale


class SimulatedPower:
    """The ``KIT_BACKEND=sim`` power source: a :class:`SimBattery` behind a real reader.

    ``kind`` ``"sysfs"`` keeps a :class:`SysfsTree` in a temporary folder, rewritten every
    ``update_s`` (real seconds) while started; ``"ina219"`` puts a :class:`FakeINA219`
    on the reader's bus.
    """

    def __init__(
        self,
        kind: Literal["sysfs", "ina219"] = "sysfs",
        battery: SimBattery | None = None,
        *,
        cells: int = 2,
        address: int = 0x42,
        update_s: float = 5.0,
    ) -> None:
        self.kind = kind
        self.battery = battery or SimBattery(cells=cells)
        self.update_s = update_s
        self.tree: SysfsTree | None = None
        self.chip: FakeINA219 | None = None
        self.reader: PowerSource | None = None
        self._task: asyncio.Task[None] | None = None
        if kind == "ina219":
            chip = self.chip = FakeINA219(self.battery, address=address)
            self.reader = INA219Reader(address=address, cells=cells, smbus=lambda _bus: chip)

    @property
    def describe(self) -> str:
        return f"simulated {self.kind} battery"

    def read(self) -> PowerReading:
        if self.reader is None:
            return PowerReading(
                None, None, None, None, None, ("模拟电池未启动 / simulated battery not started",)
            )
        return self.reader.read()

    async def start(self) -> None:
        """Make the sysfs folder and keep it current (nothing to do for the INA219)."""
        if self.kind == "sysfs" and self.tree is None:
            tree = self.tree = SysfsTree(self.battery, Path(tempfile.mkdtemp(prefix="kit-power-")))
            tree.update()
            self.reader = SysfsReader(root=tree.root)
            self._task = asyncio.create_task(self._keep_updating(), name="sim sysfs battery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.reader is not None:
            await self.reader.close()
        if self.tree is not None:
            shutil.rmtree(self.tree.root, ignore_errors=True)
            self.tree = None
            self.reader = None

    async def _keep_updating(self) -> None:
        tree = self.tree
        assert tree is not None
        while True:
            await asyncio.sleep(self.update_s)
            tree.update()
