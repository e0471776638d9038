"""The AT channel on a real pty, with the test playing the modem byte for byte."""

from __future__ import annotations

import asyncio
import os
import pty
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.atmodem import (
    AtChannel,
    AtError,
    AtTimeout,
    ChannelDown,
    InDataMode,
    ModemRestarted,
    Reply,
    fields,
)
from drivers.serialio import Backoff

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)
FAST = Backoff(first_s=0.05, max_s=0.2)
CSQ = b"\r\n+CSQ: 17,99\r\n\r\nOK\r\n"


class Wire:
    """The modem's end of a pty: what the host wrote, and bytes written back verbatim."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.heard = bytearray()
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            self.heard += os.read(self.master, 4096)
        except OSError:
            return
        self._more.set()

    async def command(self, timeout: float = 2.0) -> bytes:
        """The next line the host sent, up to its CR (or its Ctrl-Z after a prompt)."""
        async with asyncio.timeout(timeout):
            while not any(end in self.heard for end in (b"\r", b"\x1a", b"+++")):
                self._more.clear()
                await self._more.wait()
        if self.heard.startswith(b"+++"):  # the escape has no line end
            del self.heard[:3]
            return b"+++"
        end = min(i for i in (self.heard.find(b"\r"), self.heard.find(b"\x1a")) if i >= 0)
        line = bytes(self.heard[:end])
        del self.heard[: end + 1]
        return line

    def say(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            os.close(self.slave)
            self.master = -1


@asynccontextmanager
async def channel(**kw: Any) -> AsyncIterator[tuple[Wire, AtChannel, list[str]]]:
    wire = Wire()
    urcs: list[str] = []
    at = AtChannel(wire.path, on_urc=urcs.append, backoff=FAST, settle_s=0.02, **kw)
    await at.start()
    try:
        while not at.online:
            await asyncio.sleep(0.005)
        yield wire, at, urcs
    finally:
        await at.close()
        wire.close()


async def answer(wire: Wire, at: AtChannel, command: str, reply: bytes, **kw: Any) -> Reply:
    """Run ``command`` while the wire answers it with ``reply``."""
    task = asyncio.create_task(at.command(command, **kw))
    assert await wire.command() == command.encode()
    wire.say(reply)
    return await task


# --- replies ---------------------------------------------------------------------------------


def test_a_reply_is_its_prefixed_lines_and_final_code() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            reply = await answer(wire, at, "AT+CSQ", CSQ, expect="+CSQ:")
            assert reply == Reply(("+CSQ: 17,99",), "OK")
            assert fields(reply.lines[0][5:]) == ["17", "99"]
            reply = await answer(wire, at, "ATI", b"\r\nSIMCOM\r\nREV 1\r\n\r\nOK\r\n", expect=None)
            assert reply.lines == ("SIMCOM", "REV 1")

    run(main())


def test_an_error_result_names_the_command_and_the_reason() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            with pytest.raises(AtError) as err:
                await answer(wire, at, "AT+CPIN?", b"\r\n+CME ERROR: 10\r\n", expect="+CPIN:")
            assert err.value.code == 10
            assert str(err.value) == (
                "调制解调器拒绝 AT+CPIN?：未插入 SIM 卡（+CME ERROR: 10） / "
                "the modem refused AT+CPIN?: SIM not inserted (+CME ERROR: 10)"
            )
            with pytest.raises(AtError) as err:
                await answer(wire, at, "ATD*99#", b"\r\nNO CARRIER\r\n")
            assert str(err.value) == (
                "调制解调器拒绝 ATD*99#：无载波（NO CARRIER） / the modem refused ATD*99#: NO CARRIER"
            )

    run(main())


def test_a_urc_in_the_middle_of_a_reply_goes_to_the_urc_handler() -> None:
    async def main() -> None:
        async with channel() as (wire, at, urcs):
            reply = await answer(
                wire,
                at,
                "AT+CMGR=3",
                b'\r\n+CMGR: 0,,24\r\n+CMTI: "SM",4\r\n0791683108\r\n\r\nOK\r\n',
                expect="+CMGR:",
                follow=True,
            )
            assert reply.lines == ("+CMGR: 0,,24", "0791683108")
            assert urcs == ['+CMTI: "SM",4']
            wire.say(b"\r\n+CREG: 2\r\n\r\nRING\r\n")
            await until(lambda: len(urcs) == 3)
            assert urcs[1:] == ["+CREG: 2", "RING"]

    run(main())


def test_the_prompt_takes_the_body_and_ctrl_z() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            task = asyncio.create_task(at.command("AT+CMGS=23", expect="+CMGS:", body="0011AB"))
            assert await wire.command() == b"AT+CMGS=23"
            wire.say(b"\r\n> ")
            assert await wire.command() == b"0011AB"
            wire.say(b"\r\n+CMGS: 7\r\n\r\nOK\r\n")
            assert (await task).lines == ("+CMGS: 7",)

    run(main())


def test_no_prompt_cancels_the_message_with_escape() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            task = asyncio.create_task(
                at.command("AT+CMGS=23", expect="+CMGS:", body="00", prompt_timeout=0.1)
            )
            assert await wire.command() == b"AT+CMGS=23"
            with pytest.raises(AtTimeout) as err:
                await task
            assert str(err.value) == (
                "调制解调器 0.1 秒内未给出 > 提示符（AT+CMGS=23） / "
                "no > prompt from the modem within 0.1 s (AT+CMGS=23)"
            )
            await until(lambda: bytes(wire.heard) == b"\x1b")

    run(main())


# --- resynchronisation -------------------------------------------------------------------------


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def test_a_late_answer_after_a_timeout_is_not_taken_for_the_next_command() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            task = asyncio.create_task(at.command("AT+CSQ", expect="+CSQ:", timeout=0.1))
            await wire.command()
            with pytest.raises(AtTimeout) as err:
                await task
            assert str(err.value) == (
                "调制解调器 0.1 秒内未完成 AT+CSQ / the modem did not finish AT+CSQ within 0.1 s"
            )
            wire.say(b"\r\n+CSQ: 3,99\r\n\r\nOK\r\n")  # late
            reply = await answer(wire, at, "AT+CSQ", CSQ, expect="+CSQ:")
            assert reply.lines == ("+CSQ: 17,99",)
            assert at.dropped == {"unexpected": 1, "stray_final": 1}

    run(main())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noise=st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=4))
def test_arbitrary_bytes_between_replies_never_break_the_channel(noise: list[bytes]) -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            for junk in noise:
                try:
                    reply = await answer(
                        wire, at, "AT+CSQ", junk + CSQ, expect="+CSQ:", timeout=0.3
                    )
                except (AtError, AtTimeout):
                    continue  # the junk held a result code of its own: that command is lost
                clean = b"\r" not in junk and b"\n" not in junk
                if clean and not (junk.isascii() and junk.decode().isprintable()):
                    assert reply.lines == ("+CSQ: 17,99",)  # the junk line was dropped
            reply = await answer(wire, at, "AT+CSQ", CSQ, expect="+CSQ:")
            assert reply.lines[-1] == "+CSQ: 17,99"
            line_noise = [j for j in noise if any(b > 0x7E or b < 0x20 for b in j.strip())]
            assert sum(at.dropped.values()) >= (1 if line_noise else 0)

    run(main())


def test_garbage_and_overlong_lines_are_counted_by_reason() -> None:
    async def main() -> None:
        async with channel(max_line=64) as (wire, at, _):
            wire.say(b"\r\n\xff\xfe\x00junk\r\n" + b"A" * 100 + b"\r\n+CSQ: 1\r\n")
            reply = await answer(wire, at, "AT", b"\r\nOK\r\n")
            assert reply.final == "OK"
            assert at.dropped == {"garbage": 1, "overflow": 1, "unexpected": 1}

    run(main())


def test_a_reboot_mid_command_fails_it_and_the_next_command_works() -> None:
    booted: list[bool] = []

    async def main() -> None:
        async with channel(on_boot=lambda: booted.append(True)) as (wire, at, _):
            task = asyncio.create_task(at.command("AT+CMGS=23", expect="+CMGS:", body="00"))
            await wire.command()
            wire.say(b"\r\nRDY\r\n")
            with pytest.raises(ModemRestarted) as err:
                await task
            assert str(err.value) == (
                "调制解调器在执行 AT+CMGS=23 时重启 / the modem restarted during AT+CMGS=23"
            )
            assert booted == [True]
            wire.say(b"AT\r\r\nOK\r\n")  # a late echo and answer from before the boot
            reply = await answer(wire, at, "ATE0", b"ATE0\r\r\nOK\r\n")
            assert reply.final == "OK"
            assert (await answer(wire, at, "AT+CSQ", CSQ, expect="+CSQ:")).lines == ("+CSQ: 17,99",)

    run(main())


def test_the_device_going_away_mid_command_fails_it_cleanly() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            path = wire.path
            task = asyncio.create_task(at.command("AT+CSQ", expect="+CSQ:"))
            await wire.command()
            wire.close()
            with pytest.raises(ChannelDown) as err:
                await task
            assert str(err.value) == (
                f"串口设备不在线（{path}），AT+CSQ 未完成 / serial device offline ({path}): AT+CSQ not done"
            )
            with pytest.raises(ChannelDown):
                await at.command("AT")

    run(main())


# --- data mode ---------------------------------------------------------------------------------


def test_connect_enters_data_mode_until_no_carrier() -> None:
    async def main() -> None:
        async with channel() as (wire, at, urcs):
            reply = await answer(wire, at, "ATD*99#", b"\r\nCONNECT 384000\r\n", timeout=1.0)
            assert reply.final == "CONNECT 384000" and at.data_mode
            with pytest.raises(InDataMode) as err:
                await at.command("AT+CSQ")
            assert (
                str(err.value) == "数据通话中，不能发送 AT+CSQ / in a data call: cannot send AT+CSQ"
            )
            wire.say(b"~\x7d\x23\xff\x03OK?~")  # PPP bytes are not line noise
            wire.say(b"\r\nNO CARRIER\r\n")
            await until(lambda: not at.data_mode)
            assert urcs == ["NO CARRIER"] and at.dropped == {}
            assert at.data_bytes >= 9

    run(main())


def test_escape_waits_the_guard_time_and_returns_to_commands() -> None:
    async def main() -> None:
        async with channel() as (wire, at, _):
            await answer(wire, at, "ATD*99#", b"\r\nCONNECT\r\n")
            escaping = asyncio.create_task(at.escape(guard_s=0.05))
            assert await wire.command() == b"+++"
            wire.say(b"\r\nOK\r\n")
            await escaping
            assert not at.data_mode
            assert (await answer(wire, at, "ATH", b"\r\nOK\r\n")).final == "OK"

    run(main())
