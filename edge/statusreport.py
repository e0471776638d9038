"""The kit's periodic status item: battery, power, backlog, links, disk and GNSS for the centre.

The edge daemon files one ``sensor`` item of source ``kit:status`` (P2: a newer one
supersedes an older one still waiting) every ``status.interval_s``, and sooner when
something the centre must know changed since the last one it filed: the battery crossed
50, 20 or 10 %, a link went up or down, the P0/P1 backlog changed, the power mode
changed. Never more often than ``status.min_interval_s``: a narrow link is not flooded.
The first one comes ``status.min_interval_s`` after the daemon starts.
It is filed even below ``edge.reserve_mb`` (a few dozen bytes every few minutes, and it
is what tells the centre the disk is nearly full).

Size: the status always fits ONE 78-byte Beidou message (77-byte frame, tag included),
so it travels unchanged on every link. Its data keys have one-byte codes in
:mod:`uplink.compact` (DATA_KEYS) and its source has a one-byte code; the one field of
unbounded length, ``links``, is shortened until the whole item fits (see
:func:`format_links`). The same item goes to the centre over IP, uncut.

``links`` is text: ``name+`` (online) or ``name-`` (offline) tokens separated by spaces;
a shortened one replaces the links it no longer names by count tokens ``+N`` (N more
online) and ``-N`` (N more offline). Link names never start with ``+`` or ``-``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.power import PowerMode
from drivers.power import mode as power_mode
from edge.item import MAX_DATA_STR, DataValue, Item, Kind, Priority, new_item
from uplink import compact
from uplink.frames import MTU_BEIDOU, SINGLE_OVERHEAD

if TYPE_CHECKING:
    from edge.daemon import EdgeDaemon

log = logging.getLogger("edge.status")
T = TypeVar("T")

SOURCE = "kit:status"
BATTERY_STEPS = (50, 20, 10)  # crossing one of these (either way) is worth a status
STALE_S = 120.0  # a report older than this: its process is gone (links count as offline)
TICK_S = 5.0  # how often the reporter looks (at most a quarter of min_interval_s)
# Room for the item in one Beidou frame: the frame's MTU less header and tag.
BEIDOU_ROOM = MTU_BEIDOU - SINGLE_OVERHEAD
# The status's own seq is not known before it is stored: size it as a large one (5 bytes).
SIZING_SEQ = 2**35 - 1

_COUNT_TOKEN = re.compile(r"[+-][0-9]{1,4}\Z")
_NAME_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}[+-]\Z")


class StatusConfig(BaseModel):
    """How often the kit tells the centre how it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        True,
        title="发送状态 / Send status",
        description="File the kit's status (battery, power mode, backlog, links, disk, GNSS "
        "fix) for the command centre's dashboard.",
    )
    interval_s: int = Field(
        600,
        title="状态间隔 / Status interval",
        description="Seconds between two status reports when nothing important changes.",
        ge=60,
        le=86_400,
    )
    min_interval_s: int = Field(
        120,
        title="最短状态间隔 / Shortest status interval",
        description="Least seconds between two status reports, even when the battery crosses "
        "50/20/10 %, a link goes up or down or the P0/P1 backlog changes: narrow links "
        "(one Beidou message a minute) are never flooded.",
        ge=5,
        le=86_400,
    )

    @model_validator(mode="after")
    def _shortest_first(self) -> StatusConfig:
        if self.min_interval_s > self.interval_s:
            raise ValueError("min_interval_s must not exceed interval_s")
        return self


