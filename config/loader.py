"""Load the TOML config: report every error with its key path, fall back to safe mode."""

from __future__ import annotations

import contextlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from config.schema import KitConfig, KitSection, LinkConfig
from edge.errors import KitError
from uplink.registry import KINDS

DEFAULT_PATH = Path("/etc/kit/kit.toml")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the config file, at a dotted key path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '(file)'}: {self.message}"


class BadConfig(KitError, ValueError):
    """The config file has errors; all of them are in ``issues``."""

    def __init__(self, source: Path, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  - {i}" for i in issues)
        super().__init__(
            f"配置文件 {source} 有 {len(issues)} 处错误：\n{lines}",
            f"config file {source} has {len(issues)} error(s)",
        )


@dataclass(frozen=True, slots=True)
class Loaded:
    """A usable config; in safe mode it is built from defaults and the sections that were valid."""

    config: KitConfig
    source: Path
    issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def safe_mode(self) -> bool:
        return bool(self.issues)


def default_path() -> Path:
    return Path(os.environ.get("KIT_CONFIG", DEFAULT_PATH))


def _key_path(loc: tuple[str | int, ...]) -> str:
    """``links[0].rate``: list indexes in brackets, union tags (the link kind) left out."""
    out = ""
    after_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_index = True
            continue
        if after_index and part in KINDS:
            after_index = False
            continue
        out += f".{part}" if out else part
        after_index = False
    return out


def _issues(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[ConfigIssue]:
    out = []
    for e in err.errors(include_url=False):
        loc = _key_path((*prefix, *e["loc"]))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        out.append(ConfigIssue(loc, msg))
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadConfig(path, [ConfigIssue("", "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise BadConfig(path, [ConfigIssue("", f"not UTF-8 at byte {exc.start}")]) from None
    except OSError as exc:
        raise BadConfig(path, [ConfigIssue("", f"cannot read: {exc.strerror}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadConfig(path, [ConfigIssue("", f"TOML syntax: {exc}")]) from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative folders in [paths] are relative to the config file, not the working folder."""
    paths = raw.get("paths")
    if isinstance(paths, dict):
        for key in ("data_dir", "runtime_dir"):
            value = paths.get(key)
            if isinstance(value, str) and not os.path.isabs(value):
                paths[key] = str((base / value).resolve())


def read_raw(path: Path) -> dict[str, Any]:
    """The config file's TOML as written (relative paths kept), or :class:`BadConfig`."""
    return _read(path)


def validate(raw: dict[str, Any], source: Path) -> KitConfig:
    """``raw`` checked as if it were the file ``source`` (``raw`` itself is left as it is)."""
    raw = {**raw, "paths": dict(raw["paths"])} if isinstance(raw.get("paths"), dict) else raw
    _resolve_paths(raw, source.parent)
    try:
        return KitConfig.model_validate(raw)
    except ValidationError as err:
        raise BadConfig(source, _issues(err)) from None


def parse(path: Path) -> KitConfig:
    """The config in ``path``, or :class:`BadConfig` listing every error at once."""
    return validate(_read(path), path)


def load(path: Path | None = None) -> Loaded:
    """Load for a daemon: never raises for a bad file; returns a safe-mode config instead."""
    path = (path or default_path()).absolute()
    try:
        return Loaded(parse(path), path)
    except BadConfig as bad:
        return Loaded(_salvage(path), path, bad.issues)


def _salvage(path: Path) -> KitConfig:
    """Defaults, plus every top-level section that is valid on its own.

    Keeps the data folder of a config with a typo elsewhere, so safe mode still finds
    (and keeps filling) the real store.
    """
    try:
        raw = _read(path)
    except BadConfig:
        raw = {}
    _resolve_paths(raw, path.parent)
    sections: dict[str, Any] = {}
    for name, info in KitConfig.model_fields.items():
        model = info.annotation
        value = raw.get(name)
        if isinstance(value, dict) and isinstance(model, type) and issubclass(model, BaseModel):
            with contextlib.suppress(ValidationError):
                sections[name] = model.model_validate(value)
    links = raw.get("links")
    if isinstance(links, list):
        # Keep every link that is valid on its own: a typo in one link must not mute the rest.
        adapter: TypeAdapter[Any] = TypeAdapter(LinkConfig)
        good = []
        for entry in links:
            with contextlib.suppress(ValidationError):
                good.append(adapter.validate_python(entry))
        sections["links"] = good
    if "kit" not in sections:
        # Unprovisioned or broken identity: id 0 marks it; nothing is sent in safe mode.
        sections["kit"] = KitSection.model_construct(id=0, name="未配置 / unconfigured")
    return KitConfig.model_construct(None, **{**_defaults(), **sections})


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in KitConfig.model_fields.items():
        if info.default_factory is not None:
            out[name] = info.default_factory()  # type: ignore[call-arg]
    return out


def render_default(
    kit_id: int,
    name: str,
    data_dir: str,
    runtime_dir: str,
    centre_url: str | None = None,
    centre_key: str = "",
) -> str:
    """A commented starting config, as written by ``kit init-config``."""
    link = (
        f"""
# One [[links]] table per way out. kind = "ip" (VSAT, cellular, Ethernet) or "datagram".
[[links]]
kind = "ip"
name = "ethernet"
url = "{centre_url}"      # the command centre's ingest on this path
rate = 1000000            # expected bytes/s until measured
rtt = 0.05
"""
        if centre_url
        else ""
    )
    return f"""\
# 野外通信套件配置 / Field kit configuration
# Every key is checked; unknown keys are errors. `kit config check FILE` lists them all.

[kit]
id = {kit_id}            # 1–65535, unique per kit (set at provisioning)
name = "{name}"

[paths]
data_dir = "{data_dir}"       # store, media, keys (relative paths: relative to this file)
runtime_dir = "{runtime_dir}" # sockets of the bus and the edge daemon

[security]               # `kit provision` makes this kit's key pair in <data_dir>/keys
profile = "default"      # default (X25519 + ChaCha20-Poly1305) or national (SM2/SM3/SM4)
centre_public_key = "{centre_key}"  # as `kit centre keys` prints it
encrypt_at_rest = false  # seal report bodies in the outbox; a key wipe then shreds them

[edge]
max_batch = 512          # accepts committed per transaction (group commit)
reserve_mb = 64          # free space kept for SOS and reports; below it tracks and media wait

[log]
level = "INFO"

[web]                    # the page on the kit's Wi-Fi: status, reports, team map, configuration
listen = "0.0.0.0:8080"  # config pages need a login: set it with `kit web-password` (no default)
max_photo_mb = 20        # largest photo a phone may upload
max_photos = 4           # photos per report
# tiles = "map.mbtiles"  # offline map (MBTiles, in the data folder); default: a sample area

[wifi]                   # the kit's access point; the page writes <data_dir>/hostapd.conf
enabled = false
# ssid = "KIT-07"
# passphrase = "8 to 63 characters"
# channel = 6

# 设备 / devices (kit drivers). KIT_BACKEND=sim runs every device simulated.
[gnss]
source = "gpsd"          # gpsd (the image runs it; it also feeds chrony) or serial
# device = "/dev/ttyAMA0" # with source = "serial"
set_clock = false        # true: step the clock from GNSS when chrony has not

[power]
source = "sysfs"         # sysfs (a battery driver), ina219 (I2C UPS HAT) or none
save_percent = 30        # below: bulk media waits, slower polling
critical_percent = 10    # below: flush the outbox and power off cleanly

[gpio]                   # BCM pin numbers; leave out what is not wired
# button_pin = 17        # SOS: hold 3 s
# link_led_pin = 5
# queue_led_pin = 6
# battery_led_pin = 13
# buzzer_pin = 18

[mesh]                   # the team's Meshtastic radio
enabled = false
connection = "serial"    # serial (USB) or tcp (a radio on the network)
# device = "/dev/ttyACM0"

# 无人机视频 / drone video, recorded without decoding in segments (P4 items):
# [media]
# quota_bytes = 17179869184 # 16 GB; past it, the oldest video whose preview the centre has goes
# clip_every_min = 10      # a 10 s preview clip (P3) of each feed's busiest segment per stretch
# [[media.sources]]
# name = "drone-1"
# kind = "rtmp"           # the controller pushes to rtmp://<kit>:1935/live/drone-1
# listen = "0.0.0.0:1935"
# segment_s = 10

# 北斗 / Beidou (mtu and interval are read from the card):
# [[links]]
# kind = "beidou"
# name = "beidou"
# device = "/dev/ttyUSB0"
# protocol = "4.0"
# centre_id = "0300001"   # the command centre's card
#
# 天通短信 / Tiantong SMS (one 140-byte message per frame):
# [[links]]
# kind = "sms"
# name = "tiantong-sms"
# device = "/dev/ttyUSB2"
# centre_number = "+8617400000000"
#
# 天通数据 / Tiantong data (pppd dials first; a router terminal needs no [links.dial]):
# [[links]]
# kind = "ip"
# name = "tiantong-data"
# url = "https://centre.example:8440"
# rate = 1200
# rtt = 1.2
# [links.dial]
# peer = "tiantong"
{link}"""
