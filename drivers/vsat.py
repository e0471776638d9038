"""VSAT / IP satellite terminal status: pluggable probes (iDirect telnet, HTTP) and a monitor.

The host sees the terminal as an Ethernet router; whether the satellite path is up comes
from its management interface. A :class:`StatusProbe` asks once; :class:`TerminalMonitor`
asks every ``interval_s`` (15 s: each probe wakes the terminal's management CPU and the
kit runs on battery) and calls the terminal down only after ``down_after`` bad answers in
a row, so one lost telnet session does not take a working link offline.

iDirect console formats are NOT confirmed by any source at hand; the telnet probe
assumes the following and its patterns are settings, so a real remote's wording can be
matched without code changes:

- Login: a prompt ending ``Username:`` or ``login:``, then ``Password:``; the console
  prompt is a line ending ``>`` or ``#``. Commands end with CR LF.
- ``rx snr`` answers ``Rx SNR: 9.4`` (a number after ``SNR``, ``dB`` optional).
- ``rmtstat`` answers lines such as ``Remote State: IN NETWORK`` (or ``ACQUIRING``,
  ``OFFLINE``) and, if the remote knows them, ``Rx Rate: 4096 kbps`` and
  ``Tx Rate: 1024 kbps`` (``bps``, ``kbps`` or ``Mbps``).
- Telnet option negotiation is refused (WONT/DONT to every DO/WILL): the console works
  in the default NVT mode; subnegotiations are skipped.

The HTTP probe reads a status page: JSON with dotted key paths (``modem.snr``) or, for
HTML, regular expressions whose first group is the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.device import Lifecycle
from edge.errors import KitError
from edge.topics import DeviceState

log = logging.getLogger(__name__)

MAX_REPLY = 64 * 1024  # a console answer longer than this is not a status
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240


class BadReply(KitError, ValueError):
    """The terminal answered, but not in a form the probe can read."""


class ProbeFailed(KitError, ConnectionError):
    """The terminal's management interface could not be reached or did not answer."""


@dataclass(frozen=True, slots=True)
class TerminalStatus:
    """The satellite path as the terminal reports it."""

    online: bool  # in the network: traffic can pass
    snr_db: float | None = None
    rx_bps: float | None = None
    tx_bps: float | None = None
    reason: str = ""  # short, when down: "ACQUIRING", "no answer" …


class StatusProbe(Protocol):
    async def probe(self) -> TerminalStatus: ...


# --- reading answers ---------------------------------------------------------------------------

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def _number(pattern: re.Pattern[str], text: str, what: str) -> float | None:
    match = pattern.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1))
    except (ValueError, IndexError, TypeError):
        raise BadReply(f"{what}不是数字：{match.group(0)!r}", f"{what} is not a number") from None
    unit = match.group(2).lower() if match.re.groups >= 2 and match.group(2) else ""
    return value * _UNITS.get(unit[:1], 1.0)


def parse_snr(text: str, pattern: str) -> float:
    """The SNR in dB from the answer to ``rx snr``; :class:`BadReply` if there is none."""
    snr = _number(re.compile(pattern), text, "信噪比 / SNR ")
    if snr is None or not -30.0 <= snr <= 60.0:
        raise BadReply(
            f"无法读出信噪比：{text[:80]!r}", f"no SNR in the terminal's answer: {text[:80]!r}"
        )
    return snr


@dataclass(frozen=True, slots=True)
class RmtStat:
    online: bool
    state: str
    rx_bps: float | None
    tx_bps: float | None


def parse_rmtstat(
    text: str, state_pattern: str, online_states: tuple[str, ...], rate_pattern: str
) -> RmtStat:
    """The remote's state (and rates if given) from the answer to ``rmtstat``."""
    match = re.search(state_pattern, text)
    if match is None:
        raise BadReply(
            f"无法读出终端状态：{text[:80]!r}", f"no remote state in the answer: {text[:80]!r}"
        )
    try:
        state = " ".join(match.group(1).split()).upper()
    except (IndexError, AttributeError):
        raise BadReply("状态格式没有取值分组", "the state pattern has no group") from None
    online = state in {s.upper() for s in online_states}
    rates: dict[str, float] = {}
    for found in re.finditer(rate_pattern, text):
        try:
            rates[found.group(1).lower()] = float(found.group(2)) * _UNITS[found.group(3).lower()]
        except (ValueError, KeyError, IndexError, AttributeError, TypeError):
            raise BadReply(
                f"速率无法读出：{found.group(0)!r}", f"unreadable rate {found.group(0)!r}"
            ) from None
    return RmtStat(online, state, rates.get("rx"), rates.get("tx"))


