"""Scenario files: the emulated links of a test or demo, and their outages, in TOML.

A scenario has an optional ``description``, a ``seed`` (loss and jitter repeat run to
run) and one ``[[links]]`` table per link::

    description = "VSAT that drops out, Beidou, and a LoRa mesh neighbour"
    seed = 0

    [[links]]
    name = "vsat"              # unique; lower-case letters, digits, - and _
    kind = "ip"                # ip | tiantong_data | tiantong_sms | beidou | mesh
    rate = 250_000             # bytes/s kit → centre (2 Mbit/s)
    rate_down = 1_250_000      # bytes/s centre → kit; default: as rate
    rtt = 0.6                  # seconds; each direction adds rtt/2
    jitter = 0.02              # seconds, ± on each one-way delay
    loss = 0.01                # probability a frame is lost
    mtu = 1500                 # bytes; larger frames are refused
    buffer = 262_144           # transmit buffer per direction, bytes (>= mtu)
    cost_per_byte = 0.00001
    cost_per_message = 0.0
    min_interval = 0           # seconds between frames from one end (Beidou: 60)
    outages = [[120, 150], [300, 330]]   # [down, up] seconds from start; up may be inf
    flap_s = 0                 # a flap every this many seconds (down a quarter of it)
    duplicate = 0.0            # `kit sim`: probability a frame (IP: a request) comes twice
    reorder = 0.0              # `kit sim`, narrow links: probability a frame is held back

Only ``name``, ``kind`` and ``rate`` are required; the rest default to a perfect link
(no delay, loss, cost or interval; MTU 1,500; buffer 64 KiB; always up). Times are in
seconds, sizes in bytes. ``mtu`` may not exceed what the kind can carry: ``mesh`` 233,
``beidou`` 1,750, ``tiantong_sms`` 140. ``load_scenario`` reports every mistake at once,
each with its key path, e.g. ``links[0].rtte: 未知的键 / unknown key``.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from edge.errors import KitError
from sim.linkemu import Clock, EmulatedLink, LinkConditions, Outage, check_outages


class LinkKind(StrEnum):
    """What sort of link a scenario entry stands for."""

    IP = "ip"
    TIANTONG_DATA = "tiantong_data"
    TIANTONG_SMS = "tiantong_sms"
    BEIDOU = "beidou"
    MESH = "mesh"


# The largest frame each kind can carry (PROTOCOLS.md): Meshtastic Data.payload, a
# Beidou 5.0 regional message, one 8-bit SMS segment; IP kinds are bounded by the schema.
MAX_MTU = {LinkKind.MESH: 233, LinkKind.BEIDOU: 1750, LinkKind.TIANTONG_SMS: 140}
MAX_FLAPS = 20_000  # flaps in one run (each is a pair of timers)


class _Identity(BaseModel):
    """Name and kind, validated before the conditions so the MTU check can see the kind."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9_-]+$",
        description="Unique name of the link: lower-case letters, digits, - and _.",
    )
    kind: LinkKind = Field(
        description="ip, tiantong_data, tiantong_sms, beidou or mesh.", strict=False
    )


