"""A simulated GNSS receiver on a real pty: a moving track, cold start, fix loss, its own clock.

The host opens :attr:`SimulatedReceiver.path` with pyserial (or points gpsd at it) exactly
as it would open ``/dev/ttyACM0``. Once per emulated second it sends RMC, GGA, GSA (one
per constellation, with the NMEA 4.10 system id when the talker is ``GN``) and GSV (per
constellation: ``GP``, ``GB`` or legacy ``BD``, ``GL``, ``GA``). ``speed`` 10 makes ten
emulated seconds pass in one real second: the track moves ten times faster and bytes
are paced as on a ``baudrate`` 8N1 line in emulated time. Time stamps are the receiver's
clock — the system clock plus ``clock_offset_s`` — in real time with centiseconds, as a
10 Hz receiver would stamp them, so tests can make GNSS time differ from system time.

Wire-side controls: :meth:`move_to` / :meth:`follow` (where it is and how it moves),
:meth:`lose_fix` / :meth:`regain_fix`, :meth:`set_clock` (or ``clock_offset_s``),
:meth:`inject` (garbage, truncated sentences, bad checksums), :meth:`reboot` (silence,
then a cold start), :meth:`unplug` / :meth:`plug` (the device node goes away and comes
back at the same ``link``).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol

from drivers.device import Lifecycle
from drivers.sentence import Sentence
from sim.pty import PtyNode, write_paced

Talker = Literal["GN", "GP", "GB", "BD"]
METRES_PER_DEGREE = 111_320.0
KNOTS_PER_MPS = 3600.0 / 1852.0
_SYSTEM_IDS = {"GPS": "1", "GLONASS": "2", "Galileo": "3", "BeiDou": "4"}
_GSV_TALKERS = {"GPS": "GP", "GLONASS": "GL", "Galileo": "GA", "BeiDou": "GB"}


@dataclass(frozen=True, slots=True)
class TrackPoint:
    lat: float
    lon: float
    speed_mps: float
    course_deg: float


class Track(Protocol):
    """Where the receiver is ``t_s`` emulated seconds after it started following the track."""

    def at(self, t_s: float) -> TrackPoint: ...


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point metres away (flat-earth: tracks are a few kilometres at most)."""
    dlat = north_m / METRES_PER_DEGREE
    dlon = east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def _heading(north_m: float, east_m: float) -> float:
    return math.degrees(math.atan2(east_m, north_m)) % 360.0


