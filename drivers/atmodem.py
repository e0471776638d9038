"""A 3GPP 27.007 AT command channel on a serial port: one command at a time, URCs any time.

Responses are lines framed by CR/LF (verbose result codes, ``ATV1``). A command's reply
is its intermediate lines and one final result code; unsolicited result codes (URCs)
may arrive at any moment, even between the lines of a reply, and go to ``on_urc``.

What is kept and what is dropped, so that line noise costs a count and not a command:

- a line that is not printable ASCII (every line is, with echo off and, in text mode,
  ``AT+CSCS="UCS2"``) is garbage; a line longer than ``max_line`` bytes is an overflow;
- a command collects only lines starting with its ``expect`` prefix (``None``: every
  line that is not a URC), plus with ``follow`` the one line after each of those (the
  PDU after ``+CMGR:``); the echo of the command itself is ignored;
- a final result code with no command waiting is a stray (the late answer to a command
  that timed out); after a timeout, a restart or a reopen the next command first waits
  for the line to be quiet for ``settle_s``, so a late answer is not taken for its own.

A line in ``boot_lines`` (``RDY`` by default: assumed, as common modules print it on
power-up) means the modem restarted: the command in progress fails with
:class:`ModemRestarted` and ``on_boot`` runs so the owner can set the modem up again.
After ``CONNECT`` the channel is in data mode until ``NO CARRIER`` or :meth:`AtChannel.escape`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from drivers.serialio import DEFAULT_BACKOFF, Backoff, PortOffline, SerialPort
from edge.errors import KitError

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"
DEFAULT_URCS = ("+CMTI:", "+CREG:", "+CGREG:", "RING", "+CLIP:", "+CPIN:", "+CMT:", "+CDS:")
DEFAULT_BOOT_LINES = ("RDY",)
_ERRORS = ("ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
_CME = {
    3: ("不允许的操作", "operation not allowed"),
    4: ("不支持的操作", "operation not supported"),
    10: ("未插入 SIM 卡", "SIM not inserted"),
    11: ("SIM 卡需要 PIN 码", "SIM PIN required"),
    13: ("SIM 卡故障", "SIM failure"),
    14: ("SIM 卡忙", "SIM busy"),
    30: ("无网络服务", "no network service"),
    100: ("未知错误", "unknown error"),
}
_CMS = {
    300: ("终端故障", "ME failure"),
    302: ("不允许的操作", "operation not allowed"),
    304: ("PDU 模式参数无效", "invalid PDU mode parameter"),
    305: ("文本模式参数无效", "invalid text mode parameter"),
    310: ("未插入 SIM 卡", "SIM not inserted"),
    311: ("SIM 卡需要 PIN 码", "SIM PIN required"),
    321: ("存储位置无效", "invalid memory index"),
    322: ("短信存储已满", "memory full"),
    330: ("短信中心地址未知", "SMSC address unknown"),
    331: ("无网络服务", "no network service"),
    332: ("网络超时", "network timeout"),
    500: ("未知错误", "unknown error"),
}
_PLAIN = {
    "ERROR": ("出错", "ERROR"),
    "NO CARRIER": ("无载波（NO CARRIER）", "NO CARRIER"),
    "BUSY": ("忙（BUSY）", "BUSY"),
    "NO ANSWER": ("无应答（NO ANSWER）", "NO ANSWER"),
    "NO DIALTONE": ("无拨号音（NO DIALTONE）", "NO DIALTONE"),
}


class AtError(KitError, RuntimeError):
    """The modem answered a command with an error result code."""

    def __init__(self, command: str, final: str) -> None:
        self.command = command
        self.final = final
        self.code: int | None = None
        zh, en = _PLAIN.get(final, (final, final))
        for prefix, table in (("+CME ERROR:", _CME), ("+CMS ERROR:", _CMS)):
            if final.startswith(prefix):
                text = final[len(prefix) :].strip()
                self.code = int(text) if text.isdigit() else None
                known = table.get(self.code) if self.code is not None else None
                zh, en = known if known else (final, final)
                zh, en = f"{zh}（{final}）", f"{en} ({final})"
        super().__init__(f"调制解调器拒绝 {command}：{zh}", f"the modem refused {command}: {en}")


class AtTimeout(KitError, TimeoutError):
    """The modem did not finish answering a command in time."""


class ChannelDown(KitError, ConnectionError):
    """The serial device is not there, or went away during the command."""


class ModemRestarted(ChannelDown):
    """The modem announced a restart while a command was in progress."""


class InDataMode(KitError, RuntimeError):
    """The line carries a data call: no AT command until it ends or is escaped."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: the intermediate lines, then ``OK`` or ``CONNECT …``."""

    lines: tuple[str, ...]
    final: str


def is_final(line: str) -> bool:
    return line in ("OK", "CONNECT", *_ERRORS) or line.startswith(
        ("CONNECT ", "+CME ERROR:", "+CMS ERROR:")
    )


