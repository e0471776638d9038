"""Every bus topic and its message type, declared in one place.

Status events may be dropped (ZeroMQ PUB/SUB drops past its high-water mark):
items never travel on the bus; they are accepted over RPC and kept in the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Topic(Generic[T]):
    name: str
    type: type[T]


@dataclass(frozen=True, slots=True)
class ItemAccepted:
    seq: int
    kind: str
    priority: int
    source: str


@dataclass(frozen=True, slots=True)
class ItemsDelivered:
    seqs: list[int]
    link: str


@dataclass(frozen=True, slots=True)
class LinkState:
    name: str
    kind: str
    online: bool
    rate_bps: float
    rtt_s: float


@dataclass(frozen=True, slots=True)
class PositionFix:
    lat: float
    lon: float
    alt_m: float | None
    time_ms: int
    satellites: int


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    percent: float
    volts: float | None  # None when the source gives no voltage
    on_mains: bool
    hours_left: float | None = None  # at the recent rate of discharge; None if unknown


@dataclass(frozen=True, slots=True)
class SafeMode:
    process: str
    errors: list[str]


# JSON/CBOR-able scalars only: a device's detail crosses the bus and lands in `kit status --json`.
Detail = dict[str, str | int | float | bool | None]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """How one device is now (see drivers/device.py)."""

    name: str  # unique in the kit: "gnss", "beidou", "tiantong", "battery", "sos-button", …
    kind: str  # what it is: "gnss", "beidou", "tiantong", "power", "gpio", "vsat"
    online: bool  # present and working
    summary_zh: str  # one line for a person, e.g. "3D 定位，12 颗卫星"
    summary_en: str
    detail: Detail = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return f"{self.summary_zh} / {self.summary_en}"


@dataclass(frozen=True, slots=True)
class PowerModeChanged:
    """The power policy's mode: normal, save (bulk paused, slow polling) or critical."""

    mode: str  # "normal" | "save" | "critical"
    percent: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class OrderReceived:
    """An order from the centre reached the kit (once per order, whatever the link)."""

    order_id: int
    target: str  # "": the kit; "^all": the team channel; "!a1b2c3d4": one member
    text: str
    link: str
    received_ms: int


class TeamMember(NamedTuple):
    """One member of the team on the kit's mesh, as the kit last heard them.

    A named tuple, not a dataclass: bus messages are encoded flat, and a tuple travels as
    a CBOR array that :class:`TeamRoster` turns back into a member.
    """

    node: str  # "!a1b2c3d4"
    name: str  # the long name, else the short name, else the node id
    short: str  # the short name; "" when unknown
    lat: float | None
    lon: float | None
    position_ms: int | None  # Unix ms of that position (the handheld's GPS time when sent)
    last_heard_ms: int  # Unix ms; 0: only known from the radio's node list, not heard yet
    battery_pct: int | None  # 101: on external power (Meshtastic's convention)
    snr: float | None  # dB of the last packet heard from it (its last hop)


@dataclass(frozen=True, slots=True)
class TeamRoster:
    """Everyone on the kit's team mesh, the most recently heard first."""

    members: list[TeamMember]

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", [_member(m) for m in self.members])


def _member(m: object) -> TeamMember:
    """A member as it came off the bus (an array of its fields) or as built here."""
    if isinstance(m, TeamMember):
        return m
    if isinstance(m, dict):
        return TeamMember(**m)
    if isinstance(m, list | tuple):
        return TeamMember(*m)
    raise TypeError(f"a team member is not a {type(m).__name__}")


ITEM_ACCEPTED = Topic("item.accepted", ItemAccepted)
ITEMS_DELIVERED = Topic("item.delivered", ItemsDelivered)
LINK_STATE = Topic("link.state", LinkState)
POSITION_FIX = Topic("position.fix", PositionFix)
BATTERY_LEVEL = Topic("power.battery", BatteryLevel)
SAFE_MODE = Topic("kit.safe_mode", SafeMode)
DEVICE_STATE = Topic("device.state", DeviceState)
POWER_MODE = Topic("power.mode", PowerModeChanged)
ORDER_RECEIVED = Topic("order.received", OrderReceived)
TEAM_ROSTER = Topic("mesh.team", TeamRoster)

ALL: tuple[Topic[object], ...] = (
    ITEM_ACCEPTED,
    ITEMS_DELIVERED,
    LINK_STATE,
    POSITION_FIX,
    BATTERY_LEVEL,
    SAFE_MODE,
    DEVICE_STATE,
    POWER_MODE,
    ORDER_RECEIVED,
    TEAM_ROSTER,
)  # type: ignore[assignment]
BY_NAME: dict[str, Topic[object]] = {t.name: t for t in ALL}
