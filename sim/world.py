"""The world around the kits for `kit sim`: satellites, a team, a drone, a battery, a centre.

Every kit runs as it would on a Pi — `kit run`, the real backend, its devices on serial
ports and sockets — and everything outside the box is simulated here and speaks the real
protocols: each kit's Beidou terminal, Tiantong modem and GNSS receiver on a pty, its
Meshtastic radio on TCP with a team of handhelds, its battery as a sysfs folder, a drone
pushing MPEG-TS, its IP links through rate-limited relays. The command centre is the real
`kit centre` with its own Beidou terminal and SMS modem (simulated as well).

The scenario's clock runs ``speed`` times faster than real time: outages, events and the
simulated devices' timings (a Beidou card's service interval, delivery delays) follow it.
The kits themselves keep real time, which is what they would see; at high speed a card
that allows one message a minute of scenario time allows one every 60/speed seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from drivers.beidou import user_id
from drivers.smspdu import Submit
from security import simkeys
from sim.beidou import SimCard, SimulatedTerminal, Transmission
from sim.beidou import Timing as BeidouTiming
from sim.drone import SimDrone
from sim.faults import FrameFaults
from sim.gnss import SimulatedReceiver
from sim.linkemu import ScaledClock
from sim.linkrelay import LinkRelay
from sim.meshnet import MeshNet
from sim.meshradio import Member, SimulatedRadio
from sim.power import SimBattery, SysfsTree
from sim.scenario import Action, EventSpec, KitSpec, LinkKind, LinkSpec, Scenario
from sim.tiantong import SimulatedModem, SmsCentre, normalise

log = logging.getLogger("kit.sim")

CENTRE_CARD = "0300001"  # the centre's Beidou command card
CENTRE_NUMBER = "+8617400000000"  # the centre's Tiantong SMS modem
MESH_GATEWAY = "mesh"  # the centre's gateway for frames kits relay over LoRa
TEAM_NAMES = (
    ("张队长", "ZDZ"),
    ("李医生", "LYS"),
    ("王搜救", "WSJ"),
    ("赵通信", "ZTX"),
    ("刘消防", "LXF"),
    ("陈担架", "CDJ"),
)
TEAM_EVERY_S = 60.0  # scenario seconds between a member's position reports
STOP_GRACE_S = 15.0
PROFILE = "default"  # the drill's cryptographic profile
# Each link kind's default ack timeout (scenario seconds), and the least it is given in
# real seconds however fast the scenario runs (a real round trip still takes that long).
ACK_TIMEOUT_S = {
    LinkKind.IP: 60.0,
    LinkKind.TIANTONG_DATA: 60.0,
    LinkKind.BEIDOU: 300.0,
    LinkKind.TIANTONG_SMS: 180.0,
    LinkKind.MESH: 300.0,
}
ACK_FLOOR_S = {
    LinkKind.IP: 5.0,
    LinkKind.TIANTONG_DATA: 5.0,
    LinkKind.BEIDOU: 3.0,
    LinkKind.TIANTONG_SMS: 5.0,
    LinkKind.MESH: 10.0,
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LinkTally:
    """What one link of one kit carried, counted by the world (kit → centre)."""

    messages: int = 0
    bytes: int = 0
    lost: int = 0


@dataclass
class SimKit:
    """One kit of the world: its folder, its `kit run`, and the devices around it."""

    spec: KitSpec
    kit_id: int
    root: Path
    links: list[LinkSpec]
    proc: asyncio.subprocess.Process | None = None
    terminal: SimulatedTerminal | None = None
    card: str = ""
    modem: SimulatedModem | None = None
    number: str = ""
    receiver: SimulatedReceiver | None = None
    radio: SimulatedRadio | None = None
    battery: SimBattery | None = None
    sysfs: SysfsTree | None = None
    drone: SimDrone | None = None
    drone_port: int = 0
    relays: dict[str, LinkRelay] = field(default_factory=dict)
    tally: dict[str, LinkTally] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # links in an outage now
    frame_port: int = 0
    web_port: int = 0
    web_password: str = ""
    team: list[Member] = field(default_factory=list)
    reboots: int = 0
    faults: dict[tuple[str, str], FrameFaults] = field(default_factory=dict)  # (link, way)

    @property
    def config(self) -> Path:
        return self.root / "kit.toml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.root / 'run' / 'edge'}.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "kit.log"


class CountingSmsCentre(SmsCentre):
    """The SMS centre, counting what each number sends (the operator's bill)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.sent: dict[str, LinkTally] = {}
        # A rough link's duplication and reordering, by the kit's number (either way).
        self.faults: dict[tuple[str, str], FrameFaults] = {}

    def submit(self, sender: str, submit: Submit) -> None:
        tally = self.sent.setdefault(sender, LinkTally())
        tally.messages += 1
        payload = submit.segment.payload
        tally.bytes += len(payload.encode() if isinstance(payload, str) else payload)
        faults = self.faults.get((normalise(sender), "up")) or self.faults.get(
            (normalise(submit.dest), "down")
        )
        if faults is None:
            super().submit(sender, submit)
        else:
            faults.pass_on(lambda: super(CountingSmsCentre, self).submit(sender, submit))


class World:
    """The centre, the kits and everything around them, for one run of a scenario."""

    def __init__(
        self,
        scenario: Scenario,
        root: Path,
        *,
        speed: float | None = None,
        kits: int | None = None,
        drone: bool | None = None,
    ) -> None:
        self.scenario = scenario
        self.root = root
        self.speed = speed if speed is not None else scenario.speed
        self.clock = ScaledClock(self.speed)
        self.rng = random.Random(scenario.seed)
        specs = scenario.world_kits()
        if kits is not None and kits > len(specs):
            # More kits than the file lists: copies of the last one, a little apart.
            last = specs[-1]
            used = {s.id for s in specs}
            for n in range(len(specs), kits):
                kid = max(i for i in used if i is not None) + 1
                used.add(kid)
                specs.append(
                    last.model_copy(
                        update={"name": f"kit-{n + 1}", "id": kid, "lat": last.lat + 0.01 * n}
                    )
                )
        elif kits is not None:
            specs = specs[:kits]
        if drone is not None:
            specs = [s.model_copy(update={"drone": drone}) for s in specs]
        self.kits = [
            SimKit(s, int(s.id or 0), root / s.name, scenario.links_of(s.name)) for s in specs
        ]
        self.centre_dir = root / "centre"
        self.centre_port = free_port()
        self.operator_password = ""  # the drill's dashboard login (there is no default)
        self.centre_proc: asyncio.subprocess.Process | None = None
        self.centre_terminal: SimulatedTerminal | None = None
        self.sms_centre: CountingSmsCentre | None = None
        self.centre_modem: SimulatedModem | None = None
        self.mesh: MeshNet | None = None
        self.origin = 0.0
        self.started_wall = time.time()
        self.events_done: list[tuple[float, EventSpec, str]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: list[Callable[[], object]] = []

    @property
    def centre_url(self) -> str:
        return f"http://127.0.0.1:{self.centre_port}"

    @property
    def centre_db(self) -> Path:
        return self.centre_dir / "centre.sqlite3"

    def now(self) -> float:
        """Scenario seconds since the start."""
        return self.clock.now() - self.origin

    def kit(self, name: str) -> SimKit:
        if not name:
            return self.kits[0]
        return next(k for k in self.kits if k.spec.name == name)

    def kinds(self) -> set[LinkKind]:
        return {link.kind for k in self.kits for link in k.links}

    # --- life ----------------------------------------------------------------------

    async def start(self) -> None:
        """Devices first, then the centre, then the kits; then the clock starts."""
        self.root.mkdir(parents=True, exist_ok=True)
        for k in self.kits:
            (k.root / "dev").mkdir(parents=True, exist_ok=True)
        await self._start_centre_devices()
        await self._start_centre()
        for k in self.kits:
            await self._start_devices(k)
        self._start_mesh()
        for k in self.kits:
            k.web_port = k.web_port or free_port()
            k.config.write_text(self.kit_config(k), encoding="utf-8")
            await self._set_password(k)
            await self._start_kit(k)
        await asyncio.gather(*(self._ready(k) for k in self.kits))
        self.origin = self.clock.now()
        self.started_wall = time.time()
        for k in self.kits:
            for spec in k.links:
                self._arm_outages(k, spec)
            for relay in k.relays.values():
                await relay.start(at=self.origin)
        if self.mesh is not None:
            await self.mesh.start()
            self._closers.append(self.mesh.close)
        for event in self.scenario.events:
            self._timers.append(self.clock.call_at(self.origin + event.at, self._fire(event)))
        for k in self.kits:
            if k.team:
                self._spawn(self._team_walks(k))
            if k.spec.drone:
                await self._drone(k, True)

    async def close(self) -> None:
        """Stop everything this world started, kits first; leave nothing running."""
        for timer in self._timers:
            timer.cancel()
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop_kit(k) for k in self.kits), return_exceptions=True)
        if self.centre_proc is not None:
            await _stop(self.centre_proc, signal.SIGTERM)
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                result = closer()
                if asyncio.iscoroutine(result):
                    await result

    async def __aenter__(self) -> World:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the centre ----------------------------------------------------------------

    async def _start_centre_devices(self) -> None:
        dev = self.root / "centre-dev"
        dev.mkdir(parents=True, exist_ok=True)
        kinds = self.kinds()
        if LinkKind.BEIDOU in kinds:
            self.centre_terminal = SimulatedTerminal(
                card=SimCard(user_id=CENTRE_CARD, interval_s=1, comm_level=4),
                timing=self._beidou_timing(4.0),
                link=dev / "beidou",
                peer=self._beidou_down,
            )
            await self.centre_terminal.start()
            self._closers.append(self.centre_terminal.close)
        if LinkKind.TIANTONG_SMS in kinds:
            self.sms_centre = CountingSmsCentre(speed=self.speed, delivery_s=5.0)
            self.centre_modem = SimulatedModem(
                CENTRE_NUMBER, centre=self.sms_centre, link=dev / "tiantong", speed=self.speed
            )
            await self.centre_modem.start()
            self._closers.append(self.sms_centre.close)
            self._closers.append(self.centre_modem.close)

    async def _start_centre(self) -> None:
        self.centre_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f'listen = "127.0.0.1:{self.centre_port}"',
            f'data_dir = "{self.centre_dir}"',
        ]
        # Simulation-only keys (security/simkeys.py): the drill's kits are enrolled as a
        # provisioned kit would be, with its public key and profile.
        simkeys.install_centre(self.centre_dir / "keys", PROFILE)
        # A fresh dashboard login for the drill, as `kit centre operator add` makes one.
        from config.web.auth import Users

        self.operator_password = secrets.token_urlsafe(9)
        Users(self.centre_dir / "dashboard" / "operators.json").set(
            "operator", self.operator_password
        )
        for k in self.kits:
            lines += ["[[kits]]", f"kit_id = {k.kit_id}", f'name = "{k.spec.name}"']
            lines += simkeys.enrol_lines(k.kit_id, PROFILE)
        if self.centre_terminal is not None:
            lines += [
                "[[gateways]]",
                'name = "beidou"',
                'kind = "beidou"',
                f'device = "{self.centre_terminal.path}"',
                "mtu = 77",  # a kit's civil card (level 3) takes 77 bytes after the marker
            ]
        if self.centre_modem is not None:
            lines += [
                "[[gateways]]",
                'name = "tiantong-sms"',
                'kind = "sms"',
                f'device = "{self.centre_modem.path}"',
                "mtu = 140",
            ]
        if LinkKind.MESH in self.kinds():
            lines += ["[[gateways]]", f'name = "{MESH_GATEWAY}"', 'kind = "relay"', "mtu = 233"]
        config = self.root / "centre.toml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.centre_proc = await _spawn(
            ["centre", "--config", str(config)], self.root / "centre.log", new_session=False
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(
                        self.centre_url + "/v1/acks", headers={"Kit-Id": str(self.kits[0].kit_id)}
                    ) as r:
                        if r.status in (200, 401):  # it answers (401: kits must sign)
                            return
                if self.centre_proc.returncode is not None:
                    raise RuntimeError(
                        "指挥中心未能启动 / the centre did not start:\n"
                        + (self.root / "centre.log").read_text(errors="replace")[-2000:]
                    )
                await asyncio.sleep(0.05)
        raise RuntimeError("指挥中心未应答 / the centre does not answer")

    # --- a kit's devices -----------------------------------------------------------

    def _beidou_timing(self, delivery_s: float) -> BeidouTiming:
        s = self.speed
        return BeidouTiming(
            answer_s=0.2 / s, feedback_s=0.5 / s, delivery_s=delivery_s / s, boot_s=5.0 / s
        )

    async def _start_devices(self, k: SimKit) -> None:
        n = self.kits.index(k)
        seed = self.scenario.seed + 17 * n
        dev = k.root / "dev"
        k.receiver = SimulatedReceiver(start=(k.spec.lat, k.spec.lon), link=dev / "gnss", seed=seed)
        await k.receiver.start()
        self._closers.append(k.receiver.close)
        k.battery = SimBattery(
            percent=k.spec.battery_percent, mains=k.spec.on_mains, speed=self.speed
        )
        k.sysfs = SysfsTree(k.battery, k.root / "sys")
        k.sysfs.update()
        self._spawn(self._battery_ticks(k))
        for spec in k.links:
            k.tally[spec.name] = LinkTally()
            self._frame_faults(k, spec, seed)
            if spec.kind is LinkKind.BEIDOU:
                k.card = f"{241636 + n:07d}"
                k.terminal = SimulatedTerminal(
                    card=SimCard(
                        user_id=k.card, interval_s=max(1, math.ceil(spec.min_interval / self.speed))
                    ),
                    timing=self._beidou_timing(spec.rtt / 2),
                    link=dev / "beidou",
                    peer=self._beidou_up(k, spec),
                    seed=seed,
                )
                await k.terminal.start()
                self._closers.append(k.terminal.close)
            elif spec.kind is LinkKind.TIANTONG_SMS:
                if self.sms_centre is None:  # pragma: no cover - made with the centre's devices
                    raise RuntimeError("no SMS centre")
                k.number = f"+861770000{n + 1:04d}"
                k.modem = SimulatedModem(
                    k.number, centre=self.sms_centre, link=dev / "tiantong", speed=self.speed
                )
                await k.modem.start()
                self._closers.append(k.modem.close)
                for way in ("up", "down"):
                    if (spec.name, way) in k.faults:
                        self.sms_centre.faults[(normalise(k.number), way)] = k.faults[
                            (spec.name, way)
                        ]
            elif spec.kind in (LinkKind.IP, LinkKind.TIANTONG_DATA):
                relay = LinkRelay(
                    ("127.0.0.1", free_port()),
                    ("127.0.0.1", self.centre_port),
                    spec,
                    name=f"{k.spec.name}/{spec.name}",
                    clock=self.clock,
                    outages=spec.schedule(self.scenario.duration),
                    # A flap drops the sessions at once and refuses new ones while it lasts.
                    reset_after=0.0 if spec.flap_s else 20.0,
                    duplicate=spec.duplicate,
                    seed=seed,
                )
                k.relays[spec.name] = relay
                self._closers.append(relay.close)
        relaying = any(s.via == k.spec.name for j in self.kits for s in j.links)
        if k.spec.team or relaying or any(s.kind is LinkKind.MESH for s in k.links):
            k.team = [
                Member(
                    0xA1B2_0000 + 0x100 * n + i + 1,
                    TEAM_NAMES[i % len(TEAM_NAMES)][0],
                    TEAM_NAMES[i % len(TEAM_NAMES)][1],
                    k.spec.lat + 0.002 * math.cos(i),
                    k.spec.lon + 0.002 * math.sin(i),
                    600,
                    90 - 7 * i,
                )
                for i in range(k.spec.team)
            ]
            k.radio = SimulatedRadio(
                0x4B17_0001 + n,
                long_name=f"救援套件 {k.spec.name}",
                short_name=f"K{n + 1}",
                members=list(k.team),
                seed=seed,
            )
            await k.radio.start()
            self._closers.append(k.radio.close)
            k.frame_port = free_port() if any(s.via for s in k.links) else 0
        if k.spec.drone:
            k.drone_port = free_port()

    def _frame_faults(self, k: SimKit, spec: LinkSpec, seed: int) -> None:
        """A narrow link that duplicates or reorders: its faults, one per direction."""
        if spec.kind not in (LinkKind.BEIDOU, LinkKind.TIANTONG_SMS):
            return
        if not (spec.duplicate or spec.reorder):
            return
        # Held back at most two sending intervals (real seconds), then out alone, late.
        hold_s = 2 * max(spec.min_interval, spec.rtt, 1.0) / self.speed
        for n, way in enumerate(("up", "down")):
            faults = FrameFaults(
                loss=spec.loss if way == "up" else 0.0,
                duplicate=spec.duplicate,
                reorder=spec.reorder,
                seed=seed + 1000 * n + len(k.faults),
                hold_s=hold_s,
            )
            k.faults[(spec.name, way)] = faults
            self._closers.append(faults.close)

    def _start_mesh(self) -> None:
        """Kits that relay for each other share one LoRa channel."""
        pairs = [(k, self.kit(s.via), s) for k in self.kits for s in k.links if s.via]
        if not pairs:
            return
        self.mesh = MeshNet(speed=self.speed, seed=self.scenario.seed)
        for k in self.kits:
            if k.radio is not None:
                self.mesh.add(k.radio.num, radio=k.radio)
        for a, b, spec in pairs:
            if a.radio is not None and b.radio is not None:
                self.mesh.join(a.radio.num, b.radio.num, spec.loss)

    # --- the kit's config and process ------------------------------------------------

    def kit_config(self, k: SimKit) -> str:
        """The kit's config file: what a squad would write for this hardware."""
        s = self.speed
        lines = [
            "[kit]",
            f"id = {k.kit_id}",
            f'name = "{k.spec.name}"',
            "[paths]",
            'data_dir = "data"',
            'runtime_dir = "run"',
            "[uplink]",
            "poll_s = 0.2",
            "[gnss]",
            'source = "serial"',
            f'device = "{k.receiver.path if k.receiver else ""}"',
            "baudrate = 9600",
            "[power]",
            'source = "sysfs"',
            f'sysfs_root = "{k.root / "sys"}"',
            'shutdown_command = ["true"]',  # a drill never powers the laptop off
            "[web]",
            f'listen = "127.0.0.1:{k.web_port}"',
            *simkeys.kit_security_lines(k.kit_id, k.data / "keys", PROFILE),
        ]
        if k.radio is not None:
            lines += [
                "[mesh]",
                "enabled = true",
                'connection = "tcp"',
                f"port = {k.radio.port}",
                f"frame_port = {k.frame_port}",
            ]
            if any(s.via == k.spec.name for j in self.kits for s in j.links):
                lines += [f'relay_url = "{self.centre_url}"', f'relay_gateway = "{MESH_GATEWAY}"']
        if k.spec.drone:
            lines += [
                "[[media.sources]]",
                'name = "drone-1"',
                'kind = "udp"',
                f'listen = "127.0.0.1:{k.drone_port}"',
            ]
        for spec in k.links:
            # Timeouts follow the scenario's clock, as they would be set for links this fast.
            wait = max(ACK_FLOOR_S[spec.kind], ACK_TIMEOUT_S[spec.kind] / s)
            common = [
                f'name = "{spec.name}"',
                f"rtt = {max(spec.rtt / s, 0.05):g}",
                f"ack_timeout = {wait:g}",
            ]
            if spec.kind in (LinkKind.IP, LinkKind.TIANTONG_DATA):
                relay = k.relays[spec.name]
                lines += [
                    "[[links]]",
                    'kind = "ip"',
                    *common,
                    f'url = "http://127.0.0.1:{relay.listen[1]}"',
                    f"rate = {spec.rate * s:g}",
                    f"cost_per_byte = {spec.cost_per_byte:g}",
                ]
            elif spec.kind is LinkKind.BEIDOU and k.terminal is not None:
                lines += [
                    "[[links]]",
                    'kind = "beidou"',
                    *common,
                    f'device = "{k.terminal.path}"',
                    f'centre_id = "{CENTRE_CARD}"',
                    f"cost_per_message = {spec.cost_per_message:g}",
                ]
            elif spec.kind is LinkKind.TIANTONG_SMS and k.modem is not None:
                lines += [
                    "[[links]]",
                    'kind = "sms"',
                    *common,
                    f'device = "{k.modem.path}"',
                    f'centre_number = "{CENTRE_NUMBER}"',
                    f"cost_per_message = {spec.cost_per_message:g}",
                ]
            elif spec.kind is LinkKind.MESH and spec.via:
                via = self.kit(spec.via)
                if via.radio is not None:
                    lines += [
                        "[[links]]",
                        'kind = "meshrelay"',
                        *common,
                        f'relay_node = "{via.radio.id}"',
                        f"frame_port = {k.frame_port}",
                        f"speed = {s:g}",
                    ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def web_url(k: SimKit) -> str:
        return f"http://127.0.0.1:{k.web_port}"

    async def _set_password(self, k: SimKit) -> None:
        """A fresh login for the drill's kit page (there is no default password)."""
        k.web_password = secrets.token_urlsafe(9)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            "web-password",
            "--config",
            str(k.config),
            "--stdin",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate(k.web_password.encode() + b"\n")
        if proc.returncode != 0:
            raise RuntimeError(f"kit web-password: {err.decode(errors='replace')}")

    async def _start_kit(self, k: SimKit) -> None:
        k.proc = await _spawn(["run", "--config", str(k.config)], k.log_path, new_session=True)

    async def _ready(self, k: SimKit, timeout_s: float = 60.0) -> None:
        """Until the kit's edge answers and every link has reported (the drill starts then)."""
        from edge.client import AsyncEdgeClient

        want = {spec.name for spec in k.links}
        client = AsyncEdgeClient(k.endpoint, timeout_s=1.0)
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if k.proc is not None and k.proc.returncode is not None:
                    raise RuntimeError(
                        f"套件 {k.spec.name} 未能启动 / kit {k.spec.name} did not start: "
                        + k.log_path.read_text(errors="replace")[-2000:]
                    )
                with contextlib.suppress(Exception):
                    status = await client.call({"op": "status"})
                    if want <= set(status.get("links", {})):
                        return
                await asyncio.sleep(0.2)
            log.warning("%s: links not all reported after %g s", k.spec.name, timeout_s)
        finally:
            await client.close()

    async def _stop_kit(self, k: SimKit, sig: signal.Signals = signal.SIGTERM) -> None:
        if k.proc is not None:
            await _stop(k.proc, sig)

    def kit_processes(self, k: SimKit) -> dict[str, int]:
        """pid of each of the kit's processes now (edge, uplink, drivers, mesh, media, …)."""
        found: dict[str, int] = {}
        marker = str(k.config).encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in argv and b"edge.cli" in argv:
                name = argv[argv.index(b"edge.cli") + 1].decode()
                if name != "run":
                    found[name] = int(pid)
        return found

    async def restart_centre(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """The centre's process dies (SIGKILL: between any two instructions) and comes back."""
        if self.centre_proc is not None:
            await _stop(self.centre_proc, sig)
        await self._start_centre()

    async def reboot(self, k: SimKit) -> None:
        """Power gone for a moment: every process of the kit killed at once, then started."""
        await self._stop_kit(k, signal.SIGKILL)
        k.reboots += 1
        await asyncio.sleep(min(2.0, 10.0 / self.speed))
        await self._start_kit(k)

    # --- links: what the satellites do ---------------------------------------------

    def _beidou_up(self, k: SimKit, spec: LinkSpec) -> Callable[[Transmission], None]:
        faults = k.faults.get((spec.name, "up"))

        def deliver(sent: Transmission) -> None:
            tally = k.tally[spec.name]
            tally.messages += 1
            tally.bytes += len(sent.payload)
            terminal = self.centre_terminal
            if faults is not None and spec.name not in k.down and terminal is not None:
                lost = faults.counts["lost"]
                faults.pass_on(lambda: terminal.receive(sent.sender, sent.payload, dest=sent.dest))
                tally.lost += faults.counts["lost"] - lost
                return
            if spec.name in k.down or self.rng.random() < spec.loss:
                tally.lost += 1
                return
            if terminal is not None:
                terminal.receive(sent.sender, sent.payload, dest=sent.dest)

        return deliver

    def _beidou_down(self, sent: Transmission) -> None:
        """The centre's message to a kit's card (lost while that kit has no sky)."""
        for k in self.kits:
            terminal = k.terminal
            if terminal is not None and user_id(k.card) == user_id(sent.dest):
                if not self._link_down(k, LinkKind.BEIDOU):
                    names = [s.name for s in k.links if s.kind is LinkKind.BEIDOU]
                    faults = k.faults.get((names[0], "down")) if names else None
                    if faults is None:
                        terminal.receive(sent.sender, sent.payload, dest=sent.dest)
                    else:
                        faults.pass_on(
                            partial(terminal.receive, sent.sender, sent.payload, dest=sent.dest)
                        )
                return

    def _link_down(self, k: SimKit, kind: LinkKind) -> bool:
        return any(s.name in k.down for s in k.links if s.kind is kind)

    def _arm_outages(self, k: SimKit, spec: LinkSpec) -> None:
        for down, up in spec.schedule(self.scenario.duration):
            self._timers.append(
                self.clock.call_at(self.origin + down, lambda: self._outage(k, spec, True))
            )
            if math.isfinite(up):
                self._timers.append(
                    self.clock.call_at(self.origin + up, lambda: self._outage(k, spec, False))
                )

    def _outage(self, k: SimKit, spec: LinkSpec, down: bool) -> None:
        """Relays keep their own schedule; the radio links' devices lose the sky here."""
        (k.down.add if down else k.down.discard)(spec.name)
        log.info("%s: %s %s", k.spec.name, spec.name, "down" if down else "up")
        if spec.kind is LinkKind.BEIDOU and k.terminal is not None:
            k.terminal.signal = 0 if down else 4
        elif spec.kind is LinkKind.TIANTONG_SMS and k.modem is not None:
            k.modem.set_signal(0 if down else 20)
        elif spec.kind is LinkKind.MESH and self.mesh is not None and spec.via:
            via = self.kit(spec.via)
            if k.radio is not None and via.radio is not None:
                self.mesh.join(k.radio.num, via.radio.num, 1.0 if down else spec.loss)

    # --- the team, the battery, the drone ------------------------------------------

    async def _team_walks(self, k: SimKit) -> None:
        """Members report where they are every minute of scenario time, moving slowly."""
        step = 0
        while True:
            if k.radio is not None:
                for i, m in enumerate(k.team):
                    if m.lat is None or m.lon is None:
                        continue
                    angle = step / 10 + i
                    lat = k.spec.lat + 0.002 * math.cos(angle) * (1 + i / 3)
                    lon = k.spec.lon + 0.002 * math.sin(angle) * (1 + i / 3)
                    k.radio.position(m.num, lat, lon, m.alt_m)
                    if step % 5 == 0 and m.battery is not None:
                        k.radio.battery(m.num, max(5, m.battery - step // 5))
            step += 1
            await asyncio.sleep(TEAM_EVERY_S / self.speed)

    async def _battery_ticks(self, k: SimKit) -> None:
        while True:
            if k.sysfs is not None:
                k.sysfs.update()
            await asyncio.sleep(1.0)

    async def _drone(self, k: SimKit, on: bool) -> None:
        if on and k.drone is None and k.drone_port:
            k.drone = SimDrone(f"udp://127.0.0.1:{k.drone_port}", self.root / "cache")
            await k.drone.start()
        elif not on and k.drone is not None:
            drone, k.drone = k.drone, None
            await drone.stop()

    # --- events --------------------------------------------------------------------

    def _fire(self, event: EventSpec) -> Callable[[], None]:
        def fire() -> None:
            self._spawn(self._happen(event))

        return fire

    async def _happen(self, event: EventSpec) -> None:
        k = self.kit(event.kit)
        how = ""
        try:
            how = await self._do(k, event)
        except Exception as exc:  # an event that fails is reported, the drill goes on
            how = f"失败 / failed: {exc}"
            log.exception("event %s at %g s failed", event.do, event.at)
        self.events_done.append((self.now(), event, how))

    async def _do(self, k: SimKit, event: EventSpec) -> str:
        text = event.text
        if event.do is Action.SOS:
            if k.radio is not None and k.team:
                member = k.team[0]
                k.radio.text(member.num, text or f"SOS 求救 {event.count or 1}人被困")
                return f"{member.long_name} 经 LoRa / over LoRa"
            await self._accept(k, "sos", text or "SOS", event.count, button=True)
            return "SOS 按钮 / SOS button"
        if event.do is Action.REPORT:
            await self._accept(k, "situation", text or "灾情报告 / situation report", event.count)
            return "网页 / web page"
        if event.do is Action.PHOTO:
            _photo(k.data / "inbox", self.rng)
            return "照片 / photo"
        if event.do is Action.REBOOT:
            await self.reboot(k)
            return "重启 / rebooted"
        if event.do in (Action.MAINS_ON, Action.MAINS_OFF):
            if k.battery is not None:
                k.battery.mains = event.do is Action.MAINS_ON
            return ""
        await self._drone(k, event.do is Action.DRONE_ON)
        return ""

    async def _accept(
        self, k: SimKit, kind: str, text: str, count: int, *, button: bool = False
    ) -> None:
        from edge.client import AsyncEdgeClient
        from edge.item import Position, new_item

        data = {"count": count} if count else {}
        position = Position(k.spec.lat, k.spec.lon)
        item = new_item(
            kind, source="button" if button else "web", text=text, position=position, data=data
        )
        client = AsyncEdgeClient(k.endpoint, timeout_s=5.0)
        try:
            for _ in range(20):
                with contextlib.suppress(Exception):
                    await client.accept(item)
                    return
                await asyncio.sleep(0.5)
            raise RuntimeError("边缘守护进程未应答 / the edge daemon does not answer")
        finally:
            await client.close()


def _photo(inbox: Path, rng: random.Random) -> None:
    """A phone photo (a JPEG with a scene on it) dropped where the media process looks."""
    import cv2
    import numpy as np

    image = np.zeros((480, 640, 3), np.uint8)
    image[:] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    cv2.rectangle(image, (100, 100), (400, 300), (255, 255, 255), -1)
    ok, jpeg = cv2.imencode(".jpg", image)
    if not ok:  # pragma: no cover
        raise RuntimeError("cannot encode a JPEG")
    inbox.mkdir(parents=True, exist_ok=True)
    name = f"photo-{rng.randrange(1 << 30):08x}.jpg"
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(jpeg.tobytes())
    os.replace(tmp, inbox / name)


async def _spawn(
    args: list[str], log_path: Path, *, new_session: bool
) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 — the child owns it until it exits
    try:
        env = {
            **os.environ,
            "KIT_BACKEND": "real",  # the devices are the simulators on ptys and sockets
            "GPIOZERO_PIN_FACTORY": "mock",  # a laptop has no GPIO header
            "KIT_CLOCK_SYNCED": "1",
        }
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            *args,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=new_session,
        )
    finally:
        out.close()


async def _stop(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Stop ``proc`` and, if it leads a process group (`kit run`), everything in it."""
    if proc.returncode is not None:
        return

    def send(what: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if what is signal.SIGKILL and os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, what)  # a power cut takes every process of the kit
            else:
                proc.send_signal(what)

    send(sig)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        send(signal.SIGKILL)
        await proc.wait()
