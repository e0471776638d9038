"""The centre's config: one strict schema (unknown keys rejected), loaded from TOML."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from centre.errors import BadCentreConfig
from edge.item import MAX_MEDIA_BYTES
from uplink.frames import MAX_FRAME_BYTES, MIN_MTU

_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})\Z")


def split_listen(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port)."""
    m = _LISTEN.match(text)
    if m is None or int(m["port"]) > 65535:
        raise ValueError(f"listen address must be HOST:PORT (port 0-65535), not {text!r}")
    return m["host"].strip("[]"), int(m["port"])


class KitEntry(BaseModel):
    """One enrolled kit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kit_id: int = Field(
        ge=1, le=65535, title="设备编号", description="The kit's short id, as in its frames."
    )
    name: str = Field(
        min_length=1, max_length=64, title="名称", description="Name shown on the dashboard."
    )
    enabled: bool = Field(
        default=True,
        title="启用",
        description="A disabled kit's items are refused (a lost or stolen kit).",
    )


class GatewayEntry(BaseModel):
    """One narrow link's frame gateway (a Beidou terminal, SMS modem or mesh gateway feed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.:-]{0,31}$",
        title="链路名称",
        description="Link name stored with each item (beidou, sms, mesh …); relays name "
        "it in the Kit-Link header of POST /v1/frames.",
    )
    kind: Literal["udp", "relay", "beidou", "sms"] = Field(
        default="udp",
        title="类型",
        description="udp: frames as UDP datagrams on `listen`; relay: no socket, frames "
        "come only through POST /v1/frames; beidou: short messages through the centre's "
        "Beidou command terminal on `device`; sms: 8-bit short messages through the "
        "centre's SMS modem (Tiantong or cellular) on `device`.",
    )
    device: str = Field(
        default="/dev/ttyUSB0",
        min_length=1,
        max_length=255,
        title="串口设备",
        description="Serial device of the centre's terminal or modem (kind beidou, sms).",
    )
    protocol: Literal["4.0", "5.0"] = Field(
        default="4.0",
        title="北斗协议",
        description="Beidou terminal protocol (kind beidou): 4.0 RDSS or 5.0 regional.",
    )
    listen: str = Field(
        default="127.0.0.1:9700",
        min_length=3,
        max_length=300,
        title="监听地址",
        description="HOST:PORT of the UDP socket (kind udp); port 0 picks a free port.",
    )
    mtu: int = Field(
        ge=MIN_MTU,
        le=MAX_FRAME_BYTES,
        title="最大帧长",
        description="Largest frame the link carries, bytes (Beidou 78, SMS 140, mesh 233, "
        "BDS-3 regional 1750); answers are cut to fit it.",
    )
    missing_after_s: float = Field(
        default=120.0,
        ge=0.1,
        le=86400.0,
        title="缺片等待",
        description="Seconds without a fragment of an incomplete message before the kit is "
        "asked for the missing ones (about 2 × the link's interval between frames); "
        "asked again at most this often.",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


class CentreConfig(BaseModel):
    """Everything the centre's ingest service needs to start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = Field(
        default="127.0.0.1:8440",
        min_length=3,
        max_length=300,
        title="监听地址",
        description="HOST:PORT the HTTP ingest listens on; port 0 picks a free port.",
    )
    data_dir: Path = Field(
        title="数据目录",
        description="Folder for the SQLite store and the media folder; created if missing.",
    )
    max_upload_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        le=MAX_MEDIA_BYTES,
        title="媒体上限",
        description="Largest media file one tus upload may declare (Tus-Max-Size), bytes.",
    )
    max_body_bytes: int = Field(
        default=1024**2,
        ge=1024,
        le=64 * 1024**2,
        title="请求体上限",
        description="Largest POST /v1/items body, bytes; larger bodies get 413.",
    )
    kits: tuple[KitEntry, ...] = Field(
        default=(),
        max_length=65535,
        title="登记设备",
        description="Enrolled kits; items from any other kit id are refused.",
    )
    gateways: tuple[GatewayEntry, ...] = Field(
        default=(),
        max_length=64,
        title="窄带网关",
        description="Frame gateways of the narrow links (Beidou, SMS, mesh); none by default.",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("kits")
    @classmethod
    def _unique_kits(cls, kits: tuple[KitEntry, ...]) -> tuple[KitEntry, ...]:
        counts = Counter(k.kit_id for k in kits)
        twice = sorted(kit_id for kit_id, n in counts.items() if n > 1)
        if twice:
            raise ValueError(f"kit ids listed more than once: {twice}")
        return kits

    @field_validator("gateways")
    @classmethod
    def _unique_gateways(cls, gateways: tuple[GatewayEntry, ...]) -> tuple[GatewayEntry, ...]:
        names = Counter(g.name for g in gateways)
        twice = sorted(name for name, n in names.items() if n > 1)
        if twice:
            raise ValueError(f"gateway names listed more than once: {twice}")
        sockets = Counter(g.address for g in gateways if g.kind == "udp" and g.address[1] != 0)
        shared = sorted(f"{h}:{p}" for (h, p), n in sockets.items() if n > 1)
        if shared:
            raise ValueError(f"UDP gateways listening on the same address: {shared}")
        return gateways

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "centre.sqlite3"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"


def build_config(raw: dict[str, Any], origin: str) -> CentreConfig:
    """Validate ``raw``; every error is reported at once with its key path."""
    try:
        return CentreConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        ]
        raise BadCentreConfig(
            f"{origin} 配置有误：" + "；".join(lines),
            f"bad config in {origin}: " + "; ".join(lines),
        ) from None


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> CentreConfig:
    """Read a TOML file, apply command-line ``overrides`` on top, validate."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadCentreConfig(
            f"无法读取配置文件 {path}：{exc.strerror}", f"cannot read config {path}: {exc.strerror}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadCentreConfig(
            f"配置文件 {path} 不是有效的 TOML：{exc}", f"config {path} is not valid TOML: {exc}"
        ) from None
    return build_config({**raw, **(overrides or {})}, str(path))
