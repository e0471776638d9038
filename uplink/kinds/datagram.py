"""Datagram link: narrow frames as UDP datagrams to a frame gateway (emulated links, IP radios)."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, field_validator

from uplink.frames import MIN_MTU
from uplink.link import FrameLink, LinkDown, LinkParams
from uplink.registry import LinkConfigBase

Address = tuple[str, int]


def parse_address(text: str, *, port_zero: bool = False) -> Address:
    """``host:port`` (``[v6]:port`` for IPv6) as a tuple; ``ValueError`` if malformed."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    lowest = 0 if port_zero else 1
    if (
        not sep
        or not host
        or any(c.isspace() or c in "[]" for c in host)
        or not port.isascii()
        or not port.isdigit()
        or not lowest <= int(port) <= 65_535
    ):
        raise ValueError(
            f"应为 主机:端口（端口 {lowest}–65535）：{text!r} / "
            f"expected host:port (port {lowest}..65535), got {text!r}"
        )
    return host, int(port)


class Config(LinkConfigBase):
    """A link carrying frames as UDP datagrams to the centre's frame gateway."""

    kind: Literal["datagram"] = Field(
        title="链路类型 / Link kind",
        description="datagram: narrow frames over UDP (an IP radio, or an emulated link).",
    )
    gateway: str = Field(
        title="帧网关 / Frame gateway",
        description="host:port of the centre's frame gateway (UDP), e.g. centre.example:7400.",
        max_length=262,
    )
    mtu: int = Field(
        title="最大帧长 / MTU",
        description="Largest frame in bytes the radio carries in one datagram (mesh: 233).",
        ge=MIN_MTU,
        le=1750,
    )
    min_interval: float = Field(
        0.0,
        title="最小发送间隔 / Minimum interval",
        description="Seconds the radio needs between two frames; earlier sends are refused.",
        ge=0,
        le=3600,
    )
    bind: str = Field(
        "127.0.0.1:0",
        title="本地地址 / Local address",
        description="host:port to send from; port 0 picks one. 0.0.0.0:0 for a radio.",
        max_length=262,
    )

    @field_validator("gateway")
    @classmethod
    def _gateway_is_host_port(cls, gateway: str) -> str:
        parse_address(gateway)
        return gateway

    @field_validator("bind")
    @classmethod
    def _bind_is_host_port(cls, bind: str) -> str:
        parse_address(bind, port_zero=True)
        return bind


class _Endpoint(asyncio.DatagramProtocol):
    """Hands datagrams to the link; ``ended`` fails with the socket's first error."""

    def __init__(self, link: DatagramLink) -> None:
        self.link = link
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.link.deliver(data)

    def error_received(self, exc: Exception) -> None:
        if not self.ended.done():
            self.ended.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended.done():
            return
        if exc is None:
            self.ended.set_result(None)
        else:
            self.ended.set_exception(exc)


class DatagramLink(FrameLink):
    """One UDP socket connected to the gateway: a frame per datagram, each way.

    Connected, so the kernel delivers only the gateway's datagrams and reports its ICMP
    errors (port unreachable: the gateway is not listening); the first error ends
    :meth:`receive_loop`, and :meth:`run` goes offline, logs and reconnects.
    """

    kind = "datagram"

    def __init__(self, params: LinkParams, gateway: Address, bind: Address) -> None:
        super().__init__(params)
        self.gateway = gateway
        self.bind = bind
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint: _Endpoint | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, self._endpoint = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self), local_addr=self.bind, remote_addr=self.gateway
        )

    async def receive_loop(self) -> None:
        if self._endpoint is None:
            raise self._down("未连接", "not connected")
        try:
            await self._endpoint.ended
        except ConnectionRefusedError:
            raise self._down(
                "端口不可达，网关是否在运行？", "port unreachable: is the gateway running?"
            ) from None
        except OSError as exc:
            raise self._down(str(exc), str(exc)) from exc

    async def disconnect(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self._endpoint = None

    async def transmit(self, frame: bytes) -> None:
        transport, endpoint = self._transport, self._endpoint
        if transport is None or endpoint is None or endpoint.ended.done():
            raise self._down("套接字已关闭或出错", "socket closed or failed")
        transport.sendto(frame)

    def _down(self, why_zh: str, why_en: str) -> LinkDown:
        host, port = self.gateway
        return LinkDown(
            f"链路 {self.name} 无法到达帧网关 {host}:{port}：{why_zh}",
            f"link {self.name} cannot reach the frame gateway {host}:{port}: {why_en}",
        )


def make(config: Config) -> DatagramLink:
    return DatagramLink(
        config.params(mtu=config.mtu, min_interval=config.min_interval),
        gateway=parse_address(config.gateway),
        bind=parse_address(config.bind, port_zero=True),
    )
