"""The SMS link kind end to end: kit and centre as real processes, each on its own simulated
modem (real ptys), the modems joined by a simulated SMS centre."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.loader import BadConfig, parse
from edge.item import Position, new_item
from sim.harness import centre, centre_items, kit
from sim.tiantong import SimulatedModem, SmsCentre
from uplink.kinds.sms import same_number

ACKNOWLEDGED = 2
KIT_NUMBER, CENTRE_NUMBER = "+8617700000007", "+8617400000000"
SPEED = 5.0  # a 5 s SMS delivery takes 1 s

pytestmark = pytest.mark.timeout(120)


def link_toml(device: Path, number: str = CENTRE_NUMBER) -> str:
    return (
        f'[[links]]\nkind = "sms"\nname = "tiantong-sms"\ndevice = "{device}"\n'
        f'centre_number = "{number}"\nack_timeout = 30\n'
    )


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


def test_numbers_compare_by_subscriber_and_config_refuses_a_bad_number(tmp_path: Path) -> None:
    assert same_number("+8617700000007", "17700000007")
    assert same_number("8617700000007", "+86 177 0000 0007")
    assert not same_number("+8617700000007", "+8617700000008")
    assert not same_number("", "")
    path = tmp_path / "kit.toml"
    path.write_text('[kit]\nid = 3\nname = "k"\n' + link_toml(Path("/dev/ttyUSB2"), "12ab"))
    with pytest.raises(BadConfig, match=r"links\[0\]\.centre_number"):
        parse(path)


def test_reports_reach_the_centre_by_sms_and_are_acknowledged(tmp_path: Path) -> None:
    async def main() -> None:
        kit_dev, centre_dev = tmp_path / "kit-modem", tmp_path / "centre-modem"
        async with (
            SmsCentre(speed=SPEED) as smsc,
            SimulatedModem(KIT_NUMBER, centre=smsc, speed=SPEED, link=kit_dev) as kit_modem,
            SimulatedModem(CENTRE_NUMBER, centre=smsc, speed=SPEED, link=centre_dev),
            centre(
                tmp_path,
                udp_gateways=[
                    f'[[gateways]]\nname = "tiantong-sms"\nkind = "sms"\n'
                    f'device = "{centre_dev}"\nmtu = 140\nmissing_after_s = 10\n'
                ],
            ) as (_, data),
            kit(tmp_path, link_toml(kit_dev)) as k,
        ):
            sos = await k.edge.accept(
                new_item("sos", source="button", position=Position(30.1, 103.2))
            )
            report = await k.edge.accept(
                new_item("situation", source="web", text="山体滑坡，村道中断，需要挖掘机" * 6)
            )
            seqs = {sos["seq"], report["seq"]}
            assert await wait_until(lambda: seqs <= set(centre_items(data)), 60), (
                tmp_path / "uplink.log"
            ).read_text()[-3000:]
            assert all(centre_items(data)[s][0] == 1 for s in seqs)
            assert await wait_until(
                lambda: all(k.kit_states()[s] == ACKNOWLEDGED for s in seqs), 40
            ), (tmp_path / "centre.log").read_text()[-3000:]
            # The long report went as several one-segment messages, never a concatenated one.
            assert len(kit_modem.sent) >= 3
        routed = [r.segment for r in smsc.routed if same_number(r.sender, KIT_NUMBER)]
        assert routed and all(
            isinstance(s.payload, bytes) and len(s.payload) <= 140 and s.concat is None
            for s in routed
        )

    asyncio.run(main())
