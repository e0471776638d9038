"""The link emulator, the TCP relay and scenario files, in accelerated real time."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import struct
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from sim.linkemu import (
    EmulatedLink,
    FrameTooLarge,
    LinkConditions,
    LinkDown,
    ScaledClock,
    SentTooSoon,
)
from sim.linkrelay import LinkRelay
from sim.scenario import LinkKind, ScenarioError, build_links, load_scenario

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)
SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "scenarios"
VSAT = LinkConditions(
    rate=250_000, rate_down=1_250_000, rtt=0.6, loss=0.01, mtu=1500, buffer=262_144
)


def run(main: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(main, timeout))


async def drained(link: EmulatedLink, clock: ScaledClock, limit: float) -> None:
    """Wait (in emulated time, at most ``limit`` s) until no frame is buffered or in flight."""
    deadline = clock.now() + limit
    while link.kit.stats.messages_pending or link.centre.stats.messages_pending:
        assert clock.now() < deadline, "frames still pending"
        await clock.sleep_until(clock.now() + 0.05)


# --- the in-process link ---------------------------------------------------------------


def test_rate_is_honoured_in_accelerated_time() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=20)
        arrivals: list[float] = []
        async with EmulatedLink(VSAT.model_copy(update={"loss": 0.0}), clock=clock) as link:
            link.centre.on_receive = lambda _frame: arrivals.append(clock.now())
            start = clock.now()
            for _ in range(2000):
                await link.kit.send(bytes(1500))
            await drained(link, clock, 30)
        throughput = 1999 * 1500 / (arrivals[-1] - arrivals[0])
        assert throughput == pytest.approx(250_000, rel=0.03)
        # 3 MB at 250 kB/s, plus half the round trip.
        assert arrivals[-1] - start == pytest.approx(12.0 + 0.3, rel=0.03)

    run(main())


def test_ten_megabytes_cross_a_lossy_satellite_link_at_close_to_line_rate() -> None:
    """2 Mbit/s up, 600 ms RTT, 1 % loss both ways: 40 emulated seconds in about 4 real.

    The emulated clock runs at ×10, not faster: the sender's own work must fit in the
    scaled time even on a busy machine, or the figure measures the machine, not the link.
    """
    data = hashlib.shake_256(b"drone clip").digest(10_000_000)
    payload = 1400
    chunks = [data[i : i + payload] for i in range(0, len(data), payload)]

    async def main() -> None:
        clock = ScaledClock(speed=10)
        received: dict[int, bytes] = {}
        async with EmulatedLink(VSAT, clock=clock, seed=3) as link:

            async def centre() -> None:
                while True:
                    frame = await link.centre.recv()
                    received[struct.unpack_from("!I", frame, 4)[0]] = frame[8:]
                    await link.centre.send(frame[:8])

            acker = asyncio.create_task(centre())
            start = clock.now()
            try:
                await send_reliably(link, chunks, clock)
            finally:
                acker.cancel()
                await asyncio.gather(acker, return_exceptions=True)
            elapsed = clock.now() - start
        assert b"".join(received[i] for i in range(len(chunks))) == data
        assert link.kit.stats.messages_lost > 40
        assert 0.85 * 250_000 < len(data) / elapsed < 250_000

    run(main(), timeout=40)


async def send_reliably(link: EmulatedLink, chunks: list[bytes], clock: ScaledClock) -> None:
    """Selective repeat: the link keeps order, so a later ack reveals every earlier loss."""
    acked = [False] * len(chunks)
    missing = len(chunks)
    outstanding: deque[tuple[int, int]] = deque()  # (transmission, chunk) in send order
    resend: deque[int] = deque()
    progress = asyncio.Event()

    def on_ack(frame: bytes) -> None:
        nonlocal missing
        transmission, index = struct.unpack("!II", frame)
        while outstanding and outstanding[0][0] <= transmission:
            earlier, lost = outstanding.popleft()
            if earlier < transmission and not acked[lost]:
                resend.append(lost)
        if not acked[index]:
            acked[index] = True
            missing -= 1
        progress.set()

    link.kit.on_receive = on_ack
    transmission = next_new = 0
    while missing:
        if resend:
            index = resend.popleft()
            if acked[index]:
                continue
        elif next_new < len(chunks):
            index, next_new = next_new, next_new + 1
        else:
            # Only the tail is unacknowledged: wait a round trip, then send it again.
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), 2 * VSAT.rtt / clock.speed)
            except TimeoutError:
                resend.extend(i for _, i in outstanding if not acked[i])
                outstanding.clear()
            continue
        outstanding.append((transmission, index))
        await link.kit.send(struct.pack("!II", transmission, index) + chunks[index])
        transmission += 1


def test_each_way_takes_half_the_rtt_and_jitter_never_reorders() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=10)
        conditions = LinkConditions(rate=1e9, rtt=0.6, jitter=0.05)
        delays: list[float] = []
        order: list[int] = []
        async with EmulatedLink(conditions, clock=clock, seed=1) as link:

            def arrived(frame: bytes) -> None:
                order.append(int.from_bytes(frame, "big"))
                delays.append(clock.now() - sent[-1])

            link.centre.on_receive = arrived
            sent: list[float] = []
            for i in range(40):
                sent.append(clock.now())
                await link.kit.send(i.to_bytes(2, "big"))
                await clock.sleep_until(sent[-1] + 0.4)
            # A burst: jitter larger than the spacing must still keep the order.
            link.centre.on_receive = lambda frame: order.append(int.from_bytes(frame, "big"))
            for i in range(40, 240):
                await link.kit.send(i.to_bytes(2, "big"))
            await drained(link, clock, 5)

            echo_at: list[float] = []
            link.centre.on_receive = None
            link.kit.on_receive = lambda _frame: echo_at.append(clock.now())
            start = clock.now()
            await link.kit.send(b"ping")
            await link.centre.send(await link.centre.recv())
            await drained(link, clock, 5)
        # Emulated timestamps are late by the loop's wake-up latency, never early.
        assert min(delays) >= 0.25 and max(delays) < 0.35 + 0.1
        assert statistics.mean(delays) == pytest.approx(0.3, abs=0.02)
        assert order == list(range(240))
        assert 0.6 <= echo_at[0] - start < 0.6 + 0.1

    run(main())


def test_loss_rate_is_statistically_right_over_many_frames() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=1)
        received: list[bytes] = []
        async with EmulatedLink(LinkConditions(rate=1e9, loss=0.05), clock=clock, seed=11) as link:
            link.centre.on_receive = received.append
            for i in range(20_000):
                await link.kit.send(i.to_bytes(4, "big"))
            await drained(link, clock, 10)
        stats = link.kit.stats
        # Binomial(20,000, 0.05): mean 1,000, standard deviation 31; allow 4.5 of them.
        assert 860 < stats.messages_lost < 1140
        assert stats.messages_delivered + stats.messages_lost == stats.messages_sent == 20_000
        assert len(received) == stats.messages_delivered
        assert stats.bytes_lost == 4 * stats.messages_lost

    run(main())


def test_frame_above_the_mtu_is_refused_with_an_exact_message() -> None:
    async def main() -> None:
        conditions = LinkConditions(rate=80, mtu=78, buffer=78, min_interval=60)
        async with EmulatedLink(conditions, name="beidou") as link:
            with pytest.raises(FrameTooLarge) as refused:
                await link.kit.send(bytes(79))
            await link.kit.send(bytes(78))
        assert str(refused.value) == (
            "帧长 79 字节，超过链路 beidou 的 MTU 78 字节 / "
            "a 79-byte frame exceeds the 78-byte MTU of link 'beidou'"
        )
        assert isinstance(refused.value, ValueError)
        assert link.kit.stats.messages_sent == 1

    run(main())


def test_beidou_refuses_a_second_message_within_its_sixty_second_interval() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=100)
        conditions = LinkConditions(
            rate=80, rtt=4, mtu=78, buffer=78, min_interval=60, cost_per_message=0.1
        )
        async with EmulatedLink(conditions, name="beidou", clock=clock) as link:
            start = clock.now()
            await link.kit.send(b"SOS 1")
            await link.centre.send(b"ack")  # the centre's card has its own interval
            await clock.sleep_until(start + 12.5)
            with pytest.raises(SentTooSoon) as early:
                await link.kit.send(b"SOS 2")
            await clock.sleep_until(start + 60.5)
            await link.kit.send(b"SOS 2")  # the refused attempt did not restart the wait
            await drained(link, clock, 10)
        assert str(early.value) == (
            "链路 beidou 频率未到：最小间隔 60 秒，还需等待 48 秒 / "
            "too soon on link 'beidou': minimum interval 60 s, wait 48 s more"
        )
        assert early.value.wait == pytest.approx(47.5, abs=0.3)
        assert link.kit.stats.messages_delivered == 2
        assert link.cost == pytest.approx(0.3)

    run(main())


def test_outage_loses_frames_in_flight_and_refuses_new_ones() -> None:
    async def main() -> None:
        clock = ScaledClock(speed=20)
        conditions = LinkConditions(rate=1_000, rtt=10, buffer=2_000, cost_per_message=1)
        received: list[bytes] = []
        async with EmulatedLink(conditions, name="vsat", clock=clock) as link:
            link.centre.on_receive = received.append
            start = clock.now()
            # 1 s on air each and two fit the buffer: at 2.5 s two are on the wire,
            # one on air, one buffered and a fifth sender is waiting for room.
            for _ in range(4):
                await link.kit.send(bytes(1000))
            waiting = asyncio.create_task(link.kit.send(bytes(1000)))
            await clock.sleep_until(start + 2.5)
            link.set_online(False)
            with pytest.raises(LinkDown):
                await waiting
            with pytest.raises(LinkDown) as down:
                await link.kit.send(b"report")
            await clock.sleep_until(start + 6)
            assert received == []
            link.set_online(True)
            await link.kit.send(b"report")
            await drained(link, clock, 6)
        assert str(down.value) == "链路 vsat 已中断，帧未发出 / link 'vsat' is down; frame not sent"
        assert received == [b"report"]
        stats = link.kit.stats
        assert (stats.messages_sent, stats.messages_lost, stats.bytes_lost) == (5, 4, 4000)
        assert stats.cost == 3  # the two on the wire and the report; not the rest

    run(main())


def test_scenario_schedule_flips_links_at_the_right_emulated_times(tmp_path: Path) -> None:
    outages = [[30, 60], [90, 120], [150, 180], [210, 240], [270, 300]]
    path = tmp_path / "five.toml"
    path.write_text(
        f'[[links]]\nname = "vsat"\nkind = "ip"\nrate = 250_000\nrtt = 0.6\noutages = {outages}\n'
        '[[links]]\nname = "beidou"\nkind = "beidou"\nrate = 80\nmtu = 78\nmin_interval = 60\n'
    )

    async def main() -> None:
        clock = ScaledClock(speed=100)
        links = build_links(load_scenario(path), clock)
        flips: list[tuple[float, bool]] = []
        probes: list[tuple[float, bool]] = []
        vsat = links["vsat"]
        origin = clock.now()
        vsat.on_online = lambda online: flips.append((clock.now() - origin, online))
        for link in links.values():
            await link.start(at=origin)
        try:
            for second in range(0, 305, 5):
                await clock.sleep_until(origin + second + 2)
                try:
                    await vsat.kit.send(b"probe")
                    probes.append((second + 2, True))
                except LinkDown:
                    probes.append((second + 2, False))
            assert links["beidou"].online
        finally:
            for link in links.values():
                await link.close()
        expected = [
            (float(t), up) for down, back in outages for t, up in ((down, False), (back, True))
        ]
        assert [up for _, up in flips] == [up for _, up in expected]
        for (at, _), (want, _) in zip(flips, expected, strict=True):
            assert at == pytest.approx(want, abs=1.0)
        assert probes == [(t, not any(a <= t < b for a, b in outages)) for t, _ in probes]

    run(main())


# --- the TCP relay ----------------------------------------------------------------------


@asynccontextmanager
async def http_server(delay: float = 0.0) -> AsyncIterator[tuple[str, int]]:
    """A real aiohttp server: GET /bytes/N answers N bytes after ``delay`` seconds."""

    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(body=bytes(int(request.match_info["n"])))

    app = web.Application()
    app.router.add_get("/bytes/{n}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield host, port
    finally:
        await runner.cleanup()


async def fetch(address: tuple[str, int], n: int) -> tuple[bytes, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address[0]}:{address[1]}/bytes/{n}") as response,
    ):
        body = await response.read()
    return body, loop.time() - start


def test_relay_forwards_http_with_added_delay_and_rate() -> None:
    async def main() -> None:
        conditions = LinkConditions(rate=50_000, rate_down=200_000, rtt=0.4)
        async with (
            http_server() as target,
            LinkRelay(("127.0.0.1", 0), target, conditions) as relay,
        ):
            _, direct = await fetch(target, 100_000)
            body, relayed = await fetch(relay.address, 100_000)
        assert body == bytes(100_000)
        # A round trip for request and answer, plus 100 kB at 200 kB/s.
        assert 0.4 + 0.5 <= relayed < direct + 0.4 + 0.5 + 0.4
        assert relay.stats.bytes_down > 100_000 and relay.stats.resets == 0

    run(main())


def test_parallel_connections_share_the_links_rate() -> None:
    async def main() -> None:
        conditions = LinkConditions(rate=1_000_000, rate_down=200_000, rtt=0.05)
        async with (
            http_server() as target,
            LinkRelay(("127.0.0.1", 0), target, conditions) as relay,
        ):
            loop = asyncio.get_running_loop()
            start = loop.time()
            results = await asyncio.gather(*(fetch(relay.address, 100_000) for _ in range(3)))
            elapsed = loop.time() - start
        assert all(body == bytes(100_000) for body, _ in results)
        # One link: 300 kB at 200 kB/s take 1.5 s however many connections carry them.
        assert elapsed >= 1.4

    run(main())


def test_relay_stalls_through_a_short_outage_and_resets_on_a_long_one() -> None:
    async def main() -> None:
        conditions = LinkConditions(rate=1e6, rtt=0.1)
        async with (
            http_server(delay=0.2) as target,
            LinkRelay(("127.0.0.1", 0), target, conditions, reset_after=0.5) as relay,
        ):
            clock = relay.clock
            short = asyncio.create_task(fetch(relay.address, 10))
            await clock.sleep_until(clock.now() + 0.15)
            relay.set_online(False)
            await clock.sleep_until(clock.now() + 0.4)
            relay.set_online(True)
            body, elapsed = await short
            assert body == bytes(10) and 0.55 <= elapsed < 1.2
            assert relay.stats.resets == 0

            start = clock.now()
            long = asyncio.create_task(fetch(relay.address, 10))
            await clock.sleep_until(start + 0.15)
            relay.set_online(False)
            with pytest.raises(aiohttp.ClientConnectionError):
                await long
            assert 0.6 <= clock.now() - start < 1.0
            with pytest.raises(aiohttp.ClientConnectionError):
                await fetch(relay.address, 10)  # still down: refused at once
            relay.set_online(True)
            body, _ = await fetch(relay.address, 10)
            assert body == bytes(10)
        # aiohttp retries a reset GET once, so count connections rather than requests.
        assert relay.stats.resets >= 2
        assert relay.stats.connections == relay.stats.resets + 2

    run(main())


def test_relay_close_ends_every_task_and_socket() -> None:
    async def main() -> None:
        async with http_server() as target:
            relay = LinkRelay(("127.0.0.1", 0), target, LinkConditions(rate=1e6))
            await relay.start()
            address = relay.address
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            relay.set_online(False)  # leave a connection stalled mid-stream
            writer.write(b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n")
            await relay.close()
            assert not [t for t in asyncio.all_tasks() if "LinkRelay" in repr(t.get_coro())]
            with pytest.raises(ConnectionResetError):
                while await reader.read(1024):
                    pass
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*address)

    run(main())


# --- scenario files ---------------------------------------------------------------------


def test_example_scenario_has_vsat_beidou_and_mesh() -> None:
    scenario = load_scenario(SCENARIOS / "flapping.toml")
    links = {link.name: link for link in scenario.links}
    assert [link.kind for link in links.values()] == [LinkKind.IP, LinkKind.BEIDOU, LinkKind.MESH]
    assert (links["vsat"].rtt, links["vsat"].outages[0]) == (0.6, (120.0, 150.0))
    assert (links["beidou"].mtu, links["beidou"].min_interval) == (78, 60.0)
    assert links["mesh"].mtu == 233


def test_scenario_loader_reports_every_typo_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'seeed = 1\n[[links]]\nname = "vsat"\nkind = "ip"\nrate = 250_000\nrtte = 0.6\n'
        '[[links]]\nname = "mesh"\nkind = "lora"\nrate = 100\nloss = 5\n'
        '[[links]]\nname = "bd"\nkind = "beidou"\nrate = 80\nmtu = 2000\n'
        "outages = [[10, 20], [15, 30]]\n"
    )
    with pytest.raises(ScenarioError) as bad:
        load_scenario(path)
    assert isinstance(bad.value, ValueError)
    assert bad.value.problems == [
        ("links[0].rtte", "未知的键 / unknown key"),
        (
            "links[1].kind",
            "Input should be 'ip', 'tiantong_data', 'tiantong_sms', 'beidou' or 'mesh'",
        ),
        ("links[1].loss", "Input should be less than or equal to 1"),
        ("links[2].mtu", "a beidou link carries at most 1750 bytes per frame"),
        ("links[2].outages", "outage [15, 30] overlaps or precedes the one before"),
        ("seeed", "未知的键 / unknown key"),
    ]
    assert str(bad.value).startswith(
        f"场景文件 {path} 有 6 处错误 / scenario file {path} has 6 error(s):\n"
        "  links[0].rtte: 未知的键 / unknown key\n"
    )


def test_scenario_loader_reports_toml_syntax_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[links]]\nname = "vsat\n')
    with pytest.raises(ScenarioError, match=r"TOML syntax error: .*line 2"):
        load_scenario(path)
