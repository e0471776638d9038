"""SMS link: frames as 8-bit data short messages to the centre's modem (Tiantong or cellular).

One frame per message, at most 140 bytes (one 8-bit SMS segment: a frame never needs a
concatenated SMS, which would cost several messages and fail as a whole). The modem
is driven in PDU mode, the only mode that carries binary. Only messages from the
centre's number are taken in; texts (not frames) from anyone are logged and left.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from drivers import backend
from drivers.device import DeviceState
from drivers.smspdu import BadAddress, MessageTooLong, encode_address
from drivers.tiantong import BadMessage, ModemBusy, ModemOffline, SendFailed, TiantongModem
from uplink.link import FrameLink, LinkDown, LinkParams, LinkRefused
from uplink.registry import LinkConfigBase

SMS_MTU = 140
REGISTER_WAIT_S = 30.0  # how long connect() waits for the modem to register
WATCH_S = 5.0  # how often the receive loop looks whether the modem is still online
SAME_NUMBER_DIGITS = 11  # +8617700000001, 8617700000001 and 17700000001 are one number


class Config(LinkConfigBase):
    """A modem sending frames as short messages."""

    kind: Literal["sms"] = Field(
        title="链路类型 / Link kind",
        description="sms: frames as 8-bit short messages (Tiantong terminal or cellular modem).",
    )
    device: str = Field(
        "/dev/ttyUSB0",
        title="串口设备 / Serial device",
        description="The modem's AT command port, e.g. /dev/ttyUSB2.",
        min_length=1,
        max_length=255,
    )
    centre_number: str = Field(
        title="指挥中心号码 / Centre's number",
        description="Phone number of the command centre's SMS modem, e.g. +8617400000000.",
        min_length=3,
        max_length=21,
    )
    rate: float = Field(
        14.0,
        title="速率 / Rate",
        description="Expected bytes per second (one 140-byte message every 10 s or so).",
        gt=0,
        le=1e6,
    )
    rtt: float = Field(
        20.0, title="往返时延 / RTT", description="Expected round trip in seconds.", gt=0, le=600
    )
    ack_timeout: float = Field(
        180.0,
        title="确认超时 / Ack timeout",
        description="Seconds to wait for the centre's acknowledgement before re-sending.",
        ge=1,
        le=86_400,
    )

    @field_validator("centre_number")
    @classmethod
    def _number(cls, value: str) -> str:
        try:
            encode_address(value)
        except BadAddress as err:
            raise ValueError(err.en) from None
        return value


def same_number(a: str, b: str) -> bool:
    """One subscriber, whatever the prefix: the last 11 digits (a Chinese mobile) agree."""
    da, db = ("".join(c for c in x if c.isdigit())[-SAME_NUMBER_DIGITS:] for x in (a, b))
    return bool(da) and da == db


class SmsLink(FrameLink):
    """Frames through a :class:`~drivers.tiantong.TiantongModem` in PDU mode."""

    kind = "sms"

    def __init__(self, params: LinkParams, modem: TiantongModem, centre_number: str) -> None:
        super().__init__(params)
        self.modem = modem
        self.centre_number = centre_number
        self._started = False
        self._down = asyncio.Event()
        modem.on_sms = self._on_sms

    def device_state(self) -> DeviceState:
        return self.modem.state()

    async def connect(self) -> None:
        if not self._started:
            await self.modem.start()
            self._started = True
        if not await self.modem.wait_online(REGISTER_WAIT_S):
            raise LinkDown(*_why(self.modem))
        self._down.clear()

    async def receive_loop(self) -> None:
        while self.modem.online and not self._down.is_set():
            try:
                await asyncio.wait_for(self._down.wait(), WATCH_S)
            except TimeoutError:
                continue
        raise LinkDown(*_why(self.modem))

    async def close(self) -> None:
        if self._started:
            await self.modem.close()
            self._started = False

    async def transmit(self, frame: bytes) -> None:
        try:
            await self.modem.send_sms(self.centre_number, frame)
        except (ModemBusy, BadMessage, MessageTooLong, BadAddress) as exc:
            raise LinkRefused(exc.zh, exc.en) from exc
        except (ModemOffline, SendFailed) as exc:
            self._down.set()
            raise LinkDown(exc.zh, exc.en) from exc

    def _on_sms(self, sender: str, payload: str | bytes, sent_at: datetime) -> None:
        if not same_number(sender, self.centre_number) or isinstance(payload, str):
            self.stats.errors += 1
            self.stats.last_error = f"SMS from {sender} is not a frame from the centre"
            return
        self.deliver(payload)


def _why(modem: TiantongModem) -> tuple[str, str]:
    state = modem.state()
    return f"短信模块离线：{state.summary_zh}", f"SMS modem offline: {state.summary_en}"


def make(config: Config) -> SmsLink:
    device = None if backend.kind() == "sim" else config.device
    modem = TiantongModem(device, name=config.name, sms_mode="pdu")
    return SmsLink(config.params(mtu=SMS_MTU), modem, config.centre_number)