@dataclass(frozen=True, slots=True)
class Stationary:
    lat: float
    lon: float

    def at(self, t_s: float) -> TrackPoint:
        return TrackPoint(self.lat, self.lon, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Circle:
    """Round a centre at a steady speed, starting due north of it, clockwise."""

    lat: float
    lon: float
    radius_m: float = 200.0
    speed_mps: float = 1.4  # walking; 15 m/s is driving

    def at(self, t_s: float) -> TrackPoint:
        angle = self.speed_mps * t_s / self.radius_m
        north, east = self.radius_m * math.cos(angle), self.radius_m * math.sin(angle)
        lat, lon = _offset(self.lat, self.lon, north, east)
        return TrackPoint(lat, lon, self.speed_mps, _heading(-math.sin(angle), math.cos(angle)))


@dataclass(frozen=True, slots=True)
class Waypoints:
    """Straight legs between ``points`` at a steady speed; back to the first if ``loop``."""

    points: Sequence[tuple[float, float]]
    speed_mps: float = 1.4
    loop: bool = True

    def at(self, t_s: float) -> TrackPoint:
        legs = list(zip(self.points, self.points[1:], strict=False))
        if self.loop:
            legs.append((self.points[-1], self.points[0]))
        lengths = [_metres(a, b) for a, b in legs]
        total = sum(lengths)
        travelled = self.speed_mps * t_s
        if total == 0 or (not self.loop and travelled >= total):
            lat, lon = self.points[-1] if not self.loop else self.points[0]
            return TrackPoint(lat, lon, 0.0, 0.0)
        travelled %= total
        for (a, b), length in zip(legs, lengths, strict=True):
            if travelled <= length and length > 0:
                north, east = _vector(a, b)
                k = travelled / length
                lat, lon = _offset(a[0], a[1], north * k, east * k)
                return TrackPoint(lat, lon, self.speed_mps, _heading(north, east))
            travelled -= length
        lat, lon = self.points[0]
        return TrackPoint(lat, lon, self.speed_mps, 0.0)


def _vector(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    north = (b[0] - a[0]) * METRES_PER_DEGREE
    east = (b[1] - a[1]) * METRES_PER_DEGREE * math.cos(math.radians(a[0]))
    return north, east


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(*_vector(a, b))


@dataclass(frozen=True, slots=True)
class Timing:
    """Emulated seconds."""

    time_s: float = 1.0  # after power-on, until the receiver knows the time
    acquire_s: float = 5.0  # after power-on, until the first fix (a cold start)
    boot_s: float = 3.0  # silence of a module reboot


class Fault(Enum):
    GARBAGE = "garbage"  # 32 random bytes without $ or line ends
    TRUNCATED = "truncated"  # half a sentence, then the next one
    BAD_CHECKSUM = "bad_checksum"


@dataclass(frozen=True, slots=True)
class Output:
    """One epoch as sent: GNSS time, and the position if it was a fix."""

    time_ms: int | None
    lat: float | None
    lon: float | None


class SimulatedReceiver(Lifecycle):
    """A GNSS receiver module on a pty. See the module docstring for its controls."""

    def __init__(
        self,
        track: Track | None = None,
        *,
        start: tuple[float, float] = (30.6586, 104.0647),
        talker: Talker = "GN",
        systems: Mapping[str, tuple[int, int]] | None = None,
        speed: float = 1.0,
        timing: Timing = Timing(),
        link: str | os.PathLike[str] | None = None,
        baudrate: int = 9600,
        alt_m: float = 505.0,
        quality: int = 1,
        seed: int = 0,
    ) -> None:
        self.track: Track = track if track is not None else Stationary(*start)
        self.talker = talker
        # in view, used per constellation; a single-system talker only sees its own
        default = {"GP": {"GPS": (10, 7)}, "GB": {"BeiDou": (12, 8)}, "BD": {"BeiDou": (12, 8)}}
        self.systems = dict(systems or default.get(talker, {"GPS": (10, 7), "BeiDou": (12, 8)}))
        self.speed = speed
        self.timing = timing
        self.link = None if link is None else Path(link)
        self.baudrate = baudrate
        self.alt_m = alt_m
        self.quality = quality  # GGA quality while fixed: 1 GNSS, 2 DGNSS, 4 RTK
        self.clock_offset_s = 0.0  # the receiver's clock minus the system clock
        self.sent: deque[Output] = deque(maxlen=1000)  # bounded: may run for days
        self._rng = random.Random(seed)
        self._sky = {
            system: [
                (prn, self._rng.randint(5, 85), self._rng.randint(0, 359)) for prn in range(1, 33)
            ]
            for system in self.systems
        }
        self._t0 = time.monotonic()
        self._track_t0 = 0.0
        self._booted_at = 0.0
        self._silent_until = -math.inf
        self._fix_lost = False
        self._master: int | None = None
        self._pty = PtyNode(self.link, "simulated receiver")
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- life ----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """What the host opens: the ``link`` if given, else the pty's slave."""
        return self._pty.path

    def now(self) -> float:
        """Emulated seconds since the receiver was made."""
        return (time.monotonic() - self._t0) * self.speed

    async def start(self) -> None:
        await self.plug()

    async def close(self) -> None:
        await self.unplug()

    async def plug(self) -> None:
        """Power on with a fresh pty (a new device node), at ``link`` if given: a cold start."""
        if self._master is not None:
            return
        self._master = self._pty.open()
        self._booted_at = self.now()
        self._spawn(self._write_out())
        self._spawn(self._epochs())

    async def unplug(self) -> None:
        """The device goes away: the host reads end-of-file and the path disappears."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._out = asyncio.Queue()
        if self._master is not None:
            self._master = None
        self._pty.close()

    # --- wire-side controls --------------------------------------------------------------

    def move_to(self, lat: float, lon: float) -> None:
        """Stand still at a point."""
        self.follow(Stationary(lat, lon))

    def follow(self, track: Track) -> None:
        """Move along ``track`` from its start, from now on."""
        self.track, self._track_t0 = track, self.now()

    def position(self) -> TrackPoint:
        return self.track.at(self.now() - self._track_t0)

    def lose_fix(self) -> None:
        """The sky is blocked (a canyon, a tunnel): sentences go on, without a fix."""
        self._fix_lost = True

    def regain_fix(self) -> None:
        self._fix_lost = False

    def set_clock(self, epoch_s: float) -> None:
        """Set the receiver's clock; it then runs at the system clock's rate."""
        self.clock_offset_s = epoch_s - time.time()

    def inject(self, fault: Fault | bytes) -> None:
        """Put damage on the line towards the host (or exactly ``fault`` if it is bytes)."""
        if isinstance(fault, bytes):
            self._put(fault)
            return
        sample = Sentence(
            "GNRMC", ("120000.00", "V", "", "", "", "", "", "", "010125", "", "", "N")
        )
        data = sample.encode()
        if fault is Fault.GARBAGE:
            junk = bytes(b for b in self._rng.randbytes(96) if b not in b"$\r\n")
            self._put(junk[:32])
        elif fault is Fault.TRUNCATED:
            self._put(data[: len(data) // 2])
        else:
            self._put(data[:-4] + b"%02X\r\n" % (int(data[-4:-2], 16) ^ 0x5A))

    def reboot(self) -> None:
        """The module resets: silent for ``boot_s``, then a cold start without a fix."""
        self._silent_until = self.now() + self.timing.boot_s
        self._booted_at = self._silent_until
        while not self._out.empty():
            self._out.get_nowait()

    # --- the receiver --------------------------------------------------------------------

    async def _epochs(self) -> None:
        while True:
            if self.now() >= self._silent_until:
                self._epoch()
            await asyncio.sleep(1.0 / self.speed)

    def _epoch(self) -> None:
        up = self.now() - self._booted_at
        stamp = time.time() + self.clock_offset_s
        has_time = up >= self.timing.time_s
        fixed = has_time and up >= self.timing.acquire_s and not self._fix_lost
        clock = time.strftime("%H%M%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 100):02d}"
        date = time.strftime("%d%m%y", time.gmtime(stamp))
        hhmmss, ddmmyy = (clock, date) if has_time else ("", "")
        t = self.talker
        if fixed:
            p = self.position()
            lat, ns = ddmm(p.lat, 2, "NS")
            lon, ew = ddmm(p.lon, 3, "EW")
            mode = {2: "D", 4: "R", 5: "F"}.get(self.quality, "A")
            used = sum(u for _, u in self.systems.values())
            speed, course = f"{p.speed_mps * KNOTS_PER_MPS:.3f}", f"{p.course_deg:.2f}"
            self._emit(
                f"{t}RMC", hhmmss, "A", lat, ns, lon, ew, speed, course, ddmmyy, "", "", mode
            )
            self._emit(
                f"{t}GGA", hhmmss, lat, ns, lon, ew, str(self.quality), f"{used:02d}", "0.9",
                f"{self.alt_m:.1f}", "M", "-31.5", "M", "", "",
            )  # fmt: skip
            self.sent.append(Output(_ms(stamp), p.lat, p.lon))
        else:
            self._emit(f"{t}RMC", hhmmss, "V", "", "", "", "", "", "", ddmmyy, "", "", "N")
            self._emit(
                f"{t}GGA", hhmmss, "", "", "", "", "0", "00", "99.99", "", "", "", "", "", ""
            )
            self.sent.append(Output(_ms(stamp) if has_time else None, None, None))
        self._satellites(fixed)

    def _satellites(self, fixed: bool) -> None:
        for system, (in_view, used) in self.systems.items():
            sky = self._sky[system][:in_view]
            prns = [f"{prn:02d}" for prn, _, _ in sky[:used]] if fixed else []
            fields = ["A", "3" if fixed else "1", *(prns + [""] * 12)[:12], "1.6", "0.9", "1.3"]
            if self.talker == "GN":
                self._emit("GNGSA", *fields, _SYSTEM_IDS.get(system, ""))
            else:
                self._emit(f"{self.talker}GSA", *fields)
            talker = "BD" if self.talker == "BD" else _GSV_TALKERS.get(system, "GN")
            pages = max(1, math.ceil(len(sky) / 4))
            for page in range(pages):
                groups: list[str] = []
                for prn, elevation, azimuth in sky[page * 4 : page * 4 + 4]:
                    snr = str(self._rng.randint(30, 45)) if fixed else ""
                    groups += [f"{prn:02d}", str(elevation), f"{azimuth:03d}", snr]
                self._emit(f"{talker}GSV", str(pages), str(page + 1), f"{len(sky):02d}", *groups)

    # --- plumbing ------------------------------------------------------------------------

    def _emit(self, name: str, *fields: str) -> None:
        self._put(Sentence(name, fields).encode())

    def _put(self, data: bytes) -> None:
        if self._master is not None:
            self._out.put_nowait(data)

    async def _write_out(self) -> None:
        await write_paced(self._pty, self._out, self.baudrate / 10 * self.speed)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ms(epoch_s: float) -> int:
    """Unix milliseconds of a stamp as sent (centiseconds)."""
    return int(epoch_s) * 1000 + int(epoch_s % 1 * 100) * 10


def ddmm(value: float, width: int, sides: str) -> tuple[str, str]:
    """NMEA `(d)ddmm.mmmmm` and its hemisphere letter for signed degrees."""
    minutes = round(abs(value) * 60.0, 5)
    degrees = int(minutes // 60)
    return f"{degrees:0{width}d}{minutes - degrees * 60:08.5f}", sides[value < 0]
