"""GNSS receiver: the current fix from NMEA (serial or gpsd), fix loss, and the GNSS clock.

What the driver assumes where receivers differ:

- An epoch is the RMC and GGA sharing one UTC time; it is complete when both have come,
  or when a sentence of another time starts the next one (receivers set to send only
  one of them). GSV and GSA are kept per constellation for ``silence_s`` and joined to
  the epochs they arrive with.
- Quality: none unless RMC says ``A`` (mode not N/E/M/S) and GGA's quality is 1–5;
  GGA 2 is DGPS, 4/5 (RTK fixed/float, or RMC mode R/F) RTK; otherwise 2D/3D from GSA's
  fix type when one is fresh, else 3D when GGA gives an altitude from 4 or more
  satellites. Estimated (dead reckoning), manual and simulated fixes count as none.
- NMEA leaves the receiver up to a few hundred ms after its time of fix, so the clock
  offset (GNSS minus system) is the median over the recent valid RMCs of GNSS time
  minus the arrival time: it reads that much low; ``clock_tolerance_s`` absorbs it.
- Through gpsd the driver watches raw NMEA (``?WATCH={"enable":true,"nmea":true}``) and
  skips gpsd's JSON lines; gpsd runs ``-n -b`` on the image (see :func:`gpsd_default`),
  so it reads the device read-only and feeds chrony's shared memory itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from drivers.backend import SerialBackend, SerialDevice, choose
from drivers.clock import clock_synchronised
from drivers.device import Lifecycle
from drivers.nmea import KNOT_MPS, BadNmea, Gga, Gsa, Gsv, Rmc, parse
from drivers.sentence import StreamParser
from drivers.serialio import DEFAULT_BACKOFF, Backoff, SerialPort
from edge.errors import KitError
from edge.item import Position
from edge.topics import Detail, DeviceState

log = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 9600
GPSD_PORT = 2947
WATCH = b'?WATCH={"enable":true,"nmea":true}\n'
OFFSET_SAMPLES = 15  # recent RMCs the clock offset is the median of
MIN_OFFSET_SAMPLES = 3
STEP_HOLD_S = 60.0  # a clock that will not stay set is not stepped again sooner
_MAX_LINE = 4096


class BadSetting(KitError, ValueError):
    """A GNSS setting or image-file parameter the driver cannot use."""


class ClockNotSet(KitError, PermissionError):
    """The system clock could not be set from GNSS time."""


class FixQuality(enum.Enum):
    NONE = "none"
    FIX_2D = "2D"
    FIX_3D = "3D"
    DGPS = "DGPS"
    RTK = "RTK"


_QUALITY_ZH = {
    FixQuality.NONE: "无定位",
    FixQuality.FIX_2D: "2D 定位",
    FixQuality.FIX_3D: "3D 定位",
    FixQuality.DGPS: "差分定位",
    FixQuality.RTK: "RTK 定位",
}
_STEADY = frozenset({FixQuality.FIX_3D, FixQuality.DGPS, FixQuality.RTK})


@dataclass(frozen=True, slots=True)
class Fix:
    """Where the receiver is, and how well it knows it (one epoch)."""

    quality: FixQuality
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    satellites_used: int = 0
    used: dict[str, int] = field(default_factory=dict, hash=False)  # per constellation (GSA)
    in_view: dict[str, int] = field(default_factory=dict, hash=False)  # per constellation (GSV)
    hdop: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    time_ms: int | None = None  # GNSS UTC of the fix, Unix milliseconds

    @property
    def valid(self) -> bool:
        return self.quality is not FixQuality.NONE

    @property
    def position(self) -> Position | None:
        if not self.valid or self.lat is None or self.lon is None:
            return None
        accuracy = None if self.hdop is None else self.hdop * 5.0  # UERE of ~5 m, a rule of thumb
        return Position(self.lat, self.lon, self.alt_m, accuracy)


NO_FIX = Fix(FixQuality.NONE)


@dataclass(frozen=True, slots=True)
class Gpsd:
    """A gpsd to read NMEA from (the image runs one on localhost)."""

    host: str = "127.0.0.1"
    port: int = GPSD_PORT

    @property
    def path(self) -> str:
        return f"gpsd://{self.host}:{self.port}"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Source(Protocol):
    """Where NMEA bytes come from: a serial port or a gpsd connection."""

    opens: int

    @property
    def online(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class GpsdSource:
    """A gpsd watch kept open: NMEA lines to ``on_data``, reconnected after any loss."""

    def __init__(
        self,
        gpsd: Gpsd,
        on_data: Callable[[bytes], None],
        on_state: Callable[[bool], None],
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.gpsd = gpsd
        self.on_data = on_data
        self.on_state = on_state
        self.backoff = backoff
        self.opens = 0
        self._online = False
        self._task: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool:
        return self._online

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"gnss {self.gpsd.path}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay, quiet = self.backoff.first_s, False
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    self.gpsd.host, self.gpsd.port, limit=_MAX_LINE
                )
            except OSError as exc:
                if not quiet:  # one warning per outage, not one per retry
                    log.warning("%s: cannot connect (%s); retrying", self.gpsd.path, exc)
                    quiet = True
            else:
                quiet, delay = False, self.backoff.first_s
                try:
                    await self._watch(reader, writer)
                except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                    log.warning("%s: lost (%s); reconnecting", self.gpsd.path, exc)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    self._set(False)
            await asyncio.sleep(delay)
            delay = min(delay * self.backoff.factor, self.backoff.max_s)

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(WATCH)
        await writer.drain()
        self.opens += 1
        self._set(True)
        while line := await reader.readline():
            if not line.startswith(b"{"):  # gpsd's own reports are JSON; NMEA starts with $
                self.on_data(line)
        raise ConnectionError("gpsd closed the connection")

    def _set(self, online: bool) -> None:
        if online != self._online:
            self._online = online
            self.on_state(online)


def set_system_clock(epoch_s: float) -> None:
    """Step the system clock (``clock_settime(CLOCK_REALTIME)``); needs CAP_SYS_TIME.

    The standard library wraps the very system call, so no ctypes is needed.
    """
    try:
        time.clock_settime(time.CLOCK_REALTIME, epoch_s)
    except PermissionError:
        raise ClockNotSet(
            "无权设置系统时钟：需要 CAP_SYS_TIME（以 root 运行或授予该权限）",
            "not allowed to set the system clock: needs CAP_SYS_TIME "
            "(run as root or grant the capability)",
        ) from None
    except OSError as exc:
        raise ClockNotSet(
            f"设置系统时钟失败：{exc.strerror}", f"setting the system clock failed: {exc.strerror}"
        ) from None


@dataclass
class _Epoch:
    """The sentences of one time of fix."""

    time_ms: int | None
    rmc: Rmc | None = None
    gga: Gga | None = None
    done: bool = False


def _simulator() -> SerialBackend:
    # Loaded only when KIT_BACKEND=sim asks for it: a driver import must not pull in sim/.
    from sim.gnss import SimulatedReceiver

    return SimulatedReceiver()


class GnssReceiver(Lifecycle):
    """A GNSS receiver: current fix, fix loss, GNSS time and the system clock's offset.

    ``backend`` is a device path (read directly at ``baudrate``), a serial backend such as
    the simulator, a :class:`Gpsd`, or ``None`` for ``KIT_BACKEND``'s choice (the image's
    gpsd, or a new simulated receiver). ``on_fix`` gets the fix when its quality changes
    and at most once per ``fix_interval_s`` while there is one. ``clock_setter`` (such as
    :func:`set_system_clock`; off by default) steps the system clock when nothing else
    synchronised it, the offset exceeds ``clock_step_s`` and a 3D fix has lasted
    ``clock_steady_s``.
    """

    kind = "gnss"

    def __init__(
        self,
        backend: SerialBackend | Gpsd | str | None = None,
        *,
        name: str = "gnss",
        baudrate: int = DEFAULT_BAUDRATE,
        on_fix: Callable[[Fix], None] | None = None,
        fix_interval_s: float = 1.0,
        silence_s: float = 3.0,
        clock_tolerance_s: float = 1.0,
        clock_step_s: float = 2.0,
        clock_steady_s: float = 3.0,
        clock_setter: Callable[[float], None] | None = None,
        synchronised: Callable[[], bool] = clock_synchronised,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        if isinstance(backend, str | os.PathLike):
            backend = SerialDevice(os.fspath(backend))
        self.backend, self._owned = choose(backend, real=Gpsd, sim=_simulator)
        self.name = name
        self.baudrate = baudrate
        self.on_fix = on_fix
        self.fix_interval_s = fix_interval_s
        self.silence_s = silence_s
        self.clock_tolerance_s = clock_tolerance_s
        self.clock_step_s = clock_step_s
        self.clock_steady_s = clock_steady_s
        self.clock_setter = clock_setter
        self.clock_steps = 0
        self._synchronised = synchronised
        self._backoff = backoff
        self._parser = StreamParser()
        self._dropped: Counter[str] = Counter()
        self._source: Source | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._fix = NO_FIX
        self._why = ("未连接", "not connected")
        self._epoch = _Epoch(None, done=True)
        self._date_ms: int | None = None  # midnight of the last RMC's date
        self._in_view: dict[tuple[str, str | None], tuple[int, float]] = {}
        self._used: dict[str, tuple[int, int, float]] = {}  # constellation: count, type, at
        self._offsets: deque[float] = deque(maxlen=OFFSET_SAMPLES)
        self._steady_since_ms: int | None = None
        self._stepped_at = -STEP_HOLD_S
        self._step_error = ""
        self._heard_at = -1e18
        self._silent = True  # nothing heard yet, or the watchdog declared the silence
        self._heard = asyncio.Event()
        self._reported_at = -1e18
        self._reported = FixQuality.NONE

    # --- what the rest of the kit reads ----------------------------------------------------

    @property
    def fix(self) -> Fix:
        return self._fix

    @property
    def online(self) -> bool:
        """The source is connected and sentences are arriving (with or without a fix)."""
        source = self._source
        # The watchdog's verdict, not the clock: "offline" and "no fix" change together.
        return source is not None and source.online and not self._silent

    @property
    def dropped(self) -> Counter[str]:
        """What was received and thrown away, by reason (stream and sentence level)."""
        return self._parser.dropped + self._dropped

    @property
    def reconnects(self) -> int:
        return 0 if self._source is None else max(0, self._source.opens - 1)

    @property
    def clock_offset_s(self) -> float | None:
        """GNSS time minus system time (median of recent fixes); None until known."""
        if len(self._offsets) < MIN_OFFSET_SAMPLES:
            return None
        return statistics.median(self._offsets)

    @property
    def clock_ok(self) -> bool:
        """The system clock can stamp items: synchronised, or within tolerance of GNSS."""
        if self._synchronised():
            return True
        offset = self.clock_offset_s
        return offset is not None and abs(offset) <= self.clock_tolerance_s

    def gnss_time_ms(self) -> int | None:
        """Now in GNSS time (system clock plus the measured offset); None until measured."""
        offset = self.clock_offset_s
        return None if offset is None else round((time.time() + offset) * 1000)

    def state(self) -> DeviceState:
        fix, online = self._fix, self.online
        offset = self.clock_offset_s
        detail: Detail = {
            "quality": fix.quality.value,
            "lat": fix.lat if fix.valid else None,
            "lon": fix.lon if fix.valid else None,
            "alt_m": fix.alt_m if fix.valid else None,
            "hdop": fix.hdop,
            "speed_mps": fix.speed_mps,
            "course_deg": fix.course_deg,
            "satellites_used": fix.satellites_used,
            "satellites_in_view": sum(fix.in_view.values()),
            "fix_time_ms": fix.time_ms,
            "clock_offset_s": None if offset is None else round(offset, 3),
            "clock_ok": self.clock_ok,
            "clock_steps": self.clock_steps,
            "clock_step_error": self._step_error,
            "source": None if self._source is None else self.backend.path,
            "reconnects": self.reconnects,
            "dropped": sum(self.dropped.values()),
        }
        for system, count in fix.in_view.items():
            detail[f"in_view_{system.lower()}"] = count
        for system, count in fix.used.items():
            detail[f"used_{system.lower()}"] = count
        if fix.valid:
            zh = f"{_QUALITY_ZH[fix.quality]}，{fix.satellites_used} 颗卫星"
            en = f"{fix.quality.value} fix, {fix.satellites_used} satellites"
        else:
            zh, en = (f"无定位：{self._why[0]}", f"no fix: {self._why[1]}")
        return DeviceState(self.name, self.kind, online, zh, en, detail)

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the source; the fix follows whenever the receiver has one."""
        if self._owned:
            await self.backend.start()
        backend = self.backend
        if isinstance(backend, Gpsd):
            self._source = GpsdSource(backend, self._on_data, self._on_source, self._backoff)
        else:
            self._source = SerialPort(
                backend.path,
                self._on_data,
                on_state=self._on_source,
                baudrate=self.baudrate,
                backoff=self._backoff,
            )
        await self._source.start()
        self._watchdog = asyncio.create_task(self._watch_silence(), name="gnss silence")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._source is not None:
            await self._source.close()
        if self._owned:
            await self.backend.close()

    # --- reading -----------------------------------------------------------------------------

    def _on_source(self, up: bool) -> None:
        if not up and self._watchdog is not None:  # None: closing, which is no outage
            self._lose(("设备断开", "device disconnected"))

    async def _watch_silence(self) -> None:
        """Sleeps until sentences have stopped for ``silence_s``, then waits for them again."""
        while True:
            wait = self._heard_at + self.silence_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._lose((f"{self.silence_s:g} 秒无数据", f"no data for {self.silence_s:g} s"))
            self._silent = True
            self._heard.clear()
            await self._heard.wait()

    def _on_data(self, data: bytes) -> None:
        arrived = time.time()
        sentences = self._parser.feed(data)
        if not sentences:
            return
        self._heard_at = time.monotonic()
        self._silent = False
        self._heard.set()
        for sentence in sentences:
            try:
                message = parse(sentence)
            except BadNmea as err:
                self._dropped["bad_fields"] += 1
                log.debug("%s", err)
                continue
            if message is None:
                self._dropped["unknown"] += 1
            elif isinstance(message, Gsv):
                self._in_view[(message.constellation, message.signal_id)] = (
                    message.in_view,
                    self._heard_at,
                )
            elif isinstance(message, Gsa):
                entry = (len(message.prns), message.fix_type, self._heard_at)
                self._used[message.constellation] = entry
            else:
                self._add(message, arrived)

    def _add(self, message: Rmc | Gga, arrived: float) -> None:
        epoch = self._epoch
        if epoch.done or message.time_ms != epoch.time_ms:
            if not epoch.done:
                self._complete(epoch)
            epoch = self._epoch = _Epoch(message.time_ms)
        if isinstance(message, Rmc):
            epoch.rmc = message
            if message.epoch_ms is not None and message.time_ms is not None:
                self._date_ms = message.epoch_ms - message.time_ms
                if message.valid:
                    self._offsets.append(message.epoch_ms / 1000 - arrived)
        else:
            epoch.gga = message
        if epoch.rmc is not None and epoch.gga is not None:
            self._complete(epoch)

    def _complete(self, epoch: _Epoch) -> None:
        epoch.done = True
        fix = self._build(epoch)
        self._fix = fix
        if not fix.valid:
            self._why = ("卫星信号不足", "not enough satellites")
        self._track_steadiness(fix)
        self._report(fix)
        self._maybe_step_clock()

    def _build(self, epoch: _Epoch) -> Fix:
        rmc, gga = epoch.rmc, epoch.gga
        now = time.monotonic()
        fresh = now - self.silence_s
        in_view: dict[str, int] = {}
        for (system, _signal), (count, at) in self._in_view.items():
            if at >= fresh:
                in_view[system] = max(count, in_view.get(system, 0))
        gsa = {system: entry for system, entry in self._used.items() if entry[2] >= fresh}
        used = {system: count for system, (count, _, _) in gsa.items() if count}
        if not _has_fix(rmc, gga):
            return Fix(FixQuality.NONE, used=used, in_view=in_view, time_ms=self._time_of(epoch))
        source = gga or rmc
        assert source is not None  # _has_fix needs one of them
        alt = None if gga is None else gga.alt_m
        satellites = gga.satellites if gga is not None and gga.satellites is not None else 0
        satellites = satellites or sum(used.values())
        fix_type = max((entry[1] for entry in gsa.values()), default=None)
        return Fix(
            _quality(rmc, gga, fix_type, alt, satellites),
            lat=source.lat,
            lon=source.lon,
            alt_m=alt,
            satellites_used=satellites,
            used=used,
            in_view=in_view,
            hdop=gga.hdop if gga is not None else None,
            speed_mps=None if rmc is None or rmc.speed_kn is None else rmc.speed_kn * KNOT_MPS,
            course_deg=None if rmc is None else rmc.course_deg,
            time_ms=self._time_of(epoch),
        )

    def _time_of(self, epoch: _Epoch) -> int | None:
        if epoch.rmc is not None and epoch.rmc.epoch_ms is not None:
            return epoch.rmc.epoch_ms
        if epoch.time_ms is None or self._date_ms is None:
            return None
        return self._date_ms + epoch.time_ms

    def _lose(self, why: tuple[str, str]) -> None:
        self._why = why
        self._epoch = _Epoch(None, done=True)
        self._steady_since_ms = None
        self._fix = NO_FIX
        self._report(NO_FIX)

    def _report(self, fix: Fix) -> None:
        """``on_fix`` on a change of quality, and at most once per interval while fixed."""
        now = time.monotonic()
        changed = fix.quality is not self._reported
        if not changed and (not fix.valid or now - self._reported_at < self.fix_interval_s):
            return
        self._reported, self._reported_at = fix.quality, now
        if changed:
            log.info("GNSS %s", fix.quality.value if fix.valid else f"fix lost ({self._why[1]})")
        if self.on_fix is not None:
            try:
                self.on_fix(fix)
            except Exception:  # a listener's bug must not stop the reader
                log.exception("GNSS fix listener failed")

    # --- the system clock --------------------------------------------------------------------

    def _track_steadiness(self, fix: Fix) -> None:
        if fix.quality in _STEADY and fix.time_ms is not None:
            if self._steady_since_ms is None:
                self._steady_since_ms = fix.time_ms
        else:
            self._steady_since_ms = None

    def _maybe_step_clock(self) -> None:
        offset, since = self.clock_offset_s, self._steady_since_ms
        if self.clock_setter is None or offset is None or abs(offset) <= self.clock_step_s:
            return
        if since is None or self._fix.time_ms is None:
            return
        if self._fix.time_ms - since < self.clock_steady_s * 1000:
            return
        now = time.monotonic()
        if now - self._stepped_at < STEP_HOLD_S or self._synchronised():
            return
        self._stepped_at = now
        try:
            self.clock_setter(time.time() + offset)
        except (OSError, KitError) as exc:
            self._step_error = str(exc)
            log.error("cannot set the system clock from GNSS: %s", exc)
            return
        log.warning("system clock stepped by %+.3f s to GNSS time", offset)
        self.clock_steps += 1
        self._step_error = ""
        self._offsets.clear()  # measured against the clock before the step


