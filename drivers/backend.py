"""How a driver gets its backend: the one passed in, else the kind ``KIT_BACKEND`` names."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from edge.errors import KitError

ENV = "KIT_BACKEND"
KINDS = ("real", "sim")

T = TypeVar("T")


class BadBackend(KitError, ValueError):
    """``KIT_BACKEND`` names no known kind of backend."""


class SerialBackend(Protocol):
    """Where a serial driver's bytes come from: a device path it opens, with a life of its own."""

    @property
    def path(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SerialDevice:
    """A real device node, such as ``/dev/ttyUSB0``: it is plugged in or not, nothing to run."""

    path: str

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def kind() -> str:
    """The kind ``KIT_BACKEND`` names (``real`` when unset); :class:`BadBackend` if unknown."""
    value = os.environ.get(ENV, "real") or "real"
    if value not in KINDS:
        raise BadBackend(
            f"{ENV}={value!r} 无效，应为 {' 或 '.join(KINDS)}",
            f"{ENV}={value!r} is not one of {', '.join(KINDS)}",
        )
    return value


def choose(given: T | None, *, real: Callable[[], T], sim: Callable[[], T]) -> tuple[T, bool]:
    """``(backend, owned)``: ``given`` (the caller's to close), else a new one the driver owns.

    ``KIT_BACKEND=sim`` picks ``sim()``; unset or ``real`` picks ``real()``. Read on each
    call, never at import, so tests and the edge daemon can set it late.
    """
    if given is not None:
        return given, False
    return (sim() if kind() == "sim" else real()), True


def serial_backend(
    given: SerialBackend | str | os.PathLike[str] | None,
    *,
    device: str,
    sim: Callable[[], SerialBackend],
) -> tuple[SerialBackend, bool]:
    """A serial driver's backend: a path becomes a :class:`SerialDevice`; ``None`` defers to
    ``KIT_BACKEND`` between ``device`` and ``sim()``."""
    if isinstance(given, str | os.PathLike):
        given = SerialDevice(os.fspath(given))
    return choose(given, real=lambda: SerialDevice(device), sim=sim)
