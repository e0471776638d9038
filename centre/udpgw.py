"""A frame gateway on a UDP socket: one frame per datagram, answers to the sender.

Datagrams are queued (bounded: a flood drops datagrams, not memory) and handled one
at a time by :meth:`FrameGateway.handle`; its answers go back to the address the
datagram came from. Every ``poll_s`` the gateway's :meth:`~FrameGateway.missing`
requests go to the address each kit was last heard from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from centre import pump
from centre.frames import FrameGateway

log = logging.getLogger(__name__)

QUEUE = 1024  # datagrams waiting to be handled; more are dropped
Address = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[Address, bytes]], name: str) -> None:
        self.queue = queue
        self.name = name
        self.dropped = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.queue.put_nowait(((addr[0], addr[1]), data))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%s: %d datagrams dropped: too many waiting", self.name, self.dropped)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of earlier sends (a kit's radio went away); the socket stays usable.
        log.info("%s: %s", self.name, exc)


@dataclass
class UdpServer:
    """A running UDP frame gateway; :meth:`close` stops it."""

    gateway: FrameGateway
    transport: asyncio.DatagramTransport
    poll_s: float
    queue: asyncio.Queue[tuple[Address, bytes]]
    kits: dict[int, Address] = field(default_factory=dict)  # where each kit was last heard
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        """The bound (host, port): the real port when listening on port 0."""
        sockname = self.transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    def _send(self, addr: Address, frames: list[bytes]) -> None:
        if self.transport.is_closing():
            return
        for frame in frames:
            self.transport.sendto(frame, addr)

    async def close(self) -> None:
        self.transport.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve_udp(
    gateway: FrameGateway, listen: tuple[str, int], *, poll_s: float | None = None
) -> UdpServer:
    """Listen for frames on UDP ``listen`` (port 0 picks one) until ``close()``.

    ``poll_s`` is how often stalled messages are looked for: by default a quarter of the
    gateway's ``missing_after_s``, between 0.05 and 5 seconds.
    """
    if poll_s is None:
        poll_s = min(max(gateway.missing_after_s / 4, 0.05), 5.0)
    queue: asyncio.Queue[tuple[Address, bytes]] = asyncio.Queue(QUEUE)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Protocol(queue, gateway.name), local_addr=listen
    )
    server = UdpServer(gateway, transport, poll_s, queue)
    server.tasks = [
        asyncio.create_task(
            pump.answer(gateway, queue, server.kits, server._send), name=f"udpgw {gateway.name}"
        ),
        asyncio.create_task(
            pump.ask(gateway, server.kits, poll_s, server._send),
            name=f"udpgw {gateway.name} missing",
        ),
    ]
    log.info("%s: frame gateway listening on UDP %s:%d", gateway.name, *server.address)
    return server