def fields(text: str) -> list[str]:
    """Comma-separated values with double quotes removed (quoted commas stay inside)."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    out.append("".join(current).strip())
    return out


@dataclass(slots=True)
class _Command:
    text: str
    expect: str | None
    follow: bool
    done: asyncio.Future[str]
    prompt: asyncio.Future[None] | None
    lines: list[str] = field(default_factory=list)
    after_prefixed: bool = False

    def takes(self, line: str, urc: bool) -> bool:
        if self.expect and line.startswith(self.expect):
            self.after_prefixed = True
            return True
        if urc:  # a URC between a prefixed line and its data line leaves the pair whole
            return False
        taken = self.expect is None or (self.follow and self.after_prefixed)
        self.after_prefixed = False
        return taken

    def retire(self) -> None:
        """Settle both waiters, so no failure is left unretrieved (asyncio would log it)."""
        for waiter in (self.done, self.prompt):
            if waiter is None:
                continue
            if waiter.done() and not waiter.cancelled():
                waiter.exception()
            else:
                waiter.cancel()

    def fail(self, exc: Exception) -> None:
        for waiter in (self.done, self.prompt):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)


class AtChannel:
    """AT commands over one serial device, reopened whenever it goes away.

    ``on_urc(line)`` gets each unsolicited line (and ``NO CARRIER`` ending a data call),
    ``on_boot()`` each restart, ``on_state(up)`` each open and loss of the device.
    :attr:`dropped` counts discarded lines by reason.
    """

    def __init__(
        self,
        path: str,
        *,
        on_urc: Callable[[str], None] | None = None,
        on_boot: Callable[[], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        urcs: Sequence[str] = DEFAULT_URCS,
        boot_lines: Sequence[str] = DEFAULT_BOOT_LINES,
        baudrate: int = 115200,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_line: int = 2048,
        settle_s: float = 0.2,
    ) -> None:
        self.on_urc = on_urc
        self.on_boot = on_boot
        self.on_state = on_state
        self.urcs = tuple(urcs)
        self.boot_lines = frozenset(boot_lines)
        self.max_line = max_line
        self.settle_s = settle_s
        self.dropped: Counter[str] = Counter()
        self.data_mode = False
        self.data_bytes = 0  # received during data calls
        self.port = SerialPort(
            path, self._on_data, on_state=self._on_port, baudrate=baudrate, backoff=backoff
        )
        self._buffer = b""
        self._current: _Command | None = None
        self._escape: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._unsure_at: float | None = None  # when an answer to nothing may have begun
        self._last_rx = 0.0

    @property
    def online(self) -> bool:
        return self.port.online

    async def start(self) -> None:
        await self.port.start()

    async def close(self) -> None:
        await self.port.close()

    # --- commands ----------------------------------------------------------------------

    async def command(
        self,
        text: str,
        *,
        expect: str | None = "",
        follow: bool = False,
        timeout: float = 5.0,
        body: str | None = None,
        prompt_timeout: float = 5.0,
    ) -> Reply:
        """Send ``text`` and return its reply; ``body`` goes after the ``> `` prompt, then Ctrl-Z.

        ``expect`` is the prefix of the lines to collect (``""``: none, ``None``: all but
        URCs). Raises :class:`AtError`, :class:`AtTimeout`, :class:`ChannelDown`,
        :class:`ModemRestarted` or :class:`InDataMode`.
        """
        async with self._lock:
            if self.data_mode:
                raise InDataMode(
                    f"数据通话中，不能发送 {text}", f"in a data call: cannot send {text}"
                )
            await self._settle(timeout)
            loop = asyncio.get_running_loop()
            prompt = loop.create_future() if body is not None else None
            cmd = self._current = _Command(text, expect, follow, loop.create_future(), prompt)
            try:
                await self._write(text.encode() + b"\r", text)
                if prompt is not None:
                    await self._await_prompt(cmd, prompt, prompt_timeout)
                    assert body is not None
                    await self._write(body.encode() + CTRL_Z, text)
                try:
                    final = await asyncio.wait_for(asyncio.shield(cmd.done), timeout)
                except TimeoutError:
                    self._doubt()
                    raise AtTimeout(
                        f"调制解调器 {timeout:g} 秒内未完成 {text}",
                        f"the modem did not finish {text} within {timeout:g} s",
                    ) from None
            finally:
                self._current = None
                cmd.retire()
        if final not in ("OK", "CONNECT") and not final.startswith("CONNECT "):
            raise AtError(text, final)
        if final.startswith("CONNECT"):
            self.data_mode = True
        return Reply(tuple(cmd.lines), final)

    async def escape(self, guard_s: float = 1.0, timeout: float = 3.0) -> None:
        """Leave data mode with ``+++`` between guard times; the call stays up until ``ATH``."""
        async with self._lock:
            if not self.data_mode:
                return
            waiter = self._escape = asyncio.get_running_loop().create_future()
            try:
                await asyncio.sleep(guard_s)
                await self._write(b"+++", "+++")
                await asyncio.wait_for(waiter, guard_s + timeout)
            except TimeoutError:
                raise AtTimeout(
                    "调制解调器未响应 +++，仍在数据模式",
                    "the modem did not answer +++: still in data mode",
                ) from None
            finally:
                self._escape = None
            self.data_mode = False

    async def _write(self, data: bytes, what: str) -> None:
        try:
            await self.port.write(data)
        except PortOffline as exc:
            raise self._down(what) from exc

    async def _await_prompt(
        self, cmd: _Command, prompt: asyncio.Future[None], timeout: float
    ) -> None:
        waiters: set[asyncio.Future[None] | asyncio.Future[str]] = {prompt, cmd.done}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        if prompt in done:
            prompt.result()
            return
        if cmd.done.done():  # an error instead of the prompt
            final = cmd.done.result()
            raise AtError(cmd.text, final)
        with contextlib.suppress(ChannelDown):
            await self._write(ESC, cmd.text)  # abandon the message the modem may be waiting for
        self._doubt()
        raise AtTimeout(
            f"调制解调器 {timeout:g} 秒内未给出 > 提示符（{cmd.text}）",
            f"no > prompt from the modem within {timeout:g} s ({cmd.text})",
        )

    async def _settle(self, limit: float) -> None:
        """After a timeout, wait until nothing has arrived for ``settle_s`` (at most ``limit``)."""
        if self._unsure_at is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while loop.time() < deadline:
            quiet = loop.time() - max(self._last_rx, self._unsure_at)
            if quiet >= self.settle_s:
                break
            await asyncio.sleep(self.settle_s - quiet)
        self._unsure_at = None

    def _doubt(self) -> None:
        """From now on, until the line is quiet, what arrives may answer an older command."""
        self._unsure_at = asyncio.get_running_loop().time()

    def _down(self, what: str) -> ChannelDown:
        path = self.port.path
        return ChannelDown(
            f"串口设备不在线（{path}），{what} 未完成",
            f"serial device offline ({path}): {what} not done",
        )

    # --- input -------------------------------------------------------------------------

    def _on_port(self, up: bool) -> None:
        self._buffer = b""
        self.data_mode = False
        self._doubt()  # what a device says as it comes or goes answers nothing of ours
        if not up:
            if self._current is not None:
                self._current.fail(self._down(self._current.text))
            if self._escape is not None and not self._escape.done():
                self._escape.set_exception(self._down("+++"))
        if self.on_state is not None:
            self.on_state(up)

    def _on_data(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        if self.data_mode:
            self.data_bytes += len(data)
        buffer = self._buffer + data
        while True:
            ends = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
            if not ends:
                break
            end = min(ends)
            self._line(buffer[:end])
            buffer = buffer[end + 1 :]
        cmd = self._current
        if buffer.startswith(b"> ") and cmd is not None and cmd.prompt and not cmd.prompt.done():
            cmd.prompt.set_result(None)
            buffer = buffer[2:]
        if len(buffer) > self.max_line:
            self.dropped["overflow"] += 1
            buffer = b""
        self._buffer = buffer

    def _line(self, raw: bytes) -> None:
        if len(raw) > self.max_line:
            self.dropped["overflow"] += 1
            return
        if not raw.strip():
            return
        if self.data_mode:
            self._data_line(raw)
            return
        if not raw.isascii() or not raw.decode().isprintable():
            self.dropped["garbage"] += 1
            return
        line = raw.decode().strip()
        cmd = self._current
        if line in self.boot_lines:
            self._booted(cmd)
        elif cmd is not None and line == cmd.text:
            pass  # echo (before ATE0, or after the modem restarted)
        elif cmd is not None and is_final(line):
            if not cmd.done.done():
                cmd.done.set_result(line)
        elif cmd is not None and cmd.takes(line, line.startswith(self.urcs)):
            cmd.lines.append(line)
        elif line.startswith(self.urcs):
            self._urc(line)
        else:
            self.dropped["stray_final" if is_final(line) else "unexpected"] += 1

    def _data_line(self, raw: bytes) -> None:
        """In a data call only the modem's own words matter: the escape's OK, or the call's end."""
        if raw.strip() == b"NO CARRIER":
            self.data_mode = False
            self._urc("NO CARRIER")
        elif raw.strip() == b"OK" and self._escape is not None and not self._escape.done():
            self._escape.set_result(None)

    def _booted(self, cmd: _Command | None) -> None:
        log.warning("%s: the modem restarted", self.port.path)
        self._doubt()  # it may still answer a command it read as it came up
        if cmd is not None:
            cmd.fail(
                ModemRestarted(
                    f"调制解调器在执行 {cmd.text} 时重启", f"the modem restarted during {cmd.text}"
                )
            )
        if self.on_boot is not None:
            self.on_boot()

    def _urc(self, line: str) -> None:
        if self.on_urc is None:
            self.dropped["urc_unhandled"] += 1
            return
        try:
            self.on_urc(line)
        except Exception:  # a handler's bug must not cost the next line
            log.exception("URC handler failed on %r", line)
