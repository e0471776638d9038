"""The ``[media]`` config section: the video sources the kit records, thumbnails, disk quota."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class VideoSource(_Strict):
    """One drone or camera feed, recorded by its own ffmpeg process."""

    name: str = Field(
        title="名称 / Name",
        description="Short name of the feed, unique in the kit; items come from "
        "``drone:<name>`` and files go to ``media/video/<name>/``.",
        pattern=_NAME,
        min_length=1,
        max_length=32,
    )
    kind: Literal["rtmp", "rtsp", "udp"] = Field(
        title="接入方式 / Kind",
        description="rtmp: the kit is the RTMP server a controller pushes to (DJI's common "
        "case); rtsp: the kit pulls from a camera or app's RTSP server; udp: the kit "
        "receives MPEG-TS over UDP.",
    )
    listen: str = Field(
        "0.0.0.0:1935",
        title="监听地址 / Listen address",
        description="host:port the kit listens on, for rtmp (controller pushes to "
        "rtmp://<kit>:<port>/live/<name>) and udp.",
        min_length=3,
        max_length=64,
    )
    url: str | None = Field(
        None,
        title="拉流地址 / Stream URL",
        description="rtsp:// URL to pull from, for kind rtsp, e.g. "
        "rtsp://user:pw@192.168.1.20:8554/streaming/live/1.",
        min_length=8,
        max_length=512,
    )
    segment_s: int = Field(
        10,
        title="分段时长 / Segment length",
        description="Seconds of video per file (and per P4 item); cut at the next key frame.",
        ge=2,
        le=60,
    )
    enabled: bool = Field(
        True,
        title="启用 / Enabled",
        description="Record this feed; a disabled feed keeps its settings but is not opened.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        found = _LISTEN.match(value)
        if found is None or not 1 <= int(found.group(2)) <= 65535:
            raise ValueError("expected host:port, e.g. 0.0.0.0:1935")
        return value

    @model_validator(mode="after")
    def _url_for_rtsp(self) -> VideoSource:
        if self.kind == "rtsp" and (self.url is None or not self.url.startswith("rtsp://")):
            raise ValueError("an rtsp source needs url = rtsp://…")
        if self.kind != "rtsp" and self.url is not None:
            raise ValueError(f"url is only for rtsp sources; a {self.kind} source uses listen")
        return self


class MediaConfig(_Strict):
    """Video recording: where feeds come from, how they are cut, how much disk they may use."""

    sources: list[VideoSource] = Field(
        default_factory=list,
        title="视频源 / Video sources",
        description="Drone and camera feeds, one [[media.sources]] table each.",
        max_length=8,
    )
    quota_bytes: int = Field(
        16 * 1024**3,
        title="媒体配额 / Media quota",
        description="Most bytes of media kept on disk; past it the oldest full-quality video "
        "the centre has acknowledged (or whose preview it has) is evicted.",
        ge=64 * 1024**2,
        le=16 * 1024**4,
    )
    photo_inbox: bool = Field(
        True,
        title="照片收件夹 / Photo inbox",
        description="Take photos and voice notes dropped into <data_dir>/inbox (a card reader, "
        "a phone over USB): thumbnails (P3) first, then the full photo (P4); a recording "
        "becomes Codec2 (P3) and Opus (P4); refused files go to inbox/refused.",
    )
    thumbs_per_min: int = Field(
        6,
        title="每分钟缩略图 / Thumbnails per minute",
        description="Most thumbnails (P3) one feed sends per minute of video, each a new "
        "scene; 0 makes none. Only key frames are decoded, at most one every 2 s.",
        ge=0,
        le=30,
    )
    scene_threshold: float = Field(
        0.12,
        title="场景变化阈值 / Scene change threshold",
        description="How different (0 same … 1 all different) a key frame must be from the "
        "last thumbnail sent to be sent too.",
        ge=0.01,
        le=1.0,
    )
    clip_every_min: int = Field(
        10,
        title="预览片段间隔 / Preview clip every",
        description="Minutes of video per preview clip (P3: 10 s, 320 px wide, ≤ 64 kbit/s): "
        "each feed's segment with the most scene change in that stretch gets one; 0 makes "
        "none (clips can still be asked for).",
        ge=0,
        le=240,
    )
    ffmpeg: str = Field(
        "ffmpeg",
        title="ffmpeg 程序 / ffmpeg binary",
        description="Path or name (looked up in PATH) of the ffmpeg that records the feeds.",
        min_length=1,
        max_length=255,
    )

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[VideoSource]) -> list[VideoSource]:
        names: dict[str, int] = {}
        ports: dict[tuple[str, str], int] = {}  # an RTMP listener uses TCP, a UDP one UDP
        for i, source in enumerate(sources):
            if source.name in names:
                raise ValueError(
                    f"sources[{i}].name {source.name!r} is already used by "
                    f"sources[{names[source.name]}]"
                )
            names[source.name] = i
            if source.kind == "rtsp" or not source.enabled:
                continue
            key = (source.kind, source.listen.rsplit(":", 1)[1])
            if key in ports:
                raise ValueError(
                    f"sources[{i}].listen {source.listen!r}: port already used by "
                    f"sources[{ports[key]}]"
                )
            ports[key] = i
        return sources
