"""The kit's side of the companion microcontroller (a Pico on the UART): battery, button, watchdog.

:class:`CompanionReader` is a :class:`drivers.power.PowerSource` (``power.source =
"companion"``): it keeps the serial line open (:class:`drivers.serialio.SerialPort`,
reopened on loss), sends ``HB`` and ``GET`` every ``heartbeat_s`` (the companion cuts the
Pi's power only when these stop, see ``firmware/supervisor.py``), and keeps the latest
``PWR`` reading for :meth:`CompanionReader.read`. The companion's events arrive as
callbacks, the way :class:`drivers.gpio.SosButton` hands over its presses: ``on_button``
gets ``"short"`` or ``"long"`` (sync or async, run in the reader's loop), ``on_event``
every event (``BOOT``, ``CYCLED``, ``LOW``, ``RESTORED``). Malformed frames are skipped
and counted (:attr:`CompanionReader.malformed`).

:func:`flash_main` is ``kit firmware flash``: it copies the firmware to the Pico with
``mpremote``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from drivers.power import PowerReading, percent_from_volts
from drivers.serialio import PortOffline, SerialPort
from edge.errors import KitError
from firmware import kitlink

log = logging.getLogger(__name__)

ButtonCallback = Callable[[str], Awaitable[None] | None]
EventCallback = Callable[["CompanionEvent"], Awaitable[None] | None]

HEARTBEAT_S = 5.0
STALE_AFTER = 3  # heartbeats without a reading: the reading is unknown
MV_RANGE = (0, 60000)
MA_RANGE = (-20000, 20000)
TEMP_RANGE = (-600, 1500)  # deci-°C
FIRMWARE_FILES = ("kitlink.py", "supervisor.py", "main.py")  # main.py last: it starts the loop


class CompanionError(KitError, RuntimeError):
    """The companion did not take a command, or could not be flashed."""


@dataclass(frozen=True, slots=True)
class CompanionEvent:
    """One ``EVT`` from the companion: ``name`` (BOOT, BTN, CYCLED, LOW, RESTORED), ``arg``."""

    name: str
    arg: str | None
    at: float  # time.monotonic() when it arrived


class CompanionReader:
    """Battery readings, heartbeats and button events over the companion's UART."""

    def __init__(
        self,
        device: str,
        *,
        baud: int = 115200,
        cells: int = 2,
        heartbeat_s: float = HEARTBEAT_S,
        watchdog_s: int | None = None,
        on_button: ButtonCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self.device = device
        self.cells = cells
        self.heartbeat_s = heartbeat_s
        self.watchdog_s = watchdog_s
        self.on_button = on_button
        self.on_event = on_event
        self.heartbeats = True  # False stops them (tests, and a kit about to be cut off)
        self.events: list[CompanionEvent] = []
        self.sent = 0
        self.answers = 0
        self._decoder = kitlink.Decoder()
        self._sender = kitlink.Sender()
        self._port = SerialPort(device, self._data, baudrate=baud)
        self._reading: tuple[float, PowerReading] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[str, tuple[str, ...]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def describe(self) -> str:
        return f"companion {self.device}"

    @property
    def malformed(self) -> int:
        """Frames dropped: bad checksum or grammar, or a well-formed frame with bad values."""
        return self._decoder.malformed + self._bad_values

    _bad_values = 0

    async def start(self) -> None:
        await self._port.start()
        self._task = asyncio.create_task(self._beat(), name=f"{self.describe} heartbeat")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for waiter in self._waiting.values():
            waiter.cancel()
        self._waiting.clear()
        await self._port.close()

    def read(self) -> PowerReading:
        if self._reading is None:
            return _unknown(
                f"伴随单片机 {self.device} 尚无读数 / no reading from the companion on "
                f"{self.device} yet"
            )
        at, reading = self._reading
        if time.monotonic() - at > STALE_AFTER * self.heartbeat_s:
            return _unknown(
                f"伴随单片机 {self.device} 无应答 / the companion on {self.device} is silent"
            )
        return reading

    async def command(
        self, kind: str, fields: tuple[str, ...] = (), timeout: float = 2.0
    ) -> tuple[str, tuple[str, ...]]:
        """Send one command; its answer (``ACK``, ``NAK`` or ``PWR``) — raises if none came."""
        seq = self._sender.seq
        frame = self._sender.frame(kind, fields)
        waiter: asyncio.Future[tuple[str, tuple[str, ...]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[seq] = waiter
        try:
            await self._port.write(frame)
            self.sent += 1
            return await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, PortOffline) as exc:
            raise CompanionError(
                f"伴随单片机未应答 {kind}", f"the companion did not answer {kind}"
            ) from exc
        finally:
            self._waiting.pop(seq, None)

    async def power_off_after(self, seconds: int) -> None:
        """Ask the companion to cut the Pi's power ``seconds`` from now (after a clean
        shutdown); raises :class:`CompanionError` unless it acknowledged."""
        await self._expect_ack("OFF", seconds)

    async def set_watchdog(self, seconds: int) -> None:
        """The companion's heartbeat timeout (0 turns its watchdog off)."""
        await self._expect_ack("WDT", seconds)

    async def _expect_ack(self, kind: str, seconds: int) -> None:
        answer, fields = await self.command(kind, (str(seconds),))
        if answer != "ACK":
            why = fields[1] if len(fields) > 1 else "?"
            raise CompanionError(
                f"伴随单片机拒绝 {kind} {seconds}（{why}）",
                f"the companion refused {kind} {seconds} ({why})",
            )

    # --- the line -------------------------------------------------------------------

    async def _beat(self) -> None:
        if self.watchdog_s is not None:
            await self._port_ready()
            with contextlib.suppress(CompanionError):
                await self.set_watchdog(self.watchdog_s)
        while True:
            if self.heartbeats:
                try:
                    await self.command("GET", timeout=self.heartbeat_s)
                except CompanionError as err:
                    log.debug("companion: %s", err)
            await asyncio.sleep(self.heartbeat_s)

    async def _port_ready(self) -> None:
        while not self._port.online:
            await asyncio.sleep(0.05)

    def _data(self, data: bytes) -> None:
        for seq, kind, fields in self._decoder.feed(data):
            self._frame(seq, kind, fields)

    def _frame(self, seq: int, kind: str, fields: tuple[str, ...]) -> None:
        if kind == "PWR":
            reading = self._power(fields)
            if reading is None:
                self._bad_values += 1
                return
            self._reading = (time.monotonic(), reading)
        if kind in ("PWR", "ACK", "NAK"):
            self.answers += 1
            ref = None if kind == "PWR" else kitlink.number(fields[0], 0, kitlink.MAX_SEQ)
            self._answer(ref, kind, fields)
        elif kind == "EVT":
            self._event(fields)
        else:
            self._bad_values += 1  # a command kind coming from the companion

    def _answer(self, ref: int | None, kind: str, fields: tuple[str, ...]) -> None:
        if ref is None:  # PWR names no seq: it answers the oldest GET waiting
            gets = sorted(self._waiting)
            ref = gets[0] if gets else None
        waiter = self._waiting.get(ref) if ref is not None else None
        if waiter is not None and not waiter.done():
            waiter.set_result((kind, fields))

    def _power(self, fields: tuple[str, ...]) -> PowerReading | None:
        mv = kitlink.number(fields[0], *MV_RANGE)
        ma = kitlink.number(fields[1], *MA_RANGE)
        temp = kitlink.number(fields[3], *TEMP_RANGE)
        if mv is None or ma is None or temp is None or fields[2] not in ("0", "1"):
            return None
        volts, amps, mains = mv / 1000, ma / 1000, fields[2] == "1"
        return PowerReading(
            percent_from_volts(volts, self.cells), volts, amps, mains, mains and amps > 0
        )

    def _event(self, fields: tuple[str, ...]) -> None:
        event = CompanionEvent(fields[0], fields[1] if len(fields) > 1 else None, time.monotonic())
        self.events.append(event)
        del self.events[:-64]
        log.warning("companion: %s %s", event.name, event.arg or "")
        if event.name == "BTN" and event.arg in ("short", "long") and self.on_button is not None:
            self._spawn(self.on_button, event.arg)
        if self.on_event is not None:
            self._spawn(self.on_event, event)

    def _spawn(self, callback: Callable[..., Awaitable[None] | None], arg: object) -> None:
        async def guarded() -> None:
            try:
                result = callback(arg)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a listener's bug must not cost the next event
                log.exception("companion event handler failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _unknown(problem: str) -> PowerReading:
    return PowerReading(None, None, None, None, None, (problem,))


# --- kit firmware flash ------------------------------------------------------------------


def firmware_dir() -> Path:
    """Where the firmware's files are (inside the installed package)."""
    return Path(kitlink.__file__).resolve().parent


def flash_commands(mpremote: str, device: str | None) -> list[list[str]]:
    """The mpremote runs that put the firmware on the board and restart it."""
    connect = [mpremote, "connect", device or "auto"]
    folder = firmware_dir()
    copies = [[*connect, "fs", "cp", str(folder / f), f":{f}"] for f in FIRMWARE_FILES]
    return [*copies, [*connect, "reset"]]


def flash_main(
    device: str | None,
    *,
    runner: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None,
) -> int:
    """``kit firmware flash [--device DEV]``: copy the firmware with mpremote, then reset."""
    mpremote = shutil.which("mpremote") or str(Path(sys.executable).with_name("mpremote"))
    if not Path(mpremote).exists():
        print(
            "错误 / error: 未找到 mpremote，请安装 fieldkit[firmware] / mpremote not found: "
            "install fieldkit[firmware] (pip install 'mpremote==1.29.0')",
            file=sys.stderr,
        )
        return 1
    if device is not None and not Path(device).exists():
        print(
            f"错误 / error: 没有设备 {device}：请检查 USB 线（Pico 须已装 MicroPython，"
            f"不在 BOOTSEL 模式）/ no device {device}: check the USB cable (the Pico must run "
            f"MicroPython, not be in BOOTSEL mode)",
            file=sys.stderr,
        )
        return 1

    def run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)

    runner = runner or run
    for cmd in flash_commands(mpremote, device):
        print(f"mpremote: {' '.join(cmd[3:])}", file=sys.stderr)
        try:
            result = runner(cmd)
        except subprocess.TimeoutExpired:
            print("错误 / error: mpremote 超时 / mpremote timed out", file=sys.stderr)
            return 1
        if result.returncode != 0:
            text = (result.stderr or result.stdout).strip()
            if "no device found" in text.lower() or "failed to access" in text.lower():
                print(
                    "错误 / error: 未找到运行 MicroPython 的 Pico，请用 USB 连接或用 --device "
                    "指定 / no board running MicroPython found: connect the Pico by USB or "
                    f"name it with --device ({text.splitlines()[-1] if text else 'mpremote'})",
                    file=sys.stderr,
                )
            else:
                print(f"错误 / error: mpremote 失败 / mpremote failed: {text}", file=sys.stderr)
            return 1
    print("已写入固件 / firmware flashed", file=sys.stderr)
    return 0
