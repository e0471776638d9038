"""VSAT terminal status: probes against a simulated iDirect remote, the monitor, the IP link hook."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import cbor2
import pytest
from aiohttp import web
from hygiene import nothing_left_open, run  # noqa: F401 (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from drivers.vsat import (
    DO,
    DONT,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    BadReply,
    HttpProbeConfig,
    HttpStatusProbe,
    ProbeConfig,
    ProbeFailed,
    StatusProbe,
    TelnetFilter,
    TelnetProbeConfig,
    TerminalMonitor,
    TerminalStatus,
    make_probe,
    parse_rmtstat,
    parse_snr,
)
from sim.vsat import Fault, RemoteState, SimulatedRemote
from uplink.kinds.ip import Config, IpLink

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)
PROBES = TypeAdapter(ProbeConfig)
TELNET = TelnetProbeConfig.model_fields
DEFAULTS = TelnetProbeConfig(
    kind="idirect-telnet", host="127.0.0.1", username="admin", password="iDirect"
)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def telnet(remote: SimulatedRemote, **kw: Any) -> StatusProbe:
    fields = {"kind": "idirect-telnet", "host": "127.0.0.1", "port": remote.telnet_port,
              "username": "admin", "password": "iDirect", "timeout_s": 1.0}  # fmt: skip
    return make_probe(PROBES.validate_python(fields | kw))


def http(remote: SimulatedRemote, **kw: Any) -> StatusProbe:
    fields = {"kind": "http", "url": remote.status_url, "rx_key": "rx_bps", "tx_key": "tx_bps",
              "timeout_s": 1.0}  # fmt: skip
    return make_probe(PROBES.validate_python(fields | kw))


def html(remote: SimulatedRemote) -> StatusProbe:
    return http(
        remote,
        url=remote.html_url,
        format="html",
        state_key=r"id='state'>([^<]*)<",
        snr_key=r"id='snr'>(-?\d+(?:\.\d+)?)",
        rx_key="",
        tx_key="",
    )


# --- reading answers ---------------------------------------------------------------------


def test_the_assumed_idirect_answers_are_read() -> None:
    assert parse_snr("rx snr\r\nRx SNR: 9.4\r\n> ", DEFAULTS.snr_pattern) == 9.4
    assert parse_snr("Rx SNR = -1.5 dB", DEFAULTS.snr_pattern) == -1.5
    text = "rmtstat\r\nRemote State: IN NETWORK\r\nRx Rate: 4096 kbps\r\nTx Rate: 1.5 Mbps\r\n> "
    state = parse_rmtstat(
        text, DEFAULTS.state_pattern, tuple(DEFAULTS.online_states), DEFAULTS.rate_pattern
    )
    assert (state.online, state.state, state.rx_bps, state.tx_bps) == (
        True,
        "IN NETWORK",
        4_096_000,
        1_500_000,
    )
    with pytest.raises(BadReply) as err:
        parse_snr("Rx SNR: --", DEFAULTS.snr_pattern)
    assert str(err.value) == (
        "无法读出信噪比：'Rx SNR: --' / no SNR in the terminal's answer: 'Rx SNR: --'"
    )


def read_every_way(text: str) -> None:
    """Every reader over ``text``: a value, or :class:`BadReply` and nothing else."""
    for read in (
        lambda: parse_snr(text, DEFAULTS.snr_pattern),
        lambda: parse_rmtstat(
            text, DEFAULTS.state_pattern, tuple(DEFAULTS.online_states), DEFAULTS.rate_pattern
        ),
        lambda: HttpStatusProbe(http_config()).read_json(text),
        lambda: HttpStatusProbe(http_config(format="html", state_key=r"<b>(.*)</b>")).read_html(
            text
        ),
    ):
        with contextlib.suppress(BadReply):
            read()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_answer_is_read_or_refused_with_bad_reply_only(text: str) -> None:
    read_every_way(text)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["Rx SNR: ", "Remote State: ", "Rx Rate: ", "snr=", "state", '{"state":']),
    st.text(alphabet='0123456789.-kMbps INETWORK\r\n:={}"', max_size=40),
)
def test_near_misses_are_read_or_refused_with_bad_reply_only(prefix: str, rest: str) -> None:
    read_every_way(prefix + rest)


def http_config(**kw: Any) -> HttpProbeConfig:
    return HttpProbeConfig(**({"kind": "http", "url": "http://192.168.100.1/api"} | kw))


def test_telnet_options_are_refused_and_commands_taken_out_of_the_data() -> None:
    f = TelnetFilter()
    data, reply = f.feed(bytes((IAC, WILL, 1, IAC, DO, 31)) + b"Username: ")
    assert (data, reply) == (b"Username: ", bytes((IAC, DONT, 1, IAC, WONT, 31)))
    data, reply = f.feed(bytes((IAC, SB, 24, 1, IAC, SE, IAC, IAC, IAC, WONT, 3)) + b"ok")
    assert (data, reply) == (b"\xffok", b"")


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
def test_the_telnet_filter_reads_the_same_however_the_bytes_are_split(
    stream: bytes, cuts: list[int]
) -> None:
    whole = TelnetFilter().feed(stream)
    f, data, reply = TelnetFilter(), b"", b""
    at = 0
    for cut in [*sorted(cuts), len(stream)]:
        d, r = f.feed(stream[at:cut])
        data, reply, at = data + d, reply + r, max(at, cut)
    assert (data, reply) == whole


def test_probe_configs_are_one_union_on_kind_and_reject_what_they_cannot_use() -> None:
    assert isinstance(
        PROBES.validate_python({"kind": "http", "url": "http://10.0.0.1/s"}), HttpProbeConfig
    )
    with pytest.raises(ValidationError) as err:
        PROBES.validate_python({"kind": "snmp", "host": "10.0.0.1"})
    assert "idirect-telnet" in str(err.value)
    with pytest.raises(ValidationError, match="not a regular expression"):
        PROBES.validate_python(
            {
                "kind": "idirect-telnet",
                "host": "h",
                "username": "u",
                "password": "p",
                "prompt": "([",
            }
        )
    with pytest.raises(ValidationError):
        PROBES.validate_python({"kind": "http", "url": "http://x/s", "interval_s": 0.1})
    for name, info in TELNET.items():
        assert info.title and " / " in info.title, name
        assert info.description, name


# --- probes against the simulated remote -------------------------------------------------

UP = TerminalStatus(True, 9.4, 4_096_000, 1_024_000, "")
ACQUIRING = TerminalStatus(False, 9.4, None, None, "ACQUIRING")
DOWN = TerminalStatus(False, None, None, None, "OFFLINE")


def test_each_probe_reads_each_state_of_the_simulated_remote() -> None:
    async def main() -> None:
        async with SimulatedRemote() as remote:
            probes = [telnet(remote), http(remote)]
            for state, expected in [
                (RemoteState.IN_NETWORK, UP),
                (RemoteState.ACQUIRING, ACQUIRING),
                (RemoteState.DOWN, DOWN),
            ]:
                remote.state = state
                assert [await p.probe() for p in probes] == [expected, expected]
                page = await html(remote).probe()
                assert (page.online, page.snr_db, page.reason) == (
                    expected.online,
                    expected.snr_db,
                    expected.reason,
                )
            remote.state, remote.snr_db = RemoteState.IN_NETWORK, 3.2
            assert (await probes[0].probe()).snr_db == 3.2
            # every option the remote asked for was refused
            assert bytes(remote.negotiation[:9]) == bytes(
                (IAC, DONT, 1, IAC, DONT, 3, IAC, WONT, 31)
            )
            assert remote.commands[:3] == ["rx snr", "rmtstat", "exit"]

    run(main())


def test_faults_give_precise_errors() -> None:
    async def main() -> None:
        async with SimulatedRemote() as remote:
            await remote.inject(Fault.GARBAGE)
            with pytest.raises(BadReply, match="no remote state in the answer"):
                await telnet(remote).probe()
            with pytest.raises(BadReply, match="status page is not JSON"):
                await http(remote).probe()
            await remote.inject(Fault.HANG)
            with pytest.raises(ProbeFailed) as err:
                await telnet(remote, timeout_s=0.3).probe()
            assert str(err.value) == "终端无应答（等待登录提示） / no answer (login prompt)"
            with pytest.raises(ProbeFailed, match="TimeoutError"):
                await http(remote, timeout_s=0.3).probe()
            await remote.inject(Fault.REFUSE)
            with pytest.raises(ProbeFailed) as err:
                await telnet(remote).probe()
            assert str(err.value) == (
                f"无法连接终端 127.0.0.1:{remote.telnet_port}（ConnectionRefusedError） / "
                f"cannot reach the terminal at 127.0.0.1:{remote.telnet_port} (ConnectionRefusedError)"
            )
            await remote.clear()
            assert await telnet(remote).probe() == UP
            with pytest.raises(ProbeFailed, match=r"prompt \(wrong password\?\)"):
                await telnet(remote, password="guess", timeout_s=0.3).probe()

    run(main())


# --- the monitor -------------------------------------------------------------------------


class Scripted:
    """A probe that answers from a list: a status, or an error to raise."""

    def __init__(self, answers: list[TerminalStatus | Exception]) -> None:
        self.answers = answers

    async def probe(self) -> TerminalStatus:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_monitor_goes_down_only_after_two_bad_probes_in_a_row() -> None:
    async def main() -> None:
        lost = ProbeFailed("终端无应答", "no answer")
        script: list[TerminalStatus | Exception] = [lost, UP, lost, UP, lost, ACQUIRING, UP]
        changes: list[bool] = []
        monitor = TerminalMonitor(Scripted(script), on_change=changes.append)
        seen = []
        for _ in range(7):
            await monitor.check()
            seen.append(monitor.online)
        assert seen == [False, True, True, True, True, False, True]
        assert changes == [True, False, True]
        state = monitor.state()
        assert (
            state.summary
            == "卫星终端在网，信噪比 9.4 dB / satellite terminal in network, SNR 9.4 dB"
        )
        assert (state.kind, state.detail["snr_db"], state.detail["probes"]) == ("vsat", 9.4, 7)

    run(main())


def test_the_monitor_probes_on_its_interval_and_reports_why_it_is_down() -> None:
    async def main() -> None:
        async with (
            SimulatedRemote(state=RemoteState.ACQUIRING) as remote,
            TerminalMonitor(http(remote), interval_s=0.05) as monitor,
        ):
            await monitor.wait_probed()
            await until(lambda: monitor.probes >= 2)
            assert not monitor.online
            assert monitor.state().summary == (
                "卫星终端不可用：终端报告 ACQUIRING / "
                "satellite terminal down: terminal reports ACQUIRING"
            )
            remote.state = RemoteState.IN_NETWORK
            await asyncio.wait_for(monitor.wait_online(), 2.0)

    run(main())


# --- the IP link -------------------------------------------------------------------------


def test_an_ip_link_is_offline_while_its_terminal_is_out_of_network_even_if_tcp_connects() -> None:
    async def acks(request: web.Request) -> web.Response:
        return web.Response(body=cbor2.dumps({"acks": []}))

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/v1/acks", acks)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with SimulatedRemote() as remote:
                config = Config(
                    kind="ip",
                    name="vsat",
                    url=f"http://127.0.0.1:{port}",
                    rate=100_000,
                    probe_interval=0.2,
                    status=PROBES.validate_python(
                        {
                            "kind": "http",
                            "url": remote.status_url,
                            "interval_s": 1,
                            "timeout_s": 0.5,
                        }
                    ),
                )
                link = IpLink(config)
                running = asyncio.create_task(link.run())
                try:
                    await until(lambda: link.online)
                    assert link.terminal is not None and link.terminal.snr_db == 9.4
                    device = link.device_state()
                    assert device is not None and device.detail["snr_db"] == 9.4
                    remote.state = RemoteState.DOWN
                    await until(lambda: not link.online, timeout=4.0)  # two probes, 1 s apart
                    await asyncio.sleep(0.5)
                    assert not link.online  # the centre still answers; the terminal rules
                    remote.state = RemoteState.IN_NETWORK
                    await until(lambda: link.online, timeout=3.0)
                finally:
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)
        finally:
            await runner.cleanup()

    run(main())


def test_without_a_status_probe_the_ip_link_is_unchanged() -> None:
    config = Config(kind="ip", name="lan", url="http://127.0.0.1:1", rate=1000)
    link = IpLink(config)
    assert (config.status, link.monitor, link.terminal, link.device_state()) == (
        None,
        None,
        None,
        None,
    )