# Base order matters: pydantic takes fields from the last base first, so _Identity's
# name and kind come before LinkConditions' numbers.
class LinkSpec(LinkConditions, _Identity):
    """One link of a scenario: its conditions and when it is down."""

    outages: list[Annotated[tuple[float, float], Strict(False)]] = Field(
        default_factory=list,
        max_length=10_000,
        description="[down, up] pairs in seconds from the start, in order; up may be inf.",
    )
    kits: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="`kit sim`: the kits that have this link; empty: every kit.",
    )
    via: str = Field(
        default="",
        max_length=32,
        description="`kit sim`, kind mesh: the neighbour kit that relays over LoRa.",
    )

    duplicate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        strict=False,
        description="`kit sim`: probability a frame (an IP link: a request) arrives twice.",
    )
    reorder: float = Field(
        default=0.0,
        ge=0,
        le=1,
        strict=False,
        description="`kit sim`, narrow links: probability a frame is held back behind the next.",
    )
    flap_s: float = Field(
        default=0.0,
        ge=0,
        le=86_400,
        strict=False,
        description="Every flap_s seconds the link drops for a quarter of that; 0: no flaps.",
    )

    @field_validator("duplicate", "reorder")
    @classmethod
    def _narrow_faults(cls, value: float, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        if value and kind is LinkKind.MESH:
            raise ValueError("a mesh link loses frames (loss) but does not duplicate or reorder")
        if value and info.field_name == "reorder" and kind in (LinkKind.IP, LinkKind.TIANTONG_DATA):
            raise ValueError("TCP delivers in order: reorder applies to narrow links only")
        return value

    @field_validator("flap_s")
    @classmethod
    def _flap_period(cls, flap_s: float) -> float:
        if 0 < flap_s < 1:
            raise ValueError("flap_s must be 0 (no flaps) or at least 1 second")
        return flap_s

    def schedule(self, until: float) -> list[Outage]:
        """``outages`` and the flaps up to ``until`` seconds, merged, in order."""
        windows = list(self.outages)
        if self.flap_s:
            n = 1
            while (at := n * self.flap_s) < until:
                windows.append((at, at + self.flap_s / 4))
                n += 1
        merged: list[Outage] = []
        for down, up in sorted(windows):
            if merged and down <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], up))
            else:
                merged.append((down, up))
        return merged

    @field_validator("mtu")
    @classmethod
    def _mtu_fits_kind(cls, mtu: int, info: ValidationInfo) -> int:
        kind = info.data.get("kind")
        limit = MAX_MTU.get(kind) if isinstance(kind, LinkKind) else None
        if limit is not None and mtu > limit:
            raise ValueError(f"a {kind} link carries at most {limit} bytes per frame")
        return mtu

    @field_validator("outages")
    @classmethod
    def _outages_in_order(cls, outages: list[Outage]) -> list[Outage]:
        return list(check_outages(outages))


_NAME = r"^[a-z0-9_-]+$"


class KitSpec(BaseModel):
    """`kit sim`: one simulated kit, where it stands and what it has."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1, max_length=32, pattern=_NAME, description="Unique name.")
    id: int | None = Field(
        default=None, ge=1, le=65535, description="Kit id; default 101, 102, … in file order."
    )
    lat: float = Field(default=30.6586, ge=-90, le=90, strict=False, description="Latitude.")
    lon: float = Field(default=104.0647, ge=-180, le=180, strict=False, description="Longitude.")
    battery_percent: float = Field(
        default=80.0, ge=0, le=100, strict=False, description="Charge at the start."
    )
    on_mains: bool = Field(default=False, description="Mains (or a generator) at the start.")
    team: int = Field(default=3, ge=0, le=16, description="Team members on the kit's mesh.")
    drone: bool = Field(default=False, description="A drone streams video to the kit.")


class Action(StrEnum):
    """What a scenario event does."""

    SOS = "sos"  # a team member (or, without a team, the SOS button) calls for help
    REPORT = "report"  # a rescuer files a situation report on the web page
    PHOTO = "photo"  # a photo lands in the kit's inbox
    REBOOT = "reboot"  # the kit loses power for a moment: every process killed, then back
    MAINS_ON = "mains_on"
    MAINS_OFF = "mains_off"
    DRONE_ON = "drone_on"
    DRONE_OFF = "drone_off"


class EventSpec(BaseModel):
    """`kit sim`: something that happens at a moment of the scenario."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    at: float = Field(ge=0, strict=False, description="Seconds from the start.")
    do: Action = Field(strict=False, description="What happens: " + ", ".join(Action))
    kit: str = Field(default="", max_length=32, description="Which kit; empty: the first.")
    text: str = Field(default="", max_length=500, description="Text of a report or SOS.")
    count: int = Field(default=0, ge=0, le=10_000, description="People concerned.")


