"""The ``[mesh]`` config section: how the kit reaches its Meshtastic radio."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MeshConfig(BaseModel):
    """Where the kit's Meshtastic radio is and how hard to try reaching it."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = Field(
        False,
        title="启用 Mesh / Mesh enabled",
        description="Run the team mesh: the kit's Meshtastic radio turns the team's texts, SOS "
        "and positions into items.",
    )
    connection: Literal["serial", "tcp"] = Field(
        "serial",
        title="连接方式 / Connection",
        description="serial: the radio on USB (device); tcp: a radio or meshtasticd on the "
        "network (host and port).",
    )
    device: str = Field(
        "/dev/ttyACM0",
        title="串口设备 / Serial device",
        description="Device path of the radio when connection is serial, e.g. /dev/ttyACM0 or "
        "a /dev/serial/by-id/… link.",
        min_length=1,
        max_length=255,
    )
    host: str = Field(
        "127.0.0.1",
        title="主机 / Host",
        description="Name or address of the radio when connection is tcp.",
        min_length=1,
        max_length=253,
    )
    port: int = Field(
        4403,
        title="端口 / Port",
        description="TCP port of the radio's stream API (Meshtastic uses 4403).",
        ge=1,
        le=65535,
    )
    handshake_timeout_s: float = Field(
        15.0,
        title="握手超时 / Handshake timeout",
        description="A radio that has not sent its node list and config in this time is "
        "dropped and tried again.",
        ge=1.0,
        le=300.0,
    )
    reconnect_min_s: float = Field(
        2.0,
        title="最短重连间隔 / Shortest reconnect delay",
        description="First wait before reconnecting to a lost radio; doubled after each failure.",
        ge=0.05,
        le=600.0,
    )
    reconnect_max_s: float = Field(
        60.0,
        title="最长重连间隔 / Longest reconnect delay",
        description="The reconnect delay never grows past this.",
        ge=0.1,
        le=3600.0,
    )
    channel: int = Field(
        0,
        title="下行信道 / Downlink channel",
        description="Channel index (0 = primary) on which the kit sends to the team.",
        ge=0,
        le=7,
    )
    queue_size: int = Field(
        256,
        title="待交队列 / Hand-over queue",
        description="Items from the mesh held in memory while the edge daemon is away; on "
        "overflow the least urgent oldest one is dropped and logged.",
        ge=8,
        le=10_000,
    )
    max_members: int = Field(
        256,
        title="队员上限 / Most team members",
        description="Nodes kept in the roster; the longest unheard one is forgotten first.",
        ge=1,
        le=10_000,
    )
    frame_port: int = Field(
        0,
        title="中继帧端口 / Relay frame port",
        description="UDP port on 127.0.0.1 where the uplink's meshrelay link reaches this "
        "radio (its frame_port); 0: no meshrelay link on this kit.",
        ge=0,
        le=65535,
    )
    relay_url: str | None = Field(
        None,
        title="中继至指挥中心 / Relay to the centre",
        description="Base URL of the centre (e.g. https://centre.example:8440): frames other "
        "kits send this kit over LoRa are posted to its /v1/frames. Empty: relay nothing.",
        pattern=r"^https?://",
        max_length=2048,
    )
    relay_gateway: str = Field(
        "mesh",
        title="中继网关名 / Relay gateway",
        description="The centre's frame gateway (kind relay) named in the Kit-Link header.",
        min_length=1,
        max_length=32,
    )
    relay_queue: int = Field(
        64,
        title="中继队列 / Relay queue",
        description="Frames held each way while the centre or the radio is away; on overflow "
        "the oldest is dropped and logged.",
        ge=4,
        le=10_000,
    )
    order_ack_timeout_s: float = Field(
        180.0,
        title="指令确认超时 / Order acknowledgement timeout",
        description="An order sent to a member (or the channel) that the mesh has neither "
        "acknowledged nor refused in this time counts as a failed try. The radio itself "
        "retries a packet 3 times before it refuses it.",
        ge=1.0,
        le=3600.0,
    )
    order_tries: int = Field(
        3,
        title="指令发送次数 / Order tries",
        description="Times the kit sends an order to a member before it reports the order "
        "undeliverable to the centre (each try is up to 4 transmissions by the radio).",
        ge=1,
        le=10,
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> MeshConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self
