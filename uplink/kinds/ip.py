"""IP link kind (VSAT, cellular, Ethernet, MANET): batched items over HTTP and tus uploads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import cbor2
from pydantic import BaseModel, ConfigDict, Field, field_validator
from yarl import URL

from drivers.ppp import PppSession
from drivers.vsat import ProbeConfig, TerminalMonitor, TerminalStatus
from edge.topics import DeviceState
from security import ipauth, tlsid
from security.channel import Refusal
from security.ipauth import RequestSigner
from uplink.frames import Order
from uplink.link import Link, LinkDown, LinkRefused
from uplink.registry import LinkConfigBase

if TYPE_CHECKING:
    import aiohttp

TUS_VERSION = "1.0.0"


class PppDial(BaseModel):
    """Dial-up before the link can be used: pppd on a Tiantong terminal's serial port."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peer: str = Field(
        "tiantong",
        title="拨号配置名 / pppd peer",
        description="Name of the pppd peer file, /etc/ppp/peers/<peer> (the image writes it).",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
    )
    pppd: str = Field(
        "/usr/sbin/pppd",
        title="pppd 程序 / pppd program",
        description="Path of the pppd program.",
        min_length=1,
        max_length=255,
    )
    up_timeout_s: float = Field(
        90.0,
        title="拨号超时 / Dial-up timeout",
        description="Seconds to wait for the PPP interface to get an address before retrying.",
        ge=5,
        le=600,
    )


