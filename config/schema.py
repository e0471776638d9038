"""The kit's config schema: one strict model, every field described and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.gpio import GpioConfig
from drivers.power import PowerConfig
from edge.statusreport import StatusConfig
from media.config import MediaConfig
from mesh.config import MeshConfig
from uplink.registry import LinkConfigBase, config_union

# ipc:// endpoints live in the runtime folder; a Unix socket path holds at most 107 bytes.
MAX_RUNTIME_DIR_BYTES = 80


class Strict(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class KitSection(Strict):
    id: int = Field(
        title="套件编号 / Kit id",
        description="Short numeric id of this kit, unique in the deployment; set at provisioning "
        "and carried in every frame.",
        ge=1,
        le=65535,
    )
    name: str = Field(
        title="套件名称 / Kit name",
        description="Human name shown at the command centre, e.g. 雅安-救援一队-01.",
        min_length=1,
        max_length=64,
    )


class PathsSection(Strict):
    data_dir: Path = Field(
        Path("/var/lib/kit"),
        title="数据目录 / Data folder",
        description="Read-write folder for the store, media and keys (the data partition).",
    )
    runtime_dir: Path = Field(
        Path("/run/kit"),
        title="运行目录 / Runtime folder",
        description="Folder for the processes' sockets (ipc:// endpoints of the bus and RPC).",
    )

    @field_validator("runtime_dir")
    @classmethod
    def _socket_paths_fit(cls, value: Path) -> Path:
        if len(str(value).encode()) > MAX_RUNTIME_DIR_BYTES:
            raise ValueError(
                f"path longer than {MAX_RUNTIME_DIR_BYTES} bytes: socket paths would not fit"
            )
        return value


class EdgeSection(Strict):
    max_batch: int = Field(
        512,
        title="批量提交上限 / Group commit size",
        description="Most accepts committed in one transaction (one fsync).",
        ge=1,
        le=10_000,
    )
    rpc_timeout_s: float = Field(
        5.0,
        title="请求超时 / RPC timeout",
        description="How long clients wait for the edge daemon before retrying.",
        ge=0.1,
        le=120.0,
    )
    reserve_mb: int = Field(
        64,
        title="保留空间 / Reserved space",
        description="Free space (MB) kept for SOS and reports: below it, tracks and media "
        "are refused before they are stored.",
        ge=0,
        le=1_000_000,
    )


class UplinkSection(Strict):
    part_bytes: int = Field(
        4 * 1024 * 1024,
        title="分段大小 / Transfer part size",
        description="Media files are cut into parts of this size; several IP links carry "
        "different parts at once (bonding).",
        ge=64 * 1024,
        le=256 * 1024 * 1024,
    )
    max_fragments: int = Field(
        16,
        title="最多分片 / Most fragments",
        description="Largest item on a narrow link, in frames (a 78-byte Beidou message each).",
        ge=1,
        le=255,
    )
    poll_s: float = Field(
        1.0,
        title="轮询间隔 / Poll interval",
        description="Seconds an idle link waits before asking the outbox again.",
        ge=0.05,
        le=60,
    )


if TYPE_CHECKING:
    LinkConfig = LinkConfigBase
else:
    LinkConfig = config_union()  # a discriminated union of every registered kind's Config


class GnssSection(Strict):
    enabled: bool = Field(
        True, title="启用 / Enabled", description="Read a GNSS (BDS/GPS) receiver."
    )
    source: Literal["gpsd", "serial"] = Field(
        "gpsd",
        title="数据来源 / Source",
        description="gpsd: NMEA from the gpsd the image runs (it also feeds chrony); "
        "serial: read the receiver's serial device directly.",
    )
    device: str = Field(
        "/dev/ttyAMA0",
        title="串口设备 / Serial device",
        description="The receiver's serial device (source serial).",
        min_length=1,
        max_length=255,
    )
    baudrate: int = Field(
        9600,
        title="波特率 / Baud rate",
        description="Serial speed of the receiver (source serial).",
        ge=1200,
        le=921_600,
    )
    gpsd: str = Field(
        "127.0.0.1:2947",
        title="gpsd 地址 / gpsd address",
        description="host:port of gpsd (source gpsd).",
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        max_length=262,
    )
    set_clock: bool = Field(
        False,
        title="校准系统时钟 / Set the clock",
        description="Step the system clock from GNSS when nothing else (chrony) has set it; "
        "needs CAP_SYS_TIME. Off when chrony reads gpsd, as in the image.",
    )


class LogSection(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", title="日志级别 / Log level", description="Least severe level written to the log."
    )


class WebSection(Strict):
    listen: str = Field(
        "0.0.0.0:8080",
        title="网页监听地址 / Web page address",
        description="host:port the kit's web page listens on (its own Wi-Fi; plain HTTP).",
        pattern=r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$",
        max_length=262,
    )
    max_photo_mb: int = Field(
        20,
        title="照片大小上限 / Photo size limit",
        description="Largest photo a phone may upload, in MB.",
        ge=1,
        le=40,
    )
    max_photos: int = Field(
        4,
        title="每份报告照片数 / Photos per report",
        description="Most photos attached to one report.",
        ge=0,
        le=8,
    )
    session_idle_min: int = Field(
        30,
        title="登录空闲超时 / Login idle time-out",
        description="Minutes without activity after which a configuration login ends.",
        ge=5,
        le=720,
    )
    tiles: Path | None = Field(
        None,
        title="离线地图 / Offline map",
        description="MBTiles file of map tiles; empty: <data folder>/map.mbtiles, else the "
        "bundled sample area.",
    )


class WifiSection(Strict):
    """The kit's own access point (hostapd); the web page writes <data folder>/hostapd.conf."""

    enabled: bool = Field(
        False, title="启用热点 / Access point", description="Run the kit's own Wi-Fi network."
    )
    interface: str = Field(
        "wlan0",
        title="无线网卡 / Interface",
        description="Wireless interface hostapd runs on.",
        pattern=r"^[a-z][a-z0-9]{0,14}$",
    )
    ssid: str = Field(
        "KIT",
        title="网络名称 / SSID",
        description="Name of the kit's Wi-Fi network.",
        min_length=1,
        max_length=32,
        pattern=r"^[^\x00-\x1f\x7f]+$",
    )
    passphrase: str = Field(
        "",
        title="无线密码 / Passphrase",
        description="WPA2 passphrase, 8–63 characters; empty only while the access point is off.",
        max_length=63,
        pattern=r"^([\x20-\x7e]{8,63})?$",
        json_schema_extra={"secret": True},
    )
    channel: int = Field(
        6, title="信道 / Channel", description="2.4 GHz channel (1–13).", ge=1, le=13
    )
    country: str = Field(
        "CN",
        title="国家代码 / Country code",
        description="Regulatory domain (ISO 3166 code), e.g. CN.",
        pattern=r"^[A-Z]{2}$",
    )

    @model_validator(mode="after")
    def _passphrase_when_on(self) -> WifiSection:
        if self.enabled and not self.passphrase:
            raise ValueError("an access point needs a passphrase of 8-63 characters")
        return self