class Scenario(BaseModel):
    """A set of emulated links, as read from a scenario file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    description: str = Field(default="", max_length=2000, description="What the scenario shows.")
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seed for loss and jitter, so runs repeat."
    )
    links: list[LinkSpec] = Field(min_length=1, max_length=64, description="The links.")
    duration: float = Field(
        default=600.0, gt=0, le=7 * 86400, strict=False, description="`kit sim`: seconds to run."
    )
    speed: float = Field(
        default=1.0, gt=0, le=1000, strict=False, description="`kit sim`: default speed-up."
    )
    kits: list[KitSpec] = Field(
        default_factory=list, max_length=16, description="`kit sim`: the kits; default one."
    )
    events: list[EventSpec] = Field(
        default_factory=list, max_length=10_000, description="`kit sim`: what happens when."
    )

    @field_validator("links")
    @classmethod
    def _names_unique(cls, links: list[LinkSpec]) -> list[LinkSpec]:
        seen: set[str] = set()
        for link in links:
            if link.name in seen:
                raise ValueError(f"two links are named {link.name!r}")
            seen.add(link.name)
        return links

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        kits = self.world_kits()
        names = [k.name for k in kits]
        if len(set(names)) != len(names):
            raise ValueError("two kits have the same name")
        ids = [k.id for k in kits]
        if len(set(ids)) != len(ids):
            raise ValueError("two kits have the same id")
        for link in self.links:
            for name in (*link.kits, *([link.via] if link.via else [])):
                if name not in names:
                    raise ValueError(f"link {link.name!r} names kit {name!r}, which is not listed")
            if link.via and link.kind is not LinkKind.MESH:
                raise ValueError(f"link {link.name!r}: only a mesh link has `via`")
            if link.flap_s and self.duration / link.flap_s > MAX_FLAPS:
                raise ValueError(
                    f"link {link.name!r}: a flap every {link.flap_s:g} s for {self.duration:g} s "
                    f"is more than {MAX_FLAPS} flaps; raise flap_s or shorten the duration"
                )
        for event in self.events:
            if event.kit and event.kit not in names:
                raise ValueError(f"an event at {event.at:g} s names kit {event.kit!r}, not listed")
        return self

    def world_kits(self) -> list[KitSpec]:
        """The kits of `kit sim`, each with its id (one default kit if none is listed)."""
        listed = self.kits or [KitSpec(name="kit-1")]
        return [
            k if k.id is not None else k.model_copy(update={"id": 101 + i})
            for i, k in enumerate(listed)
        ]

    def links_of(self, kit: str) -> list[LinkSpec]:
        """The links ``kit`` has."""
        return [link for link in self.links if not link.kits or kit in link.kits]


class ScenarioError(KitError, ValueError):
    """A scenario file that cannot be used; ``problems`` lists (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "".join(f"\n  {path or '(file)'}: {message}" for path, message in problems)
        super().__init__(
            f"场景文件 {source} 有 {len(problems)} 处错误",
            f"scenario file {source} has {len(problems)} error(s):{lines}",
        )


SCENARIOS = Path(__file__).parent / "scenarios"


def find_scenario(name: str) -> Path:
    """A scenario file by path, or by name in ``sim/scenarios`` (``first-hours``)."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        return path
    return SCENARIOS / f"{name}.toml"


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raise ``ScenarioError`` listing every mistake."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ScenarioError(source, [("", f"无法读取 / cannot read: {err.strerror}")]) from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ScenarioError(source, [("", f"TOML 语法错误 / TOML syntax error: {err}")]) from err
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        problems = [(_key_path(e["loc"]), _message(e)) for e in err.errors()]
        raise ScenarioError(source, problems) from None


def build_links(scenario: Scenario, clock: Clock) -> dict[str, EmulatedLink]:
    """One unstarted ``EmulatedLink`` per scenario link, by name, all on ``clock``."""
    return {
        spec.name: EmulatedLink(
            spec,
            name=spec.name,
            clock=clock,
            outages=spec.schedule(scenario.duration),
            seed=scenario.seed + index,
        )
        for index, spec in enumerate(scenario.links)
    }


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "未知的键 / unknown key"
    if kind == "missing":
        return "缺少此项 / missing"
    return error["msg"].removeprefix("Value error, ")