class Config(LinkConfigBase):
    kind: Literal["ip"] = Field(title="类型 / Kind", description="An IP path to the centre.")
    url: str = Field(
        title="指挥中心地址 / Centre URL",
        description="Base URL of the centre's ingest on this path, e.g. https://centre:8440.",
        min_length=8,
        max_length=200,
    )
    chunk_bytes: int = Field(
        128 * 1024,
        title="分块大小 / Chunk size",
        description="Bytes per upload request; smaller chunks let urgent items overtake sooner.",
        ge=4096,
        le=16 * 1024 * 1024,
    )
    batch_bytes: int = Field(
        64 * 1024,
        title="批量大小 / Batch size",
        description="Most bytes of small items sent in one request.",
        ge=1024,
        le=1024 * 1024,
    )
    streams: int = Field(
        4,
        title="并发分块 / Concurrent chunks",
        description="Most chunk uploads in flight at once; enough to fill rate × round trip.",
        ge=1,
        le=16,
    )
    probe_interval: float = Field(
        10.0,
        title="探测间隔 / Probe interval",
        description="Seconds between reachability probes while idle.",
        ge=0.2,
        le=3600,
    )
    timeout: float = Field(
        45.0,
        title="请求超时 / Request timeout",
        description="Seconds a request may stall before the link counts as down (a short "
        "satellite fade should not abort a chunk).",
        ge=1,
        le=600,
    )

    status: ProbeConfig | None = Field(
        None,
        title="终端状态探测 / Terminal status probe",
        description="How to ask the satellite terminal whether it is in the network; "
        "empty: trust TCP alone.",
    )

    dial: PppDial | None = Field(
        None,
        title="拨号上网 / Dial-up",
        description="Bring the path up with pppd first (Tiantong data over the serial port); "
        "empty: the path is always there (Ethernet, Wi-Fi, a router terminal).",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class Throughput:
    """The link's achieved rate: bytes over the time at least one request was in flight.

    Per-request figures would show each of N concurrent streams a 1/N share of the link.
    """

    WINDOW_S = 2.0

    def __init__(self) -> None:
        self.active = 0
        self.busy_since = 0.0
        self.busy = 0.0
        self.bytes = 0

    def begin(self, now: float) -> None:
        if self.active == 0:
            self.busy_since = now
        self.active += 1

    def end(self, now: float, nbytes: int) -> float | None:
        """Account one finished request; returns a rate sample once a window is full."""
        self.active -= 1
        self.bytes += nbytes
        busy = self.busy + (now - self.busy_since)
        if self.active == 0:
            self.busy, self.busy_since = busy, now
        if busy < self.WINDOW_S:
            return None
        sample = self.bytes / busy
        self.bytes, self.busy, self.busy_since = 0, 0.0, now
        return sample if sample > 0 else None


class IpLink(Link):
    """HTTP to the centre: POST /v1/items for batches, tus (/v1/media) for media."""

    kind = "ip"
    narrow = False

    def __init__(self, config: Config) -> None:
        super().__init__(config.params(mtu=config.batch_bytes))
        self.config = config
        # Probing an IP path costs one small request: come back quickly after a fade.
        self.reconnect_delay = 0.5
        self.max_reconnect_delay = 5.0
        self.kit_id = 0  # set by the uplink before run()
        self.auth: RequestSigner | None = None  # signs requests (set by the uplink when keyed)
        self._tls: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._failed = asyncio.Event()
        self._failure = ""
        self.on_acks: Any = None  # Callable[[list[tuple[int, int]]], None]
        self.on_orders: Callable[[list[Order]], None] | None = None
        self._meter = Throughput()
        self.monitor: TerminalMonitor | None = None
        if config.status is not None:
            self.monitor = TerminalMonitor.from_config(config.status, name=config.name)
            self.monitor.on_change = self._terminal_changed
        self.ppp: PppSession | None = None
        if config.dial is not None:
            self.ppp = PppSession(
                config.dial.peer, pppd=config.dial.pppd, on_state=self._ppp_changed
            )

    @property
    def terminal(self) -> TerminalStatus | None:
        """The terminal's last status (SNR, rates) when a probe is configured."""
        return None if self.monitor is None else self.monitor.status

    def device_state(self) -> DeviceState | None:
        if self.monitor is not None:
            return self.monitor.state()
        if self.ppp is not None:
            return _ppp_state(self.name, self.ppp)
        return None

    async def run(self) -> None:
        # The terminal is watched, and pppd kept, for the link's whole life.
        async with contextlib.AsyncExitStack() as stack:
            if self.monitor is not None:
                await self.monitor.start()
                stack.push_async_callback(self.monitor.close)
            if self.ppp is not None:
                stack.push_async_callback(self.ppp.close)
            await super().run()

    def _ppp_changed(self, up: bool) -> None:
        if not up:
            self._fail("PPP connection down")

    def _terminal_changed(self, online: bool) -> None:
        if not online:
            self._fail("satellite terminal out of network")

    # -- life cycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        import aiohttp

        self._failed.clear()
        connector = None
        if self.ppp is not None:
            # pppd redials by itself (persist); it is started again only if it ended.
            await self.ppp.start()
            assert self.config.dial is not None
            if not await self.ppp.wait_up(self.config.dial.up_timeout_s):
                zh, en = self.ppp.exit_reason or ("拨号未成功", "no PPP address yet")
                raise LinkDown(f"{self.name} 拨号失败：{zh}", f"{self.name}: dial-up failed: {en}")
            # Requests leave from the PPP address, whatever the default route is.
            connector = aiohttp.TCPConnector(local_addr=(self.ppp.local_ip or "0.0.0.0", 0))
        if self.auth is not None and self.config.url.startswith("https://"):
            # Mutual TLS with the identities derived from the kit's enrolled keys.
            self._tls = tlsid.kit_context(self.auth.kit)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.config.timeout, sock_read=self.config.timeout
            ),
            headers={"Kit-Id": str(self.kit_id), "Kit-Link": self.name},
        )
        if self.monitor is not None:
            # Offline while the terminal is out of the network, even if TCP would connect.
            await self.monitor.wait_online()
        await self._probe()

    async def receive_loop(self) -> None:
        # Acks arrive in answers; while idle, a probe keeps `online` honest and fetches acks.
        while True:
            try:
                await asyncio.wait_for(self._failed.wait(), self.config.probe_interval)
                raise LinkDown(f"{self.name} 请求失败：{self._failure}", self._failure)
            except TimeoutError:
                await self._probe()

    async def disconnect(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _fail(self, reason: str) -> LinkDown:
        self._failure = reason
        self._failed.set()
        return LinkDown(f"{self.name} 请求失败：{reason}", f"{self.name}: {reason}")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        import aiohttp

        if self._session is None or (not self.online and path != "/v1/acks"):
            raise LinkDown(f"链路 {self.name} 不在线", f"link {self.name} is offline")
        url = path if path.startswith("http") else self.config.url + path
        sent = len(data or b"")
        n = None
        if self.auth is not None:
            headers = {**(headers or {}), "Kit-Link": self.name}
            n, headers[ipauth.HEADER] = self.auth.sign(
                method, URL(url).raw_path_qs, headers, data or b""
            )
        t0 = time.monotonic()
        self._meter.begin(t0)
        try:
            tls: dict[str, Any] = {}
            if self._tls is not None:
                tls = {"ssl": self._tls, "server_hostname": tlsid.server_name(self.kit_id)}
            async with self._session.request(
                method, url, data=data, headers=headers, **tls
            ) as resp:
                body = await resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._meter.end(time.monotonic(), 0)
            raise self._fail(f"{type(exc).__name__}: {exc}") from None
        if self.auth is not None and n is not None and (200 <= status < 300 or status == 409):
            try:
                self.auth.check_answer(n, status, hdrs, body)
            except Refusal as err:
                self._meter.end(time.monotonic(), 0)
                self.stats.errors += 1
                self.auth.refused_answer(err, self.name)
                raise self._fail(f"answer not from the centre: {err.en}") from None
        now = time.monotonic()
        sample = self._meter.end(now, sent)
        if sample is not None:
            self.rate.update(sample)
        if sent < 2048:
            self.rtt.update(now - t0)
        if status >= 500:
            raise self._fail(f"HTTP {status}")
        self.record_success()
        return status, hdrs, body

    async def _probe(self) -> None:
        status, _, body = await self._request("GET", "/v1/acks")
        if status != 200:
            raise self._fail(f"probe answered HTTP {status}")
        self._deliver_acks(body)

    def _deliver_acks(self, body: bytes) -> None:
        """Acknowledgements to ``on_acks``, orders to ``on_orders`` (each checked as on a
        narrow link: a malformed one is dropped, the rest still count)."""
        try:
            answer = cbor2.loads(body)
            ranges = [(int(lo), int(hi)) for lo, hi in answer.get("acks", [])]
            raw_orders = list(answer.get("orders", []))
        except Exception:
            self.stats.errors += 1
            return
        if self.on_acks is not None and ranges:
            self.on_acks(ranges)
        orders = []
        for raw in raw_orders:
            try:
                order_id, target, text = raw
                orders.append(Order(order_id, target, text))
            except (TypeError, ValueError):  # BadFrame is a ValueError
                self.stats.errors += 1
        if self.on_orders is not None and orders:
            self.on_orders(orders)

    # -- items ------------------------------------------------------------------------------

    async def post_items(self, entries: list[tuple[int, Any]]) -> None:
        """POST a batch of ``[seq, item_wire_map]``; acknowledgements go to ``on_acks``."""
        body = cbor2.dumps([[seq, wire] for seq, wire in entries])
        if self.over_budget(len(body)):
            raise LinkRefused(f"{self.name} 超出费用上限", f"{self.name}: over budget")
        status, _, answer = await self._request(
            "POST", "/v1/items", data=body, headers={"Content-Type": "application/cbor"}
        )
        self.record_send(len(body))
        if status != 200:
            raise LinkRefused(
                f"指挥中心拒收：HTTP {status} {answer[:200]!r}",
                f"centre refused the batch: HTTP {status} {answer[:200]!r}",
            )
        self._deliver_acks(answer)

    # -- tus --------------------------------------------------------------------------------

    @staticmethod
    def _metadata(meta: dict[str, str]) -> str:
        return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())

    async def tus_create(self, length: int, meta: dict[str, str], *, partial: bool = False) -> str:
        headers = {"Tus-Resumable": TUS_VERSION, "Upload-Length": str(length)}
        if meta:
            headers["Upload-Metadata"] = self._metadata(meta)
        if partial:
            headers["Upload-Concat"] = "partial"
        status, hdrs, body = await self._request("POST", "/v1/media", headers=headers)
        if status != 201 or "Location" not in hdrs:
            raise LinkRefused(
                f"创建上传失败：HTTP {status}",
                f"upload creation failed: HTTP {status} {body[:200]!r}",
            )
        return hdrs["Location"]

    async def tus_final(self, part_urls: list[str], meta: dict[str, str]) -> str:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Concat": "final;" + " ".join(part_urls),
            "Upload-Metadata": self._metadata(meta),
        }
        status, hdrs, body = await self._request("POST", "/v1/media", headers=headers)
        if status != 201:
            raise LinkRefused(
                f"合并上传失败：HTTP {status}", f"final upload failed: HTTP {status} {body[:200]!r}"
            )
        return hdrs.get("Location", "")

    async def tus_offset(self, url: str) -> int | None:
        """The server's offset for ``url``, or None if it no longer knows the upload."""
        status, hdrs, _ = await self._request("HEAD", url, headers={"Tus-Resumable": TUS_VERSION})
        if status in (404, 410):
            return None
        if status != 200 or "Upload-Offset" not in hdrs:
            raise LinkRefused(f"查询进度失败：HTTP {status}", f"HEAD failed: HTTP {status}")
        return int(hdrs["Upload-Offset"])

    async def tus_patch(self, url: str, offset: int, chunk: bytes) -> int:
        """Send one chunk with its checksum; returns the new offset."""
        digest = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Upload-Checksum": f"sha1 {digest}",
        }
        status, hdrs, body = await self._request("PATCH", url, data=chunk, headers=headers)
        self.record_send(len(chunk))
        if status == 409:  # our offset was stale (another link or a lost answer): re-read it
            return await self.tus_offset(url) or 0
        if status != 204:
            raise LinkRefused(
                f"上传分块失败：HTTP {status}", f"chunk upload failed: HTTP {status} {body[:200]!r}"
            )
        return int(hdrs["Upload-Offset"])


def _ppp_state(name: str, ppp: PppSession) -> DeviceState:
    detail: dict[str, str | int | float | bool | None] = {
        "interface": ppp.interface,
        "local_ip": ppp.local_ip,
        "exit_code": ppp.returncode,
    }
    if ppp.up:
        zh = en = f"PPP {ppp.interface or ''} {ppp.local_ip or ''}".strip()
        return DeviceState(f"{name}-ppp", "ppp", True, f"已拨通 {zh}", f"up: {en}", detail)
    zh, en = ppp.exit_reason or (("正在拨号", "dialling") if ppp.running else ("未拨号", "idle"))
    return DeviceState(f"{name}-ppp", "ppp", False, zh, en, detail)


def make(config: Config) -> IpLink:
    return IpLink(config)