# --- telnet ------------------------------------------------------------------------------------


class TelnetFilter:
    """Takes telnet's commands out of the byte stream, and answers every option with no."""

    def __init__(self) -> None:
        self._state = "data"  # data, iac, option, sb, sb_iac
        self._verb = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(the data, the refusals to send back)."""
        out, reply = bytearray(), bytearray()
        for byte in data:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    out.append(byte)
            elif state == "iac":
                if byte == IAC:
                    out.append(IAC)
                    self._state = "data"
                elif byte in (DO, DONT, WILL, WONT):
                    self._verb, self._state = byte, "option"
                else:
                    self._state = "sb" if byte == SB else "data"
            elif state == "option":
                if self._verb == DO:
                    reply += bytes((IAC, WONT, byte))
                elif self._verb == WILL:
                    reply += bytes((IAC, DONT, byte))
                self._state = "data"
            elif state == "sb":
                self._state = "sb_iac" if byte == IAC else "sb"
            else:  # sb_iac
                self._state = "data" if byte == SE else "sb"
        return bytes(out), bytes(reply)


class _Console:
    """One telnet session: send a line, read until a pattern, within a deadline."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> None:
        self.reader, self.writer, self.deadline = reader, writer, deadline
        self._filter = TelnetFilter()
        self._text = ""

    async def expect(self, pattern: re.Pattern[str], what: tuple[str, str]) -> str:
        """Everything up to and including the match; the rest stays for the next call."""
        loop = asyncio.get_running_loop()
        while (match := pattern.search(self._text)) is None:
            if len(self._text) > MAX_REPLY:
                raise BadReply(f"终端回答过长（等待{what[0]}）", f"answer too long ({what[1]})")
            left = self.deadline - loop.time()
            try:
                chunk = await asyncio.wait_for(self.reader.read(4096), max(left, 0.0))
            except TimeoutError:
                raise ProbeFailed(
                    f"终端无应答（等待{what[0]}）", f"no answer ({what[1]})"
                ) from None
            if not chunk:
                raise ProbeFailed(
                    f"终端关闭了连接（等待{what[0]}）", f"terminal closed the session ({what[1]})"
                )
            data, refusals = self._filter.feed(chunk)
            if refusals:
                self.writer.write(refusals)
            self._text += data.decode("latin-1")
        text, self._text = self._text[: match.end()], self._text[match.end() :]
        return text

    async def send(self, line: str) -> None:
        self.writer.write(line.encode("latin-1").replace(b"\xff", b"\xff\xff") + b"\r\n")
        await self.writer.drain()


class IDirectTelnetProbe:
    """Logs in to an iDirect remote's console and asks ``rx snr`` and ``rmtstat``."""

    def __init__(self, config: TelnetProbeConfig) -> None:
        self.config = config
        self._login = re.compile(config.login_prompt)
        self._password = re.compile(config.password_prompt)
        self._prompt = re.compile(config.prompt)

    async def probe(self) -> TerminalStatus:
        c = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.timeout_s
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(c.host, c.port, limit=MAX_REPLY), c.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise ProbeFailed(
                f"无法连接终端 {c.host}:{c.port}（{type(exc).__name__}）",
                f"cannot reach the terminal at {c.host}:{c.port} ({type(exc).__name__})",
            ) from None
        try:
            console = _Console(reader, writer, deadline)
            await console.expect(self._login, ("登录提示", "login prompt"))
            await console.send(c.username)
            await console.expect(self._password, ("密码提示", "password prompt"))
            await console.send(c.password)
            await console.expect(
                self._prompt, ("命令提示符（密码错误？）", "prompt (wrong password?)")
            )
            await console.send("rx snr")
            snr_text = await console.expect(self._prompt, ("rx snr 的回答", "rx snr answer"))
            await console.send("rmtstat")
            stat_text = await console.expect(self._prompt, ("rmtstat 的回答", "rmtstat answer"))
            with contextlib.suppress(OSError):
                await console.send("exit")
        except ProbeFailed:  # already says what failed (it is an OSError too)
            raise
        except OSError as exc:
            raise ProbeFailed(
                f"与终端的会话中断：{exc}", f"session with the terminal broke: {exc}"
            ) from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        state = parse_rmtstat(stat_text, c.state_pattern, tuple(c.online_states), c.rate_pattern)
        snr = parse_snr(snr_text, c.snr_pattern) if state.online else _maybe_snr(snr_text, c)
        return TerminalStatus(
            state.online, snr, state.rx_bps, state.tx_bps, "" if state.online else state.state
        )


