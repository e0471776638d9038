"""Every bus topic and its message type, declared in one place.

Status events may be dropped (ZeroMQ PUB/SUB drops past its high-water mark):
items never travel on the bus; they are accepted over RPC and kept in the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


ITEM_ACCEPTED = Topic("item.accepted", ItemAccepted)
ITEMS_DELIVERED = Topic("item.delivered", ItemsDelivered)
LINK_STATE = Topic("link.state", LinkState)
POSITION_FIX = Topic("position.fix", PositionFix)
BATTERY_LEVEL = Topic("power.battery", BatteryLevel)
SAFE_MODE = Topic("kit.safe_mode", SafeMode)
DEVICE_STATE = Topic("device.state", DeviceState)
POWER_MODE = Topic("power.mode", PowerModeChanged)
ORDER_RECEIVED = Topic("order.received", OrderReceived)

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
)  # type: ignore[assignment]
BY_NAME: dict[str, Topic[object]] = {t.name: t for t in ALL}
