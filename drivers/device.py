"""The contract every device driver keeps, so its owner process can run and report them alike.

A device is started and closed by its owner (the drivers or the uplink process), and says
how it is at any moment with :meth:`Device.state`: online or not, one line for a person
(Chinese first), and a flat ``detail`` of numbers and short strings for the status page.
The owner publishes each state on :data:`edge.topics.DEVICE_STATE` when it changes and
every few seconds; the edge daemon keeps the latest per device for ``kit status``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from edge.topics import Detail, DeviceState

__all__ = ["Detail", "Device", "DeviceState", "Lifecycle", "wait_set"]


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set, False if ``timeout`` seconds pass first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class Lifecycle(ABC):
    """Started and closed explicitly, or used as ``async with`` (drivers and simulators)."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@runtime_checkable
class Device(Protocol):
    """What an owner process needs of a driver."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def state(self) -> DeviceState: ...
