"""Power saving in the uplink: bulk (P4) waits while the power policy says save."""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq.asyncio

from config.loader import parse
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.item import Priority
from uplink.kinds.datagram import Config, make
from uplink.process import SAVE_POLL_FACTOR, _follow_power
from uplink.runner import Uplink


def test_save_mode_pauses_bulk_and_slows_polling_until_normal(tmp_path: Path) -> None:
    path = tmp_path / "kit.toml"
    path.write_text(
        '[kit]\nid = 3\nname = "k"\n[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        "[uplink]\npoll_s = 0.5\n"
    )
    config = parse(path)
    config.paths.runtime_dir.mkdir(parents=True)
    link = make(Config(kind="datagram", name="vsat", gateway="127.0.0.1:9", mtu=1200, rate=1e6))
    link._online = True
    edge = AsyncEdgeClient("ipc:///nonexistent", timeout_s=0.1)
    uplink = Uplink(3, [link], edge, config.paths.data_dir, config.media_dir, poll_s=0.5)

    async def main() -> list[tuple[frozenset[Priority], float]]:
        ctx = zmq.asyncio.Context.instance()
        proxy = asyncio.create_task(
            bus.run_proxy(ctx, config.endpoint(bus.PUB_SOCKET), config.endpoint(bus.SUB_SOCKET))
        )
        follower = asyncio.create_task(_follow_power(config, uplink))
        pub = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
        seen = []
        try:
            for mode in ("save", "critical", "normal"):
                change = topics.PowerModeChanged(mode, 20.0, "test")
                for _ in range(100):  # until the subscription has reached the proxy
                    await pub.publish(topics.POWER_MODE, change)
                    await asyncio.sleep(0.02)
                    if (Priority.P4 in uplink.paused) == (mode != "normal"):
                        break
                seen.append((uplink.view(link).classes, uplink.poll_s))
        finally:
            pub.close()
            for task in (follower, proxy):
                task.cancel()
            await asyncio.gather(follower, proxy, return_exceptions=True)
            await edge.close()
        return seen

    seen = asyncio.run(main())
    everything = frozenset(Priority)
    assert seen == [
        (everything - {Priority.P4}, 0.5 * SAVE_POLL_FACTOR),
        (everything - {Priority.P4}, 0.5 * SAVE_POLL_FACTOR),
        (everything, 0.5),
    ]