class SecuritySection(Strict):
    """Which keys seal the narrow-link frames (`kit provision` makes the kit's key pair)."""

    profile: Literal["default", "national"] = Field(
        "default",
        title="密码配置 / Profile",
        description="default: X25519/Ed25519 + ChaCha20-Poly1305; national (国密): SM2 + SM3 + "
        "SM4-GCM. `kit provision` makes a key pair of this profile.",
    )
    centre_public_key: str = Field(
        "",
        title="指挥中心公钥 / Centre public key",
        description="The centre's public key (<profile>:<base64>) as `kit centre keys` printed "
        "it; without it narrow-link frames go unsealed and the centre refuses them.",
        max_length=400,
        pattern=r"^([a-z]+:[A-Za-z0-9+/=]+)?$",
    )
    encrypt_at_rest: bool = Field(
        False,
        title="发件箱加密存储 / Encrypt the outbox at rest",
        description="Seal every new report body in the outbox with the profile's cipher under "
        "a data key in <data_dir>/keys (made on first start); a key wipe then makes the stored "
        "bodies unreadable. Costs one AEAD per item (ChaCha20 is fast on a Pi 4 without AES "
        "instructions); off, bodies are plaintext SQLite rows anyone with the SD card can read.",
    )


class KitConfig(Strict):
    """The whole config file."""

    kit: KitSection = Field(title="套件 / Kit", description="Identity of this kit.")
    paths: PathsSection = Field(
        default_factory=lambda: PathsSection(),
        title="路径 / Paths",
        description="Where the kit keeps data and sockets.",
    )
    edge: EdgeSection = Field(
        default_factory=lambda: EdgeSection(),
        title="出站队列 / Outbox",
        description="The edge daemon and its store.",
    )
    log: LogSection = Field(
        default_factory=lambda: LogSection(), title="日志 / Logging", description="Logging."
    )
    uplink: UplinkSection = Field(
        default_factory=lambda: UplinkSection(),
        title="上行 / Uplink",
        description="How items travel to the centre.",
    )
    gnss: GnssSection = Field(
        default_factory=lambda: GnssSection(),
        title="卫星定位 / GNSS",
        description="The BDS/GPS receiver: the kit's position and time.",
    )
    power: PowerConfig = Field(
        default_factory=lambda: PowerConfig(),
        title="电源 / Power",
        description="Where the battery is read; when to save power and when to shut down.",
    )
    gpio: GpioConfig = Field(
        default_factory=lambda: GpioConfig(),
        title="按钮与指示灯 / Button and lights",
        description="The SOS button, status LEDs and buzzer on the Pi's GPIO header.",
    )
    mesh: MeshConfig = Field(
        default_factory=lambda: MeshConfig(),
        title="自组网 / Mesh",
        description="The team's Meshtastic LoRa mesh: texts, SOS and positions from handhelds.",
    )
    media: MediaConfig = Field(
        default_factory=lambda: MediaConfig(),
        title="媒体 / Media",
        description="Drone video sources recorded on the kit's disk, and the media quota.",
    )
    web: WebSection = Field(
        default_factory=lambda: WebSection(),
        title="网页 / Web page",
        description="The kit's local web page: status, reports, map and configuration.",
    )
    wifi: WifiSection = Field(
        default_factory=lambda: WifiSection(),
        title="无线热点 / Wi-Fi",
        description="The kit's own Wi-Fi access point (hostapd).",
    )
    security: SecuritySection = Field(
        default_factory=lambda: SecuritySection(),
        title="安全 / Security",
        description="Sealing of narrow-link frames: profile and the centre's public key.",
    )
    status: StatusConfig = Field(
        default_factory=lambda: StatusConfig(),
        title="状态上报 / Status report",
        description="The kit's status (battery, backlog, links) sent to the command centre.",
    )
    links: list[LinkConfig] = Field(
        default_factory=list,
        title="链路 / Links",
        description="Every way out of the kit, one [[links]] table each.",
        max_length=32,
    )

    @model_validator(mode="after")
    def _unique_link_names(self) -> KitConfig:
        names = [link.name for link in self.links]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"link names used twice: {', '.join(twice)}")
        return self

    @property
    def media_dir(self) -> Path:
        return self.paths.data_dir / "media"

    @property
    def store_path(self) -> Path:
        return self.paths.data_dir / "outbox.sqlite3"

    @property
    def keys_dir(self) -> Path:
        return self.paths.data_dir / "keys"

    def endpoint(self, name: str) -> str:
        """The ipc:// endpoint of socket ``name`` under the runtime folder."""
        return f"ipc://{self.paths.runtime_dir / name}.sock"
