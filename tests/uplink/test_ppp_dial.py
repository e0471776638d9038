"""An IP link that dials up first (Tiantong data over pppd): online only while PPP is up,
requests from the PPP address, pppd started again when it ends. pppd is a stand-in here
(these machines have no kernel PPP); the generated peer file and chat script are tested
against the simulated modem in tests/drivers/test_tiantong.py."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

from security.ipauth import RequestSigner
from sim.harness import centre, kit_security
from uplink.kinds.ip import Config, PppDial, make

FAKE_PPPD = """#!/bin/sh
echo "$@" >> "$0.calls"
echo 'Using interface ppp0'
echo 'local  IP address 127.0.0.1'
echo 'remote IP address 127.0.0.2'
exec sleep 600
"""


async def until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


def test_ip_link_is_online_only_while_ppp_is_up_and_redials(tmp_path: Path) -> None:
    fake = tmp_path / "pppd"
    fake.write_text(FAKE_PPPD)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)

    async def main() -> None:
        async with centre(tmp_path) as (url, _):
            link = make(
                Config(
                    kind="ip",
                    name="tiantong-data",
                    url=url,
                    rate=1200,
                    probe_interval=0.5,
                    dial=PppDial(pppd=str(fake), up_timeout_s=5),
                )
            )
            link.kit_id = 7
            security = kit_security(7, tmp_path / "kit-security.sqlite3")
            link.auth = RequestSigner.for_kit(security)  # kit 7 is enrolled with its key
            link.reconnect_delay = 0.1
            states: list[bool] = []
            link.on_state = lambda lk: states.append(lk.online)
            runner = asyncio.create_task(link.run())
            try:
                assert await until(lambda: link.online, 10)
                assert link.ppp is not None and link.ppp.local_ip == "127.0.0.1"
                state = link.device_state()
                assert state is not None and state.online and "ppp0" in state.summary_en
                # The carrier drops: pppd ends, the link goes offline, pppd is started again.
                proc = link.ppp._proc
                assert proc is not None
                os.kill(proc.pid, signal.SIGTERM)
                assert await until(lambda: states[-1:] == [False], 10)
                assert await until(lambda: link.online, 10)
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
                security.state.close()
            assert link.ppp is not None and not link.ppp.running
        calls = Path(f"{fake}.calls").read_text().splitlines()
        assert calls == ["call tiantong nodetach"] * 2

    asyncio.run(main())


def test_dial_up_that_never_gets_an_address_keeps_the_link_offline(tmp_path: Path) -> None:
    fake = tmp_path / "pppd"
    fake.write_text("#!/bin/sh\necho 'Connect script failed'\nexit 8\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)

    async def main() -> None:
        link = make(
            Config(
                kind="ip",
                name="tiantong-data",
                url="http://127.0.0.1:9",
                rate=1200,
                dial=PppDial(pppd=str(fake), up_timeout_s=5),
            )
        )
        runner = asyncio.create_task(link.run())
        try:
            assert await until(lambda: link.stats.errors >= 2, 10)
            assert not link.online
            assert "chat script failed" in link.stats.last_error
            state = link.device_state()
            assert state is not None and not state.online
            assert state.summary_en == "the chat script failed (no SIM or signal)"
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(main())
