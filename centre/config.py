"""The centre's config: one strict schema (unknown keys rejected), loaded from TOML."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from centre.errors import BadCentreConfig
from edge.errors import KitError
from edge.item import MAX_MEDIA_BYTES
from security.keys import parse_public
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
    public_key: str = Field(
        default="",
        max_length=400,
        title="设备公钥",
        description="The kit's public key as `kit provision` printed it (<profile>:<base64>); "
        "without one the kit's narrow-link frames are refused.",
    )
    profile: Literal["default", "national"] = Field(
        default="default",
        title="密码配置",
        description="default: X25519/Ed25519 + ChaCha20-Poly1305; national (国密): SM2 + SM3 "
        "+ SM4-GCM. Must match the public key's profile.",
    )

    @model_validator(mode="after")
    def _check_key(self) -> KitEntry:
        if self.public_key:
            try:
                prof, _ = parse_public(self.public_key)
            except KitError as err:
                raise ValueError(f"public_key: {err.en}") from None
            if prof.name != self.profile:
                raise ValueError(f"public_key is a {prof.name} key but profile is {self.profile}")
        return self


class GatewayEntry(BaseModel):
    """One narrow link's frame gateway (a Beidou terminal, SMS modem or mesh gateway feed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.:-]{0,31}$",
        title="链路名称",
        description="Link name stored with each item (beidou, sms, mesh …); relays name "
        "it in the Kit-Link header of POST /v1/frames.",
    )
    kind: Literal["udp", "relay", "beidou", "sms", "mesh"] = Field(
        default="udp",
        title="类型",
        description="udp: frames as UDP datagrams on `listen`; relay: no socket, frames "
        "come only through POST /v1/frames; beidou: short messages through the centre's "
        "Beidou command terminal on `device`; sms: 8-bit short messages through the "
        "centre's SMS modem (Tiantong or cellular) on `device`; mesh: PRIVATE_APP packets "
        "through the centre's own Meshtastic node on `device` (a serial port, or "
        "tcp:HOST:PORT for a networked node).",
    )
    device: str = Field(
        default="/dev/ttyUSB0",
        min_length=1,
        max_length=255,
        title="串口设备",
        description="Serial device of the centre's terminal, modem or Meshtastic node (kind "
        "beidou, sms, mesh); a mesh node on the network: tcp:HOST:PORT.",
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


_EXPORT_URLS = {
    "mqtt": ("mqtt://",),
    "webhook": ("http://", "https://"),
    "cot": ("tcp://", "udp://"),
}


class ExportEntry(BaseModel):
    """One system the stored items are exported to, in the order they were stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$",
        title="名称",
        description="Names the export's cursor (how far it delivered) in the store.",
    )
    skip_kinds: tuple[str, ...] = Field(
        default=("audit",),
        max_length=32,
        title="不导出的类型",
        description="Item kinds this export leaves out (its cursor still moves past them). "
        "By default the kits' mirrored audit logs stay inside the centre.",
    )
    kind: Literal["mqtt", "webhook", "cot"] = Field(
        title="类型",
        description="mqtt: a JSON event per item to an MQTT broker (QoS 1); webhook: signed "
        "JSON POSTs; cot: Cursor-on-Target events (items with a position) to a TAK server.",
    )
    url: str = Field(
        min_length=8,
        max_length=500,
        title="地址",
        description="mqtt://host:port/topic-prefix, http(s)://… for a webhook, "
        "tcp://host:port or udp://host:port for CoT.",
    )
    secret: str = Field(
        default="",
        max_length=200,
        title="签名密钥",
        description="webhook: HMAC-SHA256 key; each POST carries X-Kit-Timestamp and "
        "X-Kit-Signature = sha256=hex(HMAC(key, timestamp + '.' + body)).",
    )
    batch: int = Field(
        default=100, ge=1, le=1000, title="批量", description="Items per delivery at most."
    )
    retry_s: float = Field(
        default=1.0,
        ge=0.05,
        le=60.0,
        title="重试间隔",
        description="Seconds before a failed delivery is tried again; doubled after each "
        "failure, up to 60.",
    )

    @model_validator(mode="after")
    def _check_url(self) -> ExportEntry:
        schemes = _EXPORT_URLS[self.kind]
        if not self.url.startswith(schemes):
            raise ValueError(f"a {self.kind} export's url starts with {' or '.join(schemes)}")
        if self.kind == "webhook" and not self.secret:
            raise ValueError("a webhook export needs a secret to sign with")
        return self


class DashboardSection(BaseModel):
    """The operators' dashboard (/dashboard): offline map, logins, machine access."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiles: Path | None = Field(
        default=None,
        title="离线地图",
        description="MBTiles file of map tiles (relative: in data_dir); empty: "
        "<data_dir>/map.mbtiles if present, else the bundled sample area.",
    )
    operators_file: Path = Field(
        default=Path("dashboard/operators.json"),
        title="操作员文件",
        description="Operators' scrypt password hashes (relative: in data_dir), written by "
        "`kit centre operator add NAME`; nobody can log in until one is added.",
    )
    tokens_file: Path = Field(
        default=Path("dashboard/tokens.json"),
        title="接口令牌文件",
        description="Hashes of the bearer tokens machines use for /v1/orders and /v1/export "
        "(relative: in data_dir), written by `kit centre token add NAME`.",
    )
    session_idle_min: int = Field(
        default=60,
        ge=5,
        le=720,
        title="登录空闲超时",
        description="Minutes without activity after which an operator's login ends.",
    )
    trust_loopback: bool = Field(
        default=True,
        title="信任本机程序",
        description="Programs on the centre's own host (127.0.0.1, ::1) that are not browsers "
        "may use /v1/orders and /v1/export without a token; turn off behind a reverse proxy.",
    )
    feed_limit: int = Field(
        default=200,
        ge=10,
        le=1000,
        title="报告列表长度",
        description="Items the dashboard's report feed loads at most per query.",
    )


