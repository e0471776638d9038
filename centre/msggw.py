"""A frame gateway on a message terminal (the centre's Beidou command card, an SMS modem).

One frame per message each way. Messages in are queued (bounded) and handled one at a
time by :meth:`FrameGateway.handle`; the answers go back to the address (card number,
phone number) the kit's frame came from. The terminal sends one message at a time at
its own pace (a Beidou card's service interval), so answers wait in a bounded outbox:
when it overflows the oldest answers go (the kit asks again, or re-sends and is
acknowledged anew). Every ``poll_s`` stalled messages are asked for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from centre import pump
from centre.frames import FrameGateway
from drivers import tiantong
from drivers.beidou import BadMessage, BeidouTerminal, NoFeedback, Refused, TerminalOffline
from drivers.beidou import TooSoon as BeidouTooSoon
from drivers.device import Device
from drivers.smspdu import BadAddress, MessageTooLong
from edge.errors import KitError
from mesh.config import MeshConfig
from mesh.radio import DataReceived, Event, MeshRadio, RadioOffline, node_id

log = logging.getLogger(__name__)

QUEUE = 256  # messages in waiting to be handled; more are dropped
OUTBOX = 256  # answers waiting for the terminal; the oldest go first when full
OFFLINE_RETRY_S = 5.0


class Retry(Exception):
    """The terminal cannot send now; try the same message again after ``after_s``."""

    def __init__(self, after_s: float, reason: str) -> None:
        super().__init__(reason)
        self.after_s = after_s


class Drop(Exception):
    """The terminal will never carry this message."""


Send = Callable[[str, bytes], Awaitable[None]]


@dataclass
class MessageGateway:
    """A running frame gateway on one terminal; :meth:`close` stops it.

    ``send(address, frame)`` transmits one message, raising :class:`Retry` or
    :class:`Drop`; wire the terminal's received messages to :meth:`received`.
    """

    gateway: FrameGateway
    send: Send
    poll_s: float
    inbox: asyncio.Queue[tuple[str, bytes]] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    outbox: deque[tuple[str, bytes]] = field(default_factory=lambda: deque(maxlen=OUTBOX))
    kits: dict[int, str] = field(default_factory=dict)  # the address each kit was last heard from
    dropped_in: int = 0
    dropped_out: int = 0
    sent: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _more: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        name = self.gateway.name
        self.tasks = [
            asyncio.create_task(
                pump.answer(self.gateway, self.inbox, self.kits, self._queue), name=f"msggw {name}"
            ),
            asyncio.create_task(self._sender(), name=f"msggw {name} send"),
            asyncio.create_task(
                pump.ask(self.gateway, self.kits, self.poll_s, self._queue),
                name=f"msggw {name} missing",
            ),
        ]

    def received(self, address: str, payload: bytes) -> None:
        """A message came in from ``address`` (called by the terminal's driver)."""
        try:
            self.inbox.put_nowait((address, payload))
        except asyncio.QueueFull:
            self.dropped_in += 1
            log.warning("%s: message from %s dropped: too many waiting", self.gateway.name, address)

    def _queue(self, address: str, frames: list[bytes]) -> None:
        for frame in frames:
            if len(self.outbox) == self.outbox.maxlen:
                self.dropped_out += 1
                log.warning("%s: outbox full; oldest answer dropped", self.gateway.name)
            self.outbox.append((address, frame))
        if frames:
            self._more.set()

    async def _sender(self) -> None:
        while True:
            if not self.outbox:
                self._more.clear()
                await self._more.wait()
                continue
            address, frame = self.outbox[0]
            try:
                await self.send(address, frame)
            except Retry as wait:
                log.info("%s: %s; next try in %.1f s", self.gateway.name, wait, wait.after_s)
                await asyncio.sleep(wait.after_s)
                continue
            except Drop as why:
                log.warning("%s: answer to %s dropped: %s", self.gateway.name, address, why)
            else:
                self.sent += 1
            if self.outbox and self.outbox[0] == (address, frame):
                self.outbox.popleft()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def beidou_sender(terminal: BeidouTerminal) -> Send:
    """``send`` for :class:`MessageGateway` on the centre's Beidou terminal."""

    async def send(address: str, frame: bytes) -> None:
        wait = terminal.next_send_at - time.monotonic()
        if wait > 0:
            raise Retry(wait, "service interval not over")
        try:
            await terminal.send(address, frame)
        except BeidouTooSoon as exc:
            raise Retry(exc.wait_s, exc.en) from exc
        except (TerminalOffline, NoFeedback) as exc:
            # Without feedback the message may have gone; an answer twice does no harm.
            wait = max(OFFLINE_RETRY_S, terminal.next_send_at - time.monotonic())
            raise Retry(wait, exc.en) from exc
        except (Refused, BadMessage) as exc:
            raise Drop(exc.en) from exc

    return send


def sms_sender(modem: tiantong.TiantongModem) -> Send:
    """``send`` for :class:`MessageGateway` on the centre's SMS modem (PDU mode, 8-bit data)."""

    async def send(address: str, frame: bytes) -> None:
        try:
            await modem.send_sms(address, frame)
        except (tiantong.ModemOffline, tiantong.SendFailed, tiantong.ModemBusy) as exc:
            raise Retry(OFFLINE_RETRY_S, exc.en) from exc
        except (tiantong.BadMessage, BadAddress, MessageTooLong) as exc:
            raise Drop(exc.en) from exc

    return send


def beidou_gateway(gateway: FrameGateway, device: str, protocol: str) -> Terminal:
    version: Literal["4.0", "5.0"] = "5.0" if protocol == "5.0" else "4.0"
    terminal = BeidouTerminal(device, protocol=version, name=gateway.name)
    server = MessageGateway(gateway, beidou_sender(terminal), _poll_s(gateway))
    terminal.on_message = server.received
    return Terminal(server, terminal)


def sms_gateway(gateway: FrameGateway, device: str) -> Terminal:
    modem = tiantong.TiantongModem(device, name=gateway.name, sms_mode="pdu")
    server = MessageGateway(gateway, sms_sender(modem), _poll_s(gateway))

    def received(sender: str, payload: str | bytes, sent_at: object) -> None:
        if isinstance(payload, bytes):
            server.received(sender, payload)
        else:
            log.info("%s: text from %s is not a frame; left alone", gateway.name, sender)

    modem.on_sms = received
    return Terminal(server, modem)


MESH_MAX_UTILISATION = 40.0  # no answers while the channel is this busy (as the kits do)


def mesh_sender(radio: MeshRadio) -> Send:
    """``send`` for :class:`MessageGateway` on the centre's Meshtastic node: an answer goes
    to the node the kit's frame came from, never while the channel is 40 % busy."""

    async def send(address: str, frame: bytes) -> None:
        busy = radio.channel_utilisation
        if busy is not None and busy >= MESH_MAX_UTILISATION:
            raise Retry(OFFLINE_RETRY_S, f"channel utilisation {busy:.0f} %")
        try:
            await radio.send_data(frame, int(address.removeprefix("!"), 16))
        except RadioOffline as exc:
            raise Retry(OFFLINE_RETRY_S, exc.en) from exc
        except KitError as exc:
            raise Drop(exc.en) from exc

    return send


def mesh_config(device: str) -> MeshConfig:
    """The centre node's connection: a serial port, or ``tcp:HOST:PORT``."""
    if device.startswith("tcp:"):
        host, _, port = device[4:].rpartition(":")
        return MeshConfig(connection="tcp", host=host or "127.0.0.1", port=int(port))
    return MeshConfig(connection="serial", device=device)


def mesh_gateway(gateway: FrameGateway, device: str) -> Terminal:
    radio = MeshRadio(mesh_config(device), name=gateway.name)
    server = MessageGateway(gateway, mesh_sender(radio), _poll_s(gateway))

    def heard(event: Event) -> None:
        if isinstance(event, DataReceived):
            server.received(node_id(event.sender_num), event.payload)

    radio.on_event = heard
    return Terminal(server, radio)


def _poll_s(gateway: FrameGateway) -> float:
    return min(max(gateway.missing_after_s / 4, 0.05), 30.0)


@dataclass
class Terminal:
    """A frame gateway and the device it runs on (the centre's Beidou terminal, SMS modem)."""

    server: MessageGateway
    device: Device | MeshRadio

    async def start(self) -> None:
        await self.device.start()
        self.server.start()
        log.info("%s: frame gateway on %s", self.server.gateway.name, self.device.state().summary)

    async def close(self) -> None:
        await self.server.close()
        await self.device.close()
