"""The loops every frame gateway runs, whatever carries its frames (UDP, a terminal, a modem).

:func:`answer` takes frames from a queue, hands each to :meth:`FrameGateway.handle`,
remembers where each kit was last heard and sends the answers back there; :func:`ask`
sends each stalled message's MISSING request, and each order due, to where its kit was
last heard. ``A`` is the transport's address: ``(host, port)``, a Beidou card number, a
phone number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from centre.frames import FrameGateway
from uplink.frames import decode_frame

log = logging.getLogger(__name__)

A = TypeVar("A")
Send = Callable[[A, list[bytes]], None]


def describe(address: object) -> str:
    """An address as stored with an item's arrival: ``host:port``, or the text as it is."""
    if isinstance(address, tuple) and len(address) == 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


async def answer(
    gateway: FrameGateway,
    inbox: asyncio.Queue[tuple[A, bytes]],
    kits: dict[int, A],
    send: Send[A],
) -> None:
    """Handle queued frames one at a time, until cancelled."""
    while True:
        address, data = await inbox.get()
        try:
            answers = await gateway.handle(data, via=describe(address))
        except Exception:
            log.exception("%s: frame from %s not handled", gateway.name, address)
            continue
        # Only a frame that passed the checks tells where its kit is now: a forged one
        # must not redirect the kit's orders and MISSING requests to a stranger.
        if gateway.authentic is not None:
            kits[gateway.authentic] = address
        if answers:
            send(address, answers)


async def ask(gateway: FrameGateway, kits: dict[int, A], poll_s: float, send: Send[A]) -> None:
    """Every ``poll_s``, ask the kits heard from for the fragments still missing, and offer
    them the orders due (an idle kit sends nothing an order could answer)."""
    while True:
        await asyncio.sleep(poll_s)
        try:
            requests = await gateway.missing(kits.keys())
            for kit_id in list(kits):
                requests += await gateway.orders(kit_id)
        except Exception:
            log.exception("%s: MISSING requests or orders failed", gateway.name)
            continue
        for frame in requests:
            send(kits[decode_frame(frame).kit_id], [frame])