S3_MAX_PUT_BYTES = 5 * 1024**3  # the largest object one PutObject may write
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_PREFIX = re.compile(r"([A-Za-z0-9!_.*'()-]+/)*\Z")


class MediaSection(BaseModel):
    """Where complete media files are kept: the media folder, or an S3-compatible bucket."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Literal["folder", "s3"] = Field(
        default="folder",
        title="媒体存储",
        description="folder: <data_dir>/media (nothing to set up); s3: objects in a bucket "
        "of an S3-compatible server (MinIO, Ceph RGW, SeaweedFS, Garage, AWS), path-style. "
        "Uploads in progress stay in <data_dir>/media/.partial either way.",
    )
    endpoint: str = Field(
        default="",
        max_length=500,
        title="S3 地址",
        description="http(s)://host[:port] of the S3 server (store = s3).",
    )
    bucket: str = Field(
        default="",
        max_length=63,
        title="存储桶",
        description="The bucket, made beforehand (3-63 lower-case letters, digits, . and -).",
    )
    region: str = Field(
        default="us-east-1",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        title="区域",
        description="Signing region; most S3-compatible servers accept us-east-1.",
    )
    access_key: str = Field(
        default="", max_length=128, title="访问密钥 ID", description="The S3 access key id."
    )
    secret_key_file: Path | None = Field(
        default=None,
        title="密钥文件",
        description="File holding the S3 secret key on one line (relative: in data_dir; "
        "chmod 600). Never the secret itself in this config.",
    )
    prefix: str = Field(
        default="",
        max_length=200,
        title="对象前缀",
        description="Put before every object key, e.g. centre/ (empty, or ending in /).",
    )
    timeout_s: float = Field(
        default=10.0,
        ge=1.0,
        le=300.0,
        title="S3 超时",
        description="Seconds to connect to, or wait for an answer from, the S3 server.",
    )

    @model_validator(mode="after")
    def _check_s3(self) -> MediaSection:
        if self.store != "s3":
            return self
        problems = []
        if not self.endpoint.startswith(("http://", "https://")):
            problems.append(
                "endpoint 应为 http(s)://主机[:端口] / endpoint must be http(s)://host[:port]"
            )
        if not _BUCKET.match(self.bucket) or ".." in self.bucket:
            problems.append(
                f"bucket {self.bucket!r} 不是有效的存储桶名（3-63 位小写字母、数字、. 和 -）"
                f" / bucket {self.bucket!r} is not a valid bucket name (3-63 lower-case letters,"
                " digits, . and -)"
            )
        if not self.access_key:
            problems.append("需要 access_key / access_key is required")
        if self.secret_key_file is None:
            problems.append(
                "需要 secret_key_file（存放密钥的文件） / secret_key_file (the file holding the"
                " secret) is required"
            )
        if not _PREFIX.match(self.prefix):
            problems.append(
                f"prefix {self.prefix!r} 应为空或以 / 结尾的路径 / prefix {self.prefix!r} must be"
                " empty or a path ending in /"
            )
        if problems:
            raise ValueError('store = "s3": ' + "；".join(problems))
        return self


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
    tls: bool = Field(
        default=False,
        title="HTTPS",
        description="Serve HTTPS. Kits enrolled with a key must then connect with the TLS "
        "identity derived from their keys (mutual authentication; kit URLs https://); "
        "browsers get tls_cert (made self-signed in keys/tls on first start if empty).",
    )
    tls_cert: Path | None = Field(
        default=None,
        title="证书",
        description="PEM certificate (and tls_key) for browsers on the dashboard; empty: "
        "keys/tls/tls.crt in the data folder, made self-signed for tls_names.",
    )
    tls_key: Path | None = Field(
        default=None, title="证书私钥", description="PEM private key of tls_cert."
    )
    tls_names: tuple[str, ...] = Field(
        default=("localhost",),
        min_length=1,
        max_length=16,
        title="证书名称",
        description="Host names of the self-signed certificate made when tls_cert is empty.",
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
    database: str = Field(
        default="",
        max_length=1000,
        pattern=r"^(postgres(ql)?://.*)?$",
        title="数据库",
        description="Empty: SQLite in the data folder (one process). A postgresql:// URL: "
        "the scale-out store that several workers share (the media folder stays in "
        "data_dir, on storage every worker reaches).",
    )
    database_pool: int = Field(
        default=8,
        ge=1,
        le=100,
        title="连接池",
        description="PostgreSQL connections per worker process.",
    )
    database_wait_s: float = Field(
        default=5.0,
        ge=0.1,
        le=120.0,
        title="数据库等待",
        description="Seconds a request waits for a PostgreSQL connection before it is refused "
        "with 503 (the kit retries); while the database is down, requests are refused.",
    )
    exports: tuple[ExportEntry, ...] = Field(
        default=(),
        max_length=32,
        title="数据导出",
        description="MQTT, webhook and Cursor-on-Target exports (GeoJSON is always served at "
        "GET /v1/export/geojson); run by the first worker, each from its own cursor.",
    )
    dashboard: DashboardSection = Field(
        default_factory=DashboardSection,
        title="指挥看板",
        description="The operators' dashboard at /dashboard and who may use the order and "
        "export APIs.",
    )
    media: MediaSection = Field(
        default_factory=MediaSection,
        title="媒体存储",
        description="Where complete media files are kept: the media folder (default) or an "
        "S3-compatible bucket.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        title="工作进程",
        description="Worker processes sharing the listening address (needs PostgreSQL when "
        "more than 1). Serial terminals and UDP gateways run in the first worker.",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @field_validator("workers")
    @classmethod
    def _workers_need_postgres(cls, workers: int, info: ValidationInfo) -> int:
        if workers > 1 and not info.data.get("database"):
            raise ValueError(
                f"{workers} workers need a PostgreSQL database (database = "
                '"postgresql://…"; SQLite serves one process only) / 多个工作进程需要 PostgreSQL'
            )
        return workers

    @field_validator("media")
    @classmethod
    def _one_put_per_file(cls, media: MediaSection, info: ValidationInfo) -> MediaSection:
        largest = info.data.get("max_upload_bytes", 0)
        if media.store == "s3" and largest > S3_MAX_PUT_BYTES:
            raise ValueError(
                f"S3 每个文件一次写入，至多 {S3_MAX_PUT_BYTES} 字节：请把 max_upload_bytes 调低"
                f" / S3 takes each file in one PUT of at most {S3_MAX_PUT_BYTES} bytes: lower"
                f" max_upload_bytes (now {largest})"
            )
        return media

    @field_validator("exports")
    @classmethod
    def _unique_exports(cls, exports: tuple[ExportEntry, ...]) -> tuple[ExportEntry, ...]:
        names = Counter(e.name for e in exports)
        twice = sorted(name for name, n in names.items() if n > 1)
        if twice:
            raise ValueError(f"export names listed more than once: {twice}")
        return exports

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

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def security_db(self) -> Path:
        return self.data_dir / "security.sqlite3"


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
