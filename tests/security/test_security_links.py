"""Sealed frames between real kit and centre processes, over emulated narrow links."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401

from edge.item import Position, new_item
from security import simkeys
from security.channel import CentreSecurity, Enrolled
from security.state import SecurityState
from sim.harness import KIT_ID, centre, centre_items, free_port, kit
from sim.linkemu import LinkConditions
from sim.linkrelay import DatagramRelay
from uplink.frames import decode_frame

ACKNOWLEDGED = 2


def beidou_link(address: tuple[str, int], *, min_interval: float = 0.3, ack: float = 8) -> str:
    return (
        f'[[links]]\nkind = "datagram"\nname = "beidou"\ngateway = "{address[0]}:{address[1]}"\n'
        f"mtu = 77\nmin_interval = {min_interval}\nrate = 300\nrtt = 0.5\nack_timeout = {ack}\n"
        'classes = ["P0", "P1", "P2"]\n'
    )


async def until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.mark.parametrize("profile", ["default", "national"])
def test_reports_and_an_sos_cross_a_lossy_beidou_link_sealed_in_both_profiles(
    tmp_path: Path, profile: str
) -> None:
    async def main() -> None:
        gw_port = free_port(socket.SOCK_DGRAM)
        gateway = (
            f'[[gateways]]\nname = "beidou"\nkind = "udp"\nlisten = "127.0.0.1:{gw_port}"\n'
            "mtu = 77\nmissing_after_s = 2\n"
        )
        conditions = LinkConditions(rate=300, rtt=0.5, loss=0.05, mtu=77, min_interval=0.3)
        async with (
            centre(tmp_path, udp_gateways=[gateway], profile=profile) as (_, data),
            DatagramRelay(
                ("127.0.0.1", 0), ("127.0.0.1", gw_port), conditions, name="beidou", seed=4
            ) as relay,
            kit(tmp_path, beidou_link(relay.address), profile=profile) as k,
        ):
            filed = [
                (
                    await k.edge.accept(
                        new_item("sos", source="button", position=Position(31.0, 103.4))
                    )
                )["seq"]
            ]
            for i in range(4):
                item = new_item("situation", source="web", text=f"{i}号桥梁冲毁，车辆无法通行")
                filed.append((await k.edge.accept(item))["seq"])
            done = await until(
                lambda: all(k.kit_states().get(s) == ACKNOWLEDGED for s in filed), 60
            )
            stored = centre_items(data)
        log = (tmp_path / "uplink.log").read_text()
        assert done, log[-2000:]
        assert set(filed) <= set(stored) and all(stored[s][0] >= 1 for s in filed)
        assert relay.stats.up.messages_delivered > 0 and relay.stats.down.messages_delivered > 0
        state = SecurityState(data / "security.sqlite3")
        try:
            refused = state.audit_rows("frame-refused")
            # Only a lost ACK's re-send may come twice; nothing is forged or unknown.
            assert {r[1] for r in refused} <= {"replay"}, refused
        finally:
            state.close()

    try:
        run(main(), timeout=120)
    finally:
        # The edge client's process-wide ZeroMQ context keeps its I/O threads' fds open.
        zmq.asyncio.Context.instance().term()


def test_a_kit_killed_again_and_again_while_sending_never_reuses_a_sequence(
    tmp_path: Path,
) -> None:
    """Nobody answers, so SOS items go out again and again; the uplink is SIGKILLed 6 times."""

    async def main() -> None:
        received: dict[tuple[int, int], set[bytes]] = defaultdict(set)
        arrivals: list[int] = []  # message sequences in the order they arrived
        kills: list[int] = []  # len(arrivals) at each kill
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()

        async def listen() -> None:
            while True:
                data = await loop.sock_recv(sock, 2048)
                frame = decode_frame(data)
                received[(frame.msg_seq, frame.index)].add(data)
                arrivals.append(frame.msg_seq)

        listener = asyncio.create_task(listen())
        try:
            link = beidou_link(sock.getsockname(), min_interval=0.02, ack=1)
            async with kit(tmp_path, link) as k:
                for i in range(6):  # P0: sent again on every restart until acknowledged
                    sos = new_item("sos", source=f"mesh:!0000000{i}", text=f"第{i}号求救" * 6)
                    await k.edge.accept(sos)
                config = tmp_path / "kit.toml"
                for _ in range(6):
                    before = len(received)
                    await until(lambda before=before: len(received) >= before + 3, 20)
                    uplink = k.procs[1]
                    uplink.send_signal(signal.SIGKILL)
                    await uplink.wait()
                    await asyncio.sleep(0.05)  # a datagram still in the loopback queue
                    kills.append(len(arrivals))
                    k.procs[1] = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "edge.cli",
                        "uplink",
                        "--config",
                        str(config),
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                await until(lambda: len(arrivals) >= kills[-1] + 2 and len(received) >= 30, 20)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            sock.close()
        reused = {key: len(v) for key, v in received.items() if len(v) > 1}
        assert len(received) >= 30 and reused == {}
        # Each restarted uplink sends only above everything sent before the kill: it
        # starts past the durable block its predecessor had reserved.
        for at in kills:
            before, after = arrivals[:at], arrivals[at:]
            assert before and after and min(after) > max(before)
        # Every frame is sealed by the kit's key, as the centre would check.
        centre_end = CentreSecurity(
            {"default": simkeys.centre_pair("default")},
            {
                KIT_ID: Enrolled(
                    simkeys.kit_pair(KIT_ID, "default").profile,
                    simkeys.kit_pair(KIT_ID, "default").public,
                )
            },
            SecurityState(tmp_path / "check.sqlite3"),
        )
        try:
            for copies in received.values():
                (data,) = copies
                assert decode_frame(data, sealer=centre_end).kit_id == KIT_ID
        finally:
            centre_end.close()

    try:
        run(main(), timeout=150)
    finally:
        zmq.asyncio.Context.instance().term()
