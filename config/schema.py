"""The kit's config schema: one strict model, every field described and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class LogSection(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", title="日志级别 / Log level", description="Least severe level written to the log."
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

    @property
    def store_path(self) -> Path:
        return self.paths.data_dir / "outbox.sqlite3"

    def endpoint(self, name: str) -> str:
        """The ipc:// endpoint of socket ``name`` under the runtime folder."""
        return f"ipc://{self.paths.runtime_dir / name}.sock"