@dataclass(frozen=True, slots=True)
class KitStatus:
    """What the kit knows of itself at one moment; None: not known."""

    backlog: Mapping[Priority, int]  # items not yet acknowledged, per class
    disk_pct: int | None = None
    battery_pct: int | None = None
    hours_left: float | None = None
    mains: bool | None = None
    power: str | None = None  # "normal" | "save" | "critical"
    links: tuple[tuple[str, bool], ...] = ()  # (name, online), by name
    fix: bool | None = None

    def urgent(self) -> tuple[int, int]:
        return self.backlog.get(Priority.P0, 0), self.backlog.get(Priority.P1, 0)

    def data(self, link_chars: int | None = None) -> dict[str, DataValue]:
        """The item's data; ``link_chars`` bounds the ``links`` text (None: all of it;
        0 or less: no links at all)."""
        out: dict[str, DataValue] = {
            "backlog": sum(self.backlog.values()),
            "backlog_p0": self.urgent()[0],
            "backlog_p1": self.urgent()[1],
        }
        optional: dict[str, DataValue | None] = {
            "battery_pct": self.battery_pct,
            "hours_left": None if self.hours_left is None else round(self.hours_left),
            "mains": self.mains,
            "power": self.power,
            "disk_pct": self.disk_pct,
            "fix": self.fix,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        if self.links and (link_chars is None or link_chars > 0):
            out["links"] = format_links(self.links, link_chars)
        return out


def battery_step(percent: int | None) -> int | None:
    """How many of BATTERY_STEPS the level is below (None: unknown)."""
    return None if percent is None else sum(percent < step for step in BATTERY_STEPS)


def changes(told: KitStatus, now: KitStatus) -> list[str]:
    """What changed since the centre was told ``told`` that warrants a status before its
    interval; empty when nothing did. A change that came and went in between is no change."""
    out: list[str] = []
    if battery_step(told.battery_pct) != battery_step(now.battery_pct):
        out.append(f"battery {now.battery_pct} %")
    if dict(told.links) != dict(now.links):
        out.append("links " + format_links(now.links))
    if told.urgent() != now.urgent():
        out.append("P0/P1 backlog {} / {}".format(*now.urgent()))
    if told.power != now.power:
        out.append(f"power {now.power}")
    return out


def format_links(links: Sequence[tuple[str, bool]], max_chars: int | None = None) -> str:
    """``beidou+ vsat-``; past ``max_chars`` the last named links give way to ``+N``/``-N``."""
    named = list(links)
    while True:
        rest = links[len(named) :]
        up = sum(1 for _, online in rest if online)
        tokens = [f"{name}{'+' if online else '-'}" for name, online in named]
        tokens += [f"{sign}{n}" for sign, n in (("+", up), ("-", len(rest) - up)) if n]
        text = " ".join(tokens)
        if max_chars is None or len(text) <= max_chars or not named:
            return text
        named.pop()


@dataclass(frozen=True, slots=True)
class ReportedLinks:
    """The ``links`` of a status as the centre reads it."""

    links: dict[str, bool] = field(default_factory=dict)  # named: online?
    more_up: int = 0  # links online the shortened text does not name
    more_down: int = 0


def parse_links(text: object) -> ReportedLinks:
    """Read a status's ``links`` (outside input): malformed tokens are skipped, never raise."""
    if not isinstance(text, str):
        return ReportedLinks()
    links: dict[str, bool] = {}
    more = {"+": 0, "-": 0}
    for token in text.split(" ")[:64]:
        if _COUNT_TOKEN.match(token):
            more[token[0]] += int(token[1:])
        elif _NAME_TOKEN.match(token):
            links[token[:-1]] = token[-1] == "+"
    return ReportedLinks(links, more["+"], more["-"])


def packed_size(item: Item) -> int:
    """Bytes the item takes in an ITEMS payload (compact encoding), sized for a large seq."""
    return len(compact.pack_item(SIZING_SEQ, item))


def status_item(status: KitStatus, *, created_ms: int | None = None) -> Item:
    """The status as an item that fits one Beidou message (its links shortened if needed)."""
    link_chars: int | None = MAX_DATA_STR  # an item's text field holds no more
    while True:
        item = new_item(
            Kind.SENSOR, source=SOURCE, data=status.data(link_chars), created_ms=created_ms
        )
        over = packed_size(item) - BEIDOU_ROOM
        if over <= 0:
            return item
        text = str(item.data.get("links", ""))
        if not text:  # cannot happen with the fields above; say so rather than loop
            raise AssertionError(f"a status without links is {over} bytes too large")
        # Shorter by the overflow; when not even the counts fit (the text is over its
        # bound already), no links at all.
        counts_only = link_chars is not None and len(text) > link_chars
        link_chars = 0 if counts_only else len(text) - over


async def read_status(daemon: EdgeDaemon) -> KitStatus:
    """The kit's status from what the edge daemon holds: the store's counts and the latest
    reports of the other processes on the bus."""
    now = time.monotonic()
    backlog = await daemon.store.queued()

    links = tuple(
        (name, bool(state.online) and now - at <= STALE_S)
        for name, (at, state) in sorted(daemon.links.items())
    )
    battery = _fresh(daemon.battery, now)
    if battery is not None and not all(
        map(math.isfinite, (battery.percent, battery.hours_left or 0))
    ):
        battery = None  # nonsense from a driver is not a reading
    fix = _fresh(daemon.fix, now)
    gnss = [d for at, d in daemon.devices.values() if d.kind == "gnss" and now - at <= STALE_S]
    power = None if daemon.power_mode is None else daemon.power_mode[1].mode
    if power is None and battery is not None:
        # The drivers publish the mode only when it changes: until then (or after this
        # daemon restarted) it follows from the level by the drivers' own policy.
        policy = daemon.config.power.thresholds
        power = power_mode(battery.percent, battery.on_mains, PowerMode.NORMAL, policy).value
    return KitStatus(
        backlog=backlog,
        disk_pct=disk_percent(daemon.store.path.parent),
        battery_pct=None if battery is None else round(battery.percent),
        hours_left=None if battery is None else battery.hours_left,
        mains=None if battery is None else battery.on_mains,
        power=power,
        links=links,
        fix=True if fix is not None else (False if gnss else None),
    )


def _fresh(report: tuple[float, T] | None, now: float) -> T | None:
    """The message of a (received at, message) report, unless it is stale."""
    return None if report is None or now - report[0] > STALE_S else report[1]


def disk_percent(folder: Path) -> int | None:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return round(100 * (usage.total - usage.free) / usage.total) if usage.total else None


Filer = Callable[[Item], Awaitable[dict[str, Any]]]


class StatusReporter:
    """Decides when a status is due and files it; :meth:`step` is one look."""

    def __init__(
        self,
        config: StatusConfig,
        read: Callable[[], Awaitable[KitStatus]],
        file: Filer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.read = read
        self.file = file
        self.clock = clock
        self.started = clock()
        self.told: KitStatus | None = None  # what the last filed status said
        self.last_at: float | None = None  # when a status was last filed (or tried)
        self.filed = 0

    @property
    def tick_s(self) -> float:
        return min(TICK_S, self.config.min_interval_s / 4)

    def due(self, status: KitStatus, now: float) -> str | None:
        """Why a status is due now, or None."""
        if self.last_at is None:
            # By then every process has reported; and a daemon restarting over and over
            # (a crash loop, a flapping power supply) cannot flood a narrow link either.
            return "first" if now - self.started >= self.config.min_interval_s else None
        since = now - self.last_at
        if since >= self.config.interval_s:
            return "interval"
        if since < self.config.min_interval_s:
            return None
        if self.told is None:  # the last attempt failed: try again
            return "retry"
        found = changes(self.told, status)
        return ", ".join(found) if found else None

    async def step(self) -> str | None:
        """Look once; file a status if one is due. Returns why one was filed, or None."""
        status = await self.read()
        now = self.clock()
        reason = self.due(status, now)
        if reason is None:
            return None
        item = status_item(status)
        self.last_at = now  # a failed filing waits min_interval_s too
        answer = await self.file(item)
        if not answer.get("ok"):
            error = answer.get("error", {})
            log.warning("status not filed: %s", error.get("en", error))
            self.told = None
            return None
        self.told = status
        self.filed += 1
        log.info("status #%s filed (%s): %s", answer.get("seq"), reason, dict(item.data))
        return reason

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # the status is a convenience: it must never stop the daemon
                log.exception("status report failed")
            await asyncio.sleep(self.tick_s)


def reporter_for(daemon: EdgeDaemon, config: StatusConfig) -> StatusReporter:
    return StatusReporter(config, lambda: read_status(daemon), daemon.file)