def _maybe_snr(text: str, c: TelnetProbeConfig) -> float | None:
    """A remote out of the network may have no SNR to give: that is not a bad answer."""
    try:
        return parse_snr(text, c.snr_pattern)
    except BadReply:
        return None


# --- HTTP --------------------------------------------------------------------------------------


def lookup(document: Any, path: str) -> Any:
    """The value at a dotted path (``a.b.0.c``) in parsed JSON; :class:`BadReply` if absent."""
    value = document
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise BadReply(f"状态页缺少 {path}", f"status page has no {path}")
    return value


class HttpStatusProbe:
    """GETs the terminal's status page and reads it by JSON paths or by regular expressions."""

    def __init__(self, config: HttpProbeConfig) -> None:
        self.config = config

    async def probe(self) -> TerminalStatus:
        import aiohttp

        c = self.config
        try:
            timeout = aiohttp.ClientTimeout(total=c.timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(c.url) as resp,
            ):
                body = await resp.content.read(MAX_REPLY + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProbeFailed(
                f"无法读取终端状态页 {c.url}（{type(exc).__name__}）",
                f"cannot read the terminal's status page {c.url} ({type(exc).__name__})",
            ) from None
        if status != 200:
            raise ProbeFailed(
                f"终端状态页返回 HTTP {status}", f"status page answered HTTP {status}"
            )
        if len(body) > MAX_REPLY:
            raise BadReply("终端状态页过大", "status page too large")
        text = body.decode("utf-8", "replace")
        return self.read_json(text) if c.format == "json" else self.read_html(text)

    def read_json(self, text: str) -> TerminalStatus:
        c = self.config
        try:
            document = json.loads(text)
        except ValueError:
            raise BadReply("终端状态页不是 JSON", "status page is not JSON") from None
        state = str(lookup(document, c.state_key))
        online = state.upper() in {s.upper() for s in c.online_states}
        return TerminalStatus(
            online,
            _json_number(document, c.snr_key),
            _json_number(document, c.rx_key),
            _json_number(document, c.tx_key),
            "" if online else state,
        )

    def read_html(self, text: str) -> TerminalStatus:
        c = self.config
        match = re.search(c.state_key, text)
        if match is None or not match.groups():
            raise BadReply("状态页中找不到终端状态", "no terminal state on the status page")
        state = " ".join(match.group(1).split())
        online = state.upper() in {s.upper() for s in c.online_states}
        snr = None
        if c.snr_key:
            snr = _number(re.compile(c.snr_key), text, "信噪比 / SNR ")
        return TerminalStatus(online, snr, None, None, "" if online else state)


def _json_number(document: Any, path: str) -> float | None:
    if not path:
        return None
    value = lookup(document, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadReply(f"状态页的 {path} 不是数字", f"status page's {path} is not a number")
    try:
        return float(value)
    except ValueError:
        raise BadReply(
            f"状态页的 {path} 不是数字", f"status page's {path} is not a number"
        ) from None


# --- configuration -----------------------------------------------------------------------------


class ProbeConfigBase(BaseModel):
    """What every probe has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(
        15.0,
        title="探测间隔 / Probe interval",
        description="Seconds between status probes; longer saves battery.",
        ge=1,
        le=3600,
    )
    timeout_s: float = Field(
        10.0,
        title="探测超时 / Probe timeout",
        description="Seconds one probe may take, login included.",
        ge=0.1,
        le=120,
    )
    down_after: int = Field(
        2,
        title="判定断开次数 / Down after",
        description="Bad probes in a row before the terminal counts as down.",
        ge=1,
        le=10,
    )
    online_states: list[str] = Field(
        ["IN NETWORK", "IN_NETWORK", "INNETWORK", "ONLINE", "UP"],
        title="在网状态值 / Online states",
        description="State words (case-insensitive) meaning the terminal is in the network.",
        min_length=1,
        max_length=20,
    )


class TelnetProbeConfig(ProbeConfigBase):
    kind: Literal["idirect-telnet"] = Field(
        title="类型 / Kind", description="An iDirect remote's telnet console."
    )
    host: str = Field(
        title="终端地址 / Terminal address",
        description="Management address of the remote, e.g. 192.168.0.1.",
        min_length=1,
        max_length=253,
    )
    port: int = Field(23, title="端口 / Port", description="Telnet port.", ge=1, le=65535)
    username: str = Field(
        title="用户名 / Username", description="Console user.", min_length=1, max_length=64
    )
    password: str = Field(
        title="密码 / Password", description="Console password.", max_length=128, repr=False
    )
    login_prompt: str = Field(
        r"(?i)(?:username|login)\s*:\s*$",
        title="登录提示 / Login prompt",
        description="Regular expression for the user-name prompt.",
        min_length=1,
        max_length=200,
    )
    password_prompt: str = Field(
        r"(?i)password\s*:\s*$",
        title="密码提示 / Password prompt",
        description="Regular expression for the password prompt.",
        min_length=1,
        max_length=200,
    )
    prompt: str = Field(
        r"[>#]\s*$",
        title="命令提示符 / Console prompt",
        description="Regular expression for the prompt that ends each answer.",
        min_length=1,
        max_length=200,
    )
    snr_pattern: str = Field(
        r"(?i)snr\s*[:=]?\s*(-?\d+(?:\.\d+)?)\s*(?:db)?",
        title="信噪比格式 / SNR pattern",
        description="Regular expression whose first group is the SNR in dB (rx snr answer).",
        min_length=1,
        max_length=200,
    )
    state_pattern: str = Field(
        r"(?im)^\s*remote\s+state\s*[:=]\s*([a-z][a-z _-]*?)\s*$",
        title="状态格式 / State pattern",
        description="Regular expression whose first group is the remote's state (rmtstat).",
        min_length=1,
        max_length=200,
    )
    rate_pattern: str = Field(
        r"(?i)\b(rx|tx)\s+rate\s*[:=]\s*(\d+(?:\.\d+)?)\s*([kmg]?)bps",
        title="速率格式 / Rate pattern",
        description="Regular expression with groups direction (rx/tx), number, unit prefix.",
        min_length=1,
        max_length=200,
    )

    @field_validator(
        "login_prompt", "password_prompt", "prompt", "snr_pattern", "state_pattern", "rate_pattern"
    )
    @classmethod
    def _regex(cls, value: str) -> str:
        return _compiles(value)


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return pattern


class HttpProbeConfig(ProbeConfigBase):
    kind: Literal["http"] = Field(title="类型 / Kind", description="A status web page or API.")
    url: str = Field(
        title="状态页地址 / Status URL",
        description="URL of the terminal's status page, e.g. http://192.168.100.1/api/status.",
        min_length=8,
        max_length=300,
        pattern=r"^https?://",
    )
    format: Literal["json", "html"] = Field(
        "json",
        title="页面格式 / Page format",
        description="json: keys are dotted paths; html: keys are regular expressions.",
    )
    state_key: str = Field(
        "state",
        title="状态字段 / State key",
        description="Dotted JSON path, or a regular expression whose first group is the state.",
        min_length=1,
        max_length=200,
    )
    snr_key: str = Field(
        "snr",
        title="信噪比字段 / SNR key",
        description="Dotted JSON path or regular expression for the SNR in dB; empty: none.",
        max_length=200,
    )
    rx_key: str = Field(
        "",
        title="下行速率字段 / Rx rate key",
        description="Dotted JSON path of the receive rate in bit/s; empty: none.",
        max_length=200,
    )
    tx_key: str = Field(
        "",
        title="上行速率字段 / Tx rate key",
        description="Dotted JSON path of the transmit rate in bit/s; empty: none.",
        max_length=200,
    )

    @model_validator(mode="after")
    def _html_patterns(self) -> Self:
        if self.format == "html":
            _compiles(self.state_key)
            _compiles(self.snr_key)
        return self


ProbeConfig = Annotated[TelnetProbeConfig | HttpProbeConfig, Field(discriminator="kind")]


def make_probe(config: TelnetProbeConfig | HttpProbeConfig) -> StatusProbe:
    if isinstance(config, TelnetProbeConfig):
        return IDirectTelnetProbe(config)
    return HttpStatusProbe(config)


# --- the monitor -------------------------------------------------------------------------------


class TerminalMonitor(Lifecycle):
    """Probes a terminal every ``interval_s`` and says whether its satellite path is up.

    Up on the first good answer; down after ``down_after`` bad ones in a row (a failed
    probe or the terminal saying it is out of the network). ``on_change(online)`` is
    called on each change.
    """

    kind = "vsat"

    def __init__(
        self,
        probe: StatusProbe,
        *,
        name: str = "vsat",
        interval_s: float = 15.0,
        down_after: int = 2,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.probe = probe
        self.name = name
        self.interval_s = interval_s
        self.down_after = down_after
        self.on_change = on_change
        self.status: TerminalStatus | None = None  # the last answer that was read
        self.failures = 0  # bad probes in a row
        self.probes = 0
        self._online = False
        self._reason = ("尚未探测", "not probed yet")
        self._checked_at: float | None = None
        self._up = asyncio.Event()
        self._probed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, config: TelnetProbeConfig | HttpProbeConfig, *, name: str = "vsat"
    ) -> TerminalMonitor:
        return cls(
            make_probe(config),
            name=name,
            interval_s=config.interval_s,
            down_after=config.down_after,
        )

    @property
    def online(self) -> bool:
        return self._online

    async def wait_online(self) -> None:
        await self._up.wait()

    async def wait_probed(self) -> None:
        """Until the first probe has answered or failed."""
        await self._probed.wait()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name} monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def state(self) -> DeviceState:
        s = self.status
        if self._online and s is not None:
            snr = "" if s.snr_db is None else f"，信噪比 {s.snr_db:g} dB"
            zh, en = (
                f"卫星终端在网{snr}",
                "satellite terminal in network"
                + ("" if s.snr_db is None else f", SNR {s.snr_db:g} dB"),
            )
        else:
            zh, en = (
                f"卫星终端不可用：{self._reason[0]}",
                f"satellite terminal down: {self._reason[1]}",
            )
        age = None if self._checked_at is None else round(time.monotonic() - self._checked_at, 1)
        return DeviceState(
            self.name,
            self.kind,
            self._online,
            zh,
            en,
            {
                "snr_db": None if s is None else s.snr_db,
                "rx_bps": None if s is None else s.rx_bps,
                "tx_bps": None if s is None else s.tx_bps,
                "reason": self._reason[1],
                "failures": self.failures,
                "probes": self.probes,
                "last_probe_age_s": age,
            },
        )

    async def check(self) -> None:
        """One probe, and what it means for ``online``."""
        self.probes += 1
        try:
            status = await self.probe.probe()
        except (ProbeFailed, BadReply) as exc:
            self._bad((exc.zh, exc.en))
        else:
            self.status = status
            if status.online:
                self.failures, self._reason = 0, ("", "")
                self._set(True)
            else:
                reason = status.reason or "out of network"
                self._bad((f"终端报告 {reason}", f"terminal reports {reason}"))
        self._checked_at = time.monotonic()
        self._probed.set()

    def _bad(self, reason: tuple[str, str]) -> None:
        self.failures += 1
        self._reason = reason
        log.info("%s probe: %s (%d in a row)", self.name, reason[1], self.failures)
        if self.failures >= self.down_after:
            self._set(False)

    def _set(self, online: bool) -> None:
        if online == self._online:
            return
        self._online = online
        if online:
            self._up.set()
        else:
            self._up.clear()
        log.warning("%s %s", self.name, "in network" if online else f"down: {self._reason[1]}")
        if self.on_change is not None:
            self.on_change(online)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the monitor must outlive a probe's bug
                log.exception("%s probe failed unexpectedly", self.name)
                self._bad(("探测程序出错", "probe error"))
            await asyncio.sleep(self.interval_s)
