"""The registry of link kinds: a kind is one module in ``uplink.kinds`` plus its config model."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from edge.item import Priority
from uplink.link import Link, LinkParams

# kind name -> module under uplink.kinds. Adding a kind: one module, one line here.
KINDS: dict[str, str] = {
    "ip": "uplink.kinds.ip",
    "datagram": "uplink.kinds.datagram",
    "beidou": "uplink.kinds.beidou",
    "sms": "uplink.kinds.sms",
    "meshrelay": "uplink.kinds.meshrelay",
}


class LinkConfigBase(BaseModel):
    """Fields every link kind has (each kind's ``Config`` extends this)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        title="链路名称 / Link name",
        description="Unique name of this link, e.g. vsat, beidou, mesh-relay.",
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
    )
    enabled: bool = Field(True, title="启用 / Enabled", description="Use this link.")
    classes: list[Literal["P0", "P1", "P2", "P3", "P4"]] = Field(
        ["P0", "P1", "P2", "P3", "P4"],
        title="可承载的优先级 / Classes carried",
        description="Priority classes this link may carry.",
        min_length=1,
    )
    rate: float = Field(
        title="速率 / Rate",
        description="Expected bytes per second until measured.",
        gt=0,
        le=1e9,
    )
    rtt: float = Field(
        1.0, title="往返时延 / RTT", description="Expected round trip in seconds.", gt=0, le=120
    )
    cost_per_byte: float = Field(
        0.0, title="每字节费用 / Cost per byte", description="Cost units per byte.", ge=0, le=1e6
    )
    cost_per_message: float = Field(
        0.0,
        title="每条费用 / Cost per message",
        description="Cost units per message.",
        ge=0,
        le=1e6,
    )
    budget: float | None = Field(
        None,
        title="费用上限 / Budget",
        description="Most cost this link may spend (P0 ignores it); empty: no limit.",
        ge=0,
    )
    ack_timeout: float = Field(
        60.0,
        title="确认超时 / Ack timeout",
        description="Seconds to wait for the centre's acknowledgement before re-sending.",
        ge=1,
        le=86_400,
    )

    def params(self, mtu: int, min_interval: float = 0.0) -> LinkParams:
        return LinkParams(
            name=self.name,
            classes=frozenset(Priority[c] for c in self.classes),
            mtu=mtu,
            rate=self.rate,
            rtt=self.rtt,
            cost_per_byte=self.cost_per_byte,
            cost_per_message=self.cost_per_message,
            min_interval=min_interval,
            budget=self.budget,
        )


def module(kind: str) -> ModuleType:
    return importlib.import_module(KINDS[kind])


def make(config: Any) -> Link:
    """Build the link for one validated config entry."""
    factory: Callable[[Any], Link] = module(config.kind).make
    return factory(config)


def config_union() -> Any:
    """The discriminated union of every kind's config model (for the kit's config schema)."""
    models = tuple(module(kind).Config for kind in KINDS)
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 (built at run time)
