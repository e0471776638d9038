"""The contract every device driver keeps, so its owner process can run and report them alike.

A device is started and closed by its owner (the drivers or the uplink process), and says
how it is at any moment with :meth:`Device.state`: online or not, one line for a person
(Chinese first), and a flat ``detail`` of numbers and short strings for the status page.
The owner publishes each state on :data:`edge.topics.DEVICE_STATE` when it changes and
every few seconds; the edge daemon keeps the latest per device for ``kit status``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from edge.topics import Detail, DeviceState

__all__ = ["Detail", "Device", "DeviceState", "Lifecycle"]


class Lifecycle:
    """Started and closed explicitly, or used as ``async with`` (drivers and simulators)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

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
