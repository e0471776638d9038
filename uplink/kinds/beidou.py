"""Beidou link: frames as short messages to the centre's Beidou command card.

The frame size and the pace are the card's, read from it by the driver (never assumed):
``mtu`` is the card's payload per message (77 B on a typical level-3 4.0 card, 1,750 B
on a 5.0 regional card) and ``min_interval`` its service interval, stretched by any
wait the terminal reports. Only messages from the centre's card are taken in.
"""

from __future__ import annotations

import asyncio
import math
from typing import Literal

from pydantic import Field, field_validator

from drivers import backend
from drivers.beidou import (
    BadMessage,
    BeidouTerminal,
    NoFeedback,
    Refused,
    TerminalOffline,
    TooSoon,
    user_id,
)
from drivers.device import DeviceState
from uplink.frames import MIN_MTU
from uplink.link import FrameLink, LinkDown, LinkParams, LinkRefused
from uplink.registry import LinkConfigBase

CARD_WAIT_S = 30.0  # how long connect() waits for the terminal's card before retrying


class Config(LinkConfigBase):
    """A Beidou short-message terminal on a serial port."""

    kind: Literal["beidou"] = Field(
        title="链路类型 / Link kind",
        description="beidou: short messages through a Beidou terminal (4.0 or 5.0).",
    )
    device: str = Field(
        "/dev/ttyUSB0",
        title="串口设备 / Serial device",
        description="The terminal's serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/….",
        min_length=1,
        max_length=255,
    )
    protocol: Literal["4.0", "5.0"] = Field(
        "4.0",
        title="协议版本 / Protocol",
        description="4.0: BDS-2 RDSS ($CCTXA); 5.0: BDS-3 regional ($CCTCQ).",
    )
    centre_id: str = Field(
        title="指挥中心卡号 / Centre's card",
        description="Beidou user id of the command centre's terminal (digits).",
        pattern=r"^[0-9]{1,11}$",
    )
    rate: float = Field(
        1.3,
        title="速率 / Rate",
        description="Expected bytes per second (a 78-byte message a minute is about 1.3).",
        gt=0,
        le=1e6,
    )
    rtt: float = Field(
        10.0, title="往返时延 / RTT", description="Expected round trip in seconds.", gt=0, le=600
    )
    ack_timeout: float = Field(
        300.0,
        title="确认超时 / Ack timeout",
        description="Seconds to wait for the centre's acknowledgement before re-sending.",
        ge=1,
        le=86_400,
    )

    @field_validator("centre_id")
    @classmethod
    def _centre_is_user(cls, value: str) -> str:
        return user_id(value)


class BeidouLink(FrameLink):
    """Frames through a :class:`~drivers.beidou.BeidouTerminal`, one per message."""

    kind = "beidou"

    def __init__(self, params: LinkParams, terminal: BeidouTerminal, centre_id: str) -> None:
        super().__init__(params)
        self.terminal = terminal
        self.centre_id = user_id(centre_id)
        self._down = asyncio.Event()
        self._started = False
        terminal.on_message = self._on_message
        terminal.on_state = self._on_terminal

    # The card's figures, once read; the config's until then (the link is offline anyway).
    @property
    def mtu(self) -> int:
        return self.terminal.mtu or self.params.mtu

    @property
    def min_interval(self) -> float:
        interval = self.terminal.min_interval
        return self.params.min_interval if math.isinf(interval) else interval

    def next_send_at(self) -> float:
        return max(super().next_send_at(), self.terminal.next_send_at)

    def device_state(self) -> DeviceState:
        return self.terminal.state()

    async def connect(self) -> None:
        if not self._started:
            await self.terminal.start()
            self._started = True
        if not await self.terminal.wait_online(CARD_WAIT_S):
            raise LinkDown(*_why(self.terminal))
        if self.terminal.mtu < MIN_MTU:
            raise LinkDown(
                f"北斗卡每条仅 {self.terminal.mtu} 字节，少于帧的最小 {MIN_MTU} 字节",
                f"the Beidou card carries {self.terminal.mtu} B, less than a frame's {MIN_MTU}",
            )
        self._down.clear()

    async def receive_loop(self) -> None:
        await self._down.wait()
        raise LinkDown(*_why(self.terminal))

    async def close(self) -> None:
        """Release the terminal (the uplink's end)."""
        if self._started:
            await self.terminal.close()
            self._started = False

    async def transmit(self, frame: bytes) -> None:
        try:
            await self.terminal.send(self.centre_id, frame)
        except TooSoon as exc:
            raise LinkRefused(exc.zh, exc.en) from exc
        except (Refused, BadMessage) as exc:
            raise LinkRefused(exc.zh, exc.en) from exc
        except (TerminalOffline, NoFeedback) as exc:
            # Without feedback it may have gone out: the centre drops a duplicate by uid.
            self._down.set()
            raise LinkDown(exc.zh, exc.en) from exc
        self.rtt.update(self.params.rtt)

    def _on_message(self, sender: str, payload: bytes) -> None:
        if user_id(sender) != self.centre_id:
            self.stats.errors += 1
            self.stats.last_error = f"message from {sender}, not the centre"
            return
        self.deliver(payload)

    def _on_terminal(self, online: bool) -> None:
        if not online:
            self._down.set()


def _why(terminal: BeidouTerminal) -> tuple[str, str]:
    state = terminal.state()
    return f"北斗终端离线：{state.summary_zh}", f"Beidou terminal offline: {state.summary_en}"


def make(config: Config) -> BeidouLink:
    device = None if backend.kind() == "sim" else config.device
    terminal = BeidouTerminal(device, protocol=config.protocol, name=config.name)
    # min_interval: infinite until the card says; the card's value replaces it on connect.
    return BeidouLink(
        config.params(mtu=MIN_MTU, min_interval=60.0), terminal, centre_id=config.centre_id
    )