def _has_fix(rmc: Rmc | None, gga: Gga | None) -> bool:
    if rmc is None and gga is None:
        return False
    if rmc is not None and (not rmc.valid or rmc.mode in ("E", "M", "S")):
        return False
    return gga is None or 1 <= gga.quality <= 5


def _quality(
    rmc: Rmc | None, gga: Gga | None, fix_type: int | None, alt: float | None, satellites: int
) -> FixQuality:
    quality = gga.quality if gga is not None else 0
    mode = rmc.mode if rmc is not None else ""
    if quality in (4, 5) or mode in ("R", "F"):
        return FixQuality.RTK
    if quality == 2 or mode == "D":
        return FixQuality.DGPS
    if fix_type is not None and fix_type >= 2:
        return FixQuality.FIX_3D if fix_type == 3 else FixQuality.FIX_2D
    return FixQuality.FIX_3D if alt is not None and satellites >= 4 else FixQuality.FIX_2D


# --- files for the Pi image ------------------------------------------------------------------


def gpsd_default(device: str) -> str:
    """``/etc/default/gpsd``: gpsd reads ``device`` from boot (``-n``) and never writes to it
    (``-b``), so chrony gets time before any client connects and the module keeps its setup."""
    if not device.startswith("/dev/") or any(c in device for c in " \t\n\"'$`\\"):
        raise BadSetting(
            f"GNSS 设备路径无效：{device!r}（应为 /dev/ 下的路径，不含空白或引号）",
            f"invalid GNSS device path {device!r} (a path under /dev/ without spaces or quotes)",
        )
    return (
        "# Written by the kit image: gpsd owns the GNSS receiver and feeds chrony.\n"
        'START_DAEMON="true"\n'
        'USBAUTO="false"\n'
        f'DEVICES="{device}"\n'
        'GPSD_OPTIONS="-n -b"\n'
    )


