"""The Tiantong driver, its dial-up and pppd files against simulated terminals on real ptys."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)

from drivers.ppp import PeerConfig, PppSession, chat_script, peer_file, write_peer
from drivers.serialio import Backoff
from drivers.tiantong import (
    BadSetting,
    DataCallFailed,
    ModemBusy,
    ModemOffline,
    Registration,
    SendFailed,
    SimStatus,
    TiantongModem,
    signal_dbm,
)
from sim.tiantong import Fault, Reg, SimState, SimulatedModem, SmsCentre, Timing

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)

SPEED = 50.0  # emulated seconds per real second: a 5 s SMSC delivery lasts 0.1 s
FAST = Backoff(first_s=0.05, max_s=0.2)
KIT, CENTRE = "+8617700000001", "+8617700000002"
modes = pytest.mark.parametrize("mode", ["pdu", "text"])
TIMING = Timing()
CHAT = shutil.which("chat") or "/usr/sbin/chat"


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def modem(backend: SimulatedModem | str, **kw: Any) -> TiantongModem:
    options: dict[str, Any] = {"backoff": FAST, "start_timeout_s": 3.0, "guard_s": 0.05}
    return TiantongModem(backend, **(options | kw))


Inbox = list[tuple[str, str | bytes, datetime]]


@asynccontextmanager
async def rig(
    mode: str = "pdu", *, timing: Timing = TIMING, **kw: Any
) -> AsyncIterator[tuple[SimulatedModem, TiantongModem, TiantongModem, Inbox, Inbox]]:
    """The kit's terminal and the command centre's, each with its driver, one SMSC between."""
    async with (
        SmsCentre(speed=SPEED) as smsc,
        SimulatedModem(KIT, centre=smsc, speed=SPEED, timing=timing) as kit_sim,
        SimulatedModem(CENTRE, centre=smsc, speed=SPEED) as centre_sim,
        modem(kit_sim, sms_mode=mode, **kw) as kit,
        modem(centre_sim, sms_mode=mode) as centre,
    ):
        at_kit: Inbox = []
        at_centre: Inbox = []
        kit.on_sms = lambda *m: at_kit.append(m)
        centre.on_sms = lambda *m: at_centre.append(m)
        yield kit_sim, kit, centre, at_kit, at_centre


# --- registration, signal, SIM ---------------------------------------------------------------


def test_registration_and_signal_are_reported() -> None:
    async def main() -> None:
        async with SimulatedModem(KIT, speed=SPEED, csq=14) as sim, modem(sim) as kit:
            assert kit.online
            assert (kit.sim, kit.registration, kit.csq) == (SimStatus.READY, Registration.HOME, 14)
            state = kit.state()
            assert (state.name, state.kind, state.online) == ("tiantong", "tiantong", True)
            assert (
                state.summary
                == "天通已注册，信号 -85 dBm (CSQ 14) / Tiantong registered, signal -85 dBm (CSQ 14)"
            )
            assert state.detail["signal_dbm"] == -85
            assert (state.detail["lac"], state.detail["cell"]) == ("1A2B", "00C0FFEE")
            sim.set_signal(25)  # the next poll (or a refresh) sees it
            await kit.refresh()
            assert kit.state().detail["csq"] == 25

    run(main())


def test_csq_maps_to_dbm_as_27007_says() -> None:
    assert [signal_dbm(c) for c in (0, 1, 2, 30, 31, 99, None)] == [
        -113, -111, -109, -53, -51, None, None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("sim_state", "reason"),
    [
        (SimState.ABSENT, "未检测到 SIM 卡 / Tiantong terminal offline: no SIM card"),
        (
            SimState.PIN,
            "SIM 卡已锁（需要 PIN 码，本设备不输入 PIN） / Tiantong terminal offline: "
            "the SIM is locked (PIN needed; the kit does not enter PINs)",
        ),
    ],
)
def test_without_a_usable_sim_the_terminal_is_offline_and_says_why(
    sim_state: SimState, reason: str
) -> None:
    async def main() -> None:
        async with (
            SimulatedModem(KIT, speed=SPEED, sim=sim_state) as sim,
            modem(sim, start_timeout_s=0.5) as kit,
        ):
            assert not kit.online
            await until(lambda: kit.sim is not SimStatus.UNKNOWN)
            with pytest.raises(ModemOffline) as err:
                await kit.send_sms(CENTRE, "SOS")
            assert str(err.value) == "天通终端离线：" + reason
            assert kit.state().summary == "天通终端离线：" + reason
            assert not sim.sent

    run(main())


def test_losing_the_signal_refuses_sends_until_it_returns() -> None:
    async def main() -> None:
        async with rig() as (kit_sim, kit, _, _, at_centre):
            kit_sim.set_signal(99)
            await until(lambda: not kit.online)  # the +CREG URC, not a poll
            with pytest.raises(ModemOffline) as err:
                await kit.send_sms(CENTRE, "SOS")
            assert str(err.value) == (
                "天通终端离线：未注册到天通网络：正在搜索网络（无信号？） / Tiantong terminal offline: "
                "not registered with the network: searching for the network (no signal?)"
            )
            kit_sim.set_signal(18)
            assert await kit.wait_online(2.0)
            await kit.send_sms(CENTRE, "SOS")
            await until(lambda: [m[1] for m in at_centre] == ["SOS"])

    run(main())


# --- SMS -------------------------------------------------------------------------------------

REPORT = "伤员 2 人，需要担架。位置：北纬 30.1 度，东经 103.2 度。" * 4  # 3 UCS-2 segments
BINARY = bytes(range(256)) + bytes(144)  # 400 bytes: 3 segments of 8-bit data


@modes
def test_text_chinese_and_binary_messages_cross_both_ways(mode: str) -> None:
    async def main() -> None:
        async with rig(mode) as (kit_sim, kit, centre, at_kit, at_centre):
            for payload in ("SOS {team 3} €5", REPORT, BINARY):
                await kit.send_sms(CENTRE, payload)
            await centre.send_sms(KIT, "收到，救援已出发")
            await until(lambda: len(at_centre) == 3 and len(at_kit) == 1)
            assert [(s, p) for s, p, _ in at_centre] == [
                (KIT, "SOS {team 3} €5"),
                (KIT, REPORT),
                (KIT, BINARY),
            ]
            assert [(s, p) for s, p, _ in at_kit] == [(CENTRE, "收到，救援已出发")]
            assert len(kit_sim.sent) == 1 + 3 + 3
            await until(lambda: not kit_sim.store)  # each deleted once the listener took it
            assert kit.sent == 3 and centre.received == 3

    run(main())


def test_messages_already_stored_at_start_are_read_then_deleted() -> None:
    async def main() -> None:
        async with SimulatedModem(KIT, speed=SPEED) as sim:
            sim.preload(CENTRE, "早到的消息" * 20, ref=5)  # two segments
            sim.preload(CENTRE, b"\x01\x02")
            got: Inbox = []
            async with modem(sim) as kit:
                kit.on_sms = lambda *m: got.append(m)
                await until(lambda: len(got) == 2 and not sim.store)
            assert [p for _, p, _ in got] == ["早到的消息" * 20, b"\x01\x02"]

    run(main())


def test_a_message_the_listener_fails_on_stays_on_the_sim() -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug downstream")

    async def main() -> None:
        async with rig() as (kit_sim, kit, centre, _, _):
            kit.on_sms = broken
            await centre.send_sms(KIT, "keep me")
            await until(lambda: kit.dropped["listener_failed"] == 1)
            assert len(kit_sim.store) == 1  # read again at the next start
            assert kit.received == 0

    run(main())


# --- faults ----------------------------------------------------------------------------------


def test_line_noise_is_counted_and_the_terminal_carries_on() -> None:
    async def main() -> None:
        async with rig() as (kit_sim, kit, centre, at_kit, _):
            kit_sim.inject(Fault.GARBAGE)
            kit_sim.inject(Fault.TRUNCATED)
            await until(lambda: kit.dropped["garbage"] == 1 and kit.dropped["bad_urc"] == 1)
            await centre.send_sms(KIT, "still there?")
            await until(lambda: [p for _, p, _ in at_kit] == ["still there?"])
            await kit.send_sms(CENTRE, "yes")

    run(main())


def test_a_reboot_mid_send_fails_that_send_and_a_retry_succeeds() -> None:
    async def main() -> None:
        async with rig(timing=Timing(submit_s=20.0)) as (kit_sim, kit, _, _, at_centre):
            sending = asyncio.create_task(kit.send_sms(CENTRE, "SOS"))
            await until(lambda: any(c.startswith("AT+CMGS") for c in kit_sim.heard))
            restarts = kit.restarts
            kit_sim.reboot()
            with pytest.raises(SendFailed) as err:
                await sending
            assert str(err.value) == (
                "短信未发出（第 1/1 段）：调制解调器在执行 AT+CMGS=18 时重启 / "
                "SMS not sent (segment 1 of 1): the modem restarted during AT+CMGS=18"
            )
            assert not kit.online and kit.restarts == restarts + 1
            assert await kit.wait_online(3.0)  # set up again: echo off, PDU mode, +CMTI on
            await kit.send_sms(CENTRE, "SOS")
            await until(lambda: [p for _, p, _ in at_centre] == ["SOS"])

    run(main())


def test_the_driver_reconnects_when_the_usb_device_is_unplugged_and_plugged_back(
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyTiantong"

    async def main() -> None:
        async with (
            SmsCentre(speed=SPEED) as smsc,
            SimulatedModem(KIT, centre=smsc, speed=SPEED, link=link) as kit_sim,
            SimulatedModem(CENTRE, centre=smsc, speed=SPEED),
            modem(str(link)) as kit,
        ):
            assert kit.online
            await kit_sim.unplug()
            await until(lambda: not kit.online)
            assert not link.exists()
            with pytest.raises(ModemOffline) as err:
                await kit.send_sms(CENTRE, "SOS")
            assert str(err.value) == (
                f"天通终端离线：串口设备未连接 / Tiantong terminal offline: device not connected ({link})"
            )
            await kit_sim.plug()
            assert await kit.wait_online(3.0)
            await kit.send_sms(CENTRE, "SOS")
            await until(lambda: len(smsc.routed) == 1)
            assert kit.reconnects == 1

    run(main())


# --- data service ----------------------------------------------------------------------------


def test_dial_reaches_connect_and_hangup_returns_to_commands() -> None:
    async def main() -> None:
        async with rig(apn="ctnet") as (kit_sim, kit, _, _, at_centre):
            await kit.dial()
            assert kit.in_call and kit_sim.in_call and kit_sim.apn == "ctnet"
            assert kit.state().detail["in_call"] is True
            with pytest.raises(ModemBusy) as err:
                await kit.send_sms(CENTRE, "SOS")
            assert str(err.value) == (
                "天通终端正在数据通话，请先挂断 / the Tiantong terminal is in a data call: hang up first"
            )
            await kit.hangup()
            assert not kit.in_call and not kit_sim.in_call
            await kit.send_sms(CENTRE, "SOS")
            await until(lambda: len(at_centre) == 1)

    run(main())


def test_dial_without_the_network_fails_with_no_carrier() -> None:
    async def main() -> None:
        async with rig() as (kit_sim, kit, _, _, _):
            kit_sim.reg = Reg.SEARCHING  # the network goes as the call starts, before any +CREG
            with pytest.raises(DataCallFailed) as err:
                await kit.dial()
            assert str(err.value) == (
                "天通数据呼叫未接通：调制解调器拒绝 ATD*99#：无载波（NO CARRIER） / "
                "Tiantong data call not connected: the modem refused ATD*99#: NO CARRIER"
            )
            assert not kit.in_call

    run(main())


def test_a_router_terminal_is_never_dialled() -> None:
    async def main() -> None:
        async with (
            SimulatedModem(KIT, speed=SPEED) as sim,
            modem(sim, data_service="router") as kit,
        ):
            await kit.dial()
            await kit.hangup()
            assert sim.calls == 0 and not any(c.startswith("ATD") for c in sim.heard)
            assert kit.state().detail["data_service"] == "router"

    run(main())


async def run_chat(sim: SimulatedModem, script: Path) -> tuple[int, str]:
    """The real chat(8) with its stdin and stdout on the simulated modem, as pppd runs it."""
    fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
    try:
        proc = await asyncio.create_subprocess_exec(
            CHAT, "-v", "-s", "-f", str(script), stdin=fd, stdout=fd, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(fd)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.skipif(not os.path.exists(CHAT), reason="chat (the ppp package) is not installed")
@pytest.mark.parametrize(
    ("sim_kw", "code", "last"),
    [
        ({}, 0, "CONNECT"),
        ({"csq": 99}, 5, "Failed (NO CARRIER)"),  # 4 + index of the ABORT string
        ({"sim": SimState.ABSENT}, 6, "Failed (ERROR)"),
    ],
)
def test_the_generated_chat_script_dials_the_modem_with_the_real_chat(
    tmp_path: Path, sim_kw: dict[str, Any], code: int, last: str
) -> None:
    script = tmp_path / "tiantong.chat"
    script.write_text(chat_script(PeerConfig(apn="ctnet")))

    async def main() -> None:
        async with SimulatedModem(KIT, speed=SPEED, **sim_kw) as sim:
            await asyncio.sleep(0.1)  # registration
            returncode, log = await run_chat(sim, script)
            assert returncode == code, log
            assert last in log
            assert sim.in_call == (code == 0)
            assert sim.apn == ("ctnet" if code == 0 else None)

    run(main())


def test_the_peer_file_has_what_the_pi_needs(tmp_path: Path) -> None:
    cfg = PeerConfig(device="/dev/ttyUSB2", apn="ctnet")
    (tmp_path / "peers").mkdir()
    (tmp_path / "chatscripts").mkdir()
    peer, chat = write_peer(cfg, tmp_path / "peers", tmp_path / "chatscripts")
    lines = peer.read_text().splitlines()
    for option in ("/dev/ttyUSB2", "115200", "noauth", "usepeerdns", "persist", "maxfail 0",
                   "holdoff 30", "lcp-echo-interval 30", "lcp-echo-failure 4", "crtscts", "lock"):  # fmt: skip
        assert option in lines
    assert f'connect "/usr/sbin/chat -v -f {chat}"' in lines
    assert "defaultroute" not in lines and "nodetach" not in lines
    assert "defaultroute" in peer_file(PeerConfig(defaultroute=True), chat).splitlines()
    assert 'AT+CGDCONT=1,"IP","ctnet"' in chat.read_text()


@pytest.mark.skipif(not os.path.exists("/usr/sbin/pppd"), reason="pppd is not installed")
def test_the_real_pppd_accepts_the_peer_file(tmp_path: Path) -> None:
    async def main() -> None:
        async with SimulatedModem(KIT, speed=SPEED) as sim:
            peer = tmp_path / "peer"
            peer.write_text(peer_file(PeerConfig(device=sim.path), tmp_path / "chat"))
            proc = await asyncio.create_subprocess_exec(
                "/usr/sbin/pppd", "file", str(peer), "dryrun", "nodetach",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            # 2 would be an option error; 4 is this machine's missing kernel PPP.
            assert proc.returncode in (0, 4), out.decode()

    run(main())


def test_a_ppp_session_reports_its_interface_up_and_its_end(tmp_path: Path) -> None:
    fake = tmp_path / "pppd"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$0.args"\n'
        "echo 'Using interface ppp0'\n"
        "echo 'local  IP address 10.64.1.2'\n"
        "echo 'remote IP address 10.64.0.1'\n"
        "sleep 0.2\n"
        "exit 16\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    states: list[bool] = []

    async def main() -> None:
        session = PppSession("tiantong", pppd=str(fake), on_state=states.append)
        await session.start()
        try:
            assert await session.wait_up(5.0)
            assert (session.interface, session.local_ip) == ("ppp0", "10.64.1.2")
            await until(lambda: session.returncode is not None)
            assert not session.up and session.local_ip is None
        finally:
            await session.close()
        assert states == [True, False]
        assert session.exit_reason == ("调制解调器挂断", "the modem hung up")
        assert Path(f"{fake}.args").read_text().split() == ["call", "tiantong", "nodetach"]

    run(main())


# --- settings and backends ---------------------------------------------------------------------


def test_every_bad_setting_is_reported_at_once() -> None:
    with pytest.raises(BadSetting) as err:
        TiantongModem("/dev/null", sms_mode="binary", apn="a b", poll_interval_s=2)  # type: ignore[arg-type]
    assert str(err.value) == (
        "天通设置无效：短信模式 'binary'（应为 pdu 或 text）；APN 'a b'（字母、数字、点、连字符，至多 63 个）；"
        "轮询间隔 2 秒（应为 10–3600，省电） / invalid Tiantong settings: sms_mode 'binary' (pdu or text); "
        "APN 'a b' (letters, digits, dots, hyphens; at most 63); poll_interval_s 2 (10-3600, for the battery)"
    )


def test_kit_backend_sim_makes_the_default_backend_a_simulated_modem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIT_BACKEND", "sim")

    async def main() -> None:
        async with TiantongModem(backoff=FAST) as kit:  # a real-speed simulator: 3 s to register
            assert isinstance(kit.backend, SimulatedModem)
            assert kit.online

    run(main())
