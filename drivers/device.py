"""The contract every device driver keeps, so its owner process can run and report them alike.

A device is started and closed by its owner (the drivers or the uplink process), and says
how it is at any moment with :meth:`Device.state`: online or not, one line for a person
(Chinese first), and a flat ``detail`` of numbers and short strings for the status page.
The owner publishes each state on :data:`edge.topics.DEVICE_STATE` when it changes and
every few seconds; the edge daemon keeps the latest per device for ``kit status``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from edge.topics import Detail, DeviceState

__all__ = ["Detail", "Device", "DeviceState"]


@runtime_checkable
class Device(Protocol):
    """What an owner process needs of a driver."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def state(self) -> DeviceState: ...
