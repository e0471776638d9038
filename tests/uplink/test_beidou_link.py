"""The Beidou link kind end to end: kit and centre as real processes, each on its own
simulated terminal (real ptys), the two terminals joined by the simulated satellite hop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config.loader import BadConfig, parse
from edge.item import Position, new_item
from sim.beidou import SimCard, SimulatedTerminal, Timing
from sim.harness import centre, centre_items, kit

ACKNOWLEDGED = 2
KIT_CARD = SimCard(user_id="0241636", comm_level=3, interval_s=3)  # 77 B, one per 3 s
CENTRE_CARD = SimCard(user_id="0300001", comm_level=4, interval_s=1)
QUICK = Timing(answer_s=0.1, feedback_s=0.2, delivery_s=1.0)

pytestmark = pytest.mark.timeout(120)


def link_toml(device: Path, **extra: object) -> str:
    more = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in extra.items())
    return (
        f'[[links]]\nkind = "beidou"\nname = "beidou"\ndevice = "{device}"\n'
        f'centre_id = "0300001"\nack_timeout = 20\n{more}'
    )


def gateway_toml(device: Path) -> str:
    return (
        f'[[gateways]]\nname = "beidou"\nkind = "beidou"\ndevice = "{device}"\n'
        "mtu = 77\nmissing_after_s = 8\n"
    )


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


def test_config_takes_a_beidou_link_and_refuses_a_bad_centre_id(tmp_path: Path) -> None:
    path = tmp_path / "kit.toml"
    path.write_text('[kit]\nid = 3\nname = "k"\n' + link_toml(Path("/dev/ttyUSB0")))
    assert parse(path).links[0].kind == "beidou"
    path.write_text(
        '[kit]\nid = 3\nname = "k"\n[[links]]\nkind = "beidou"\nname = "bd"\ncentre_id = "03x"\n'
    )
    with pytest.raises(BadConfig, match=r"links\[0\]\.centre_id"):
        parse(path)


def test_sos_and_a_report_reach_the_centre_by_beidou_and_are_acknowledged(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        kit_dev, centre_dev = tmp_path / "kit-beidou", tmp_path / "centre-beidou"
        kit_term = SimulatedTerminal("4.0", KIT_CARD, timing=QUICK, link=kit_dev)
        centre_term = SimulatedTerminal(
            "4.0", CENTRE_CARD, timing=QUICK, link=centre_dev, peer=kit_term
        )
        kit_term.peer = centre_term
        async with (
            kit_term,
            centre_term,
            centre(tmp_path, udp_gateways=[gateway_toml(centre_dev)]) as (_, data),
            kit(tmp_path, link_toml(kit_dev)) as k,
        ):
            sos = await k.edge.accept(
                new_item("sos", source="button", text="被困 3 人", position=Position(30.1, 103.2))
            )
            report = await k.edge.accept(
                new_item("situation", source="web", text="桥梁垮塌，道路中断" * 8)
            )
            seqs = {sos["seq"], report["seq"]}
            assert await wait_until(lambda: seqs <= set(centre_items(data)), 60), (
                tmp_path / "uplink.log"
            ).read_text()[-3000:]
            assert all(centre_items(data)[s][0] == 1 for s in seqs)
            assert await wait_until(
                lambda: all(k.kit_states()[s] == ACKNOWLEDGED for s in seqs), 40
            ), (tmp_path / "centre.log").read_text()[-3000:]
        # Every message the kit's terminal put on the air fitted its card and went to the
        # centre; the long report needed more than one.
        sent = list(kit_term.sent)
        assert len(sent) >= 2 and all(len(t.payload) <= 77 for t in sent)
        assert {t.dest for t in sent} == {"0300001"}

    asyncio.run(main())