def chrony_conf(*, nmea_offset_s: float = 0.2, pps_device: str | None = None) -> str:
    """``/etc/chrony/chrony.conf`` for a Pi without RTC: GNSS time via gpsd's shared memory.

    NMEA alone is late and jittery (tens to hundreds of ms): ``offset`` corrects the mean
    delay of the receiver in use, ``delay`` keeps chrony from trusting it beyond that, and
    a wide ``precision`` says so. ``makestep 1 3`` steps the clock on the first three
    updates (the Pi boots in 1970 or at the last shutdown). A wired PPS is locked to NMEA
    for the second it marks; without one its line stays commented out.
    """
    pps = (
        f"refclock PPS {pps_device} lock NMEA refid PPS precision 1e-7"
        if pps_device
        else "#refclock PPS /dev/pps0 lock NMEA refid PPS precision 1e-7"
    )
    return (
        "# Written by the kit image: time from GNSS (gpsd -n writes SHM 0), then network.\n"
        f"refclock SHM 0 refid NMEA offset {nmea_offset_s:.3f} delay 0.2 precision 1e-1\n"
        f"{pps}\n"
        "makestep 1 3\n"
        "driftfile /var/lib/chrony/chrony.drift\n"
        "# Network time when the kit has a path to it; GNSS keeps it right without one.\n"
        "pool pool.ntp.org iburst\n"
        "leapsectz right/UTC\n"
    )
