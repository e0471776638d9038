"""A whole kit and a centre as real processes (tests, benchmarks, the demo)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edge.client import AsyncEdgeClient
from edge.errors import EdgeUnavailable
from edge.item import MediaRef
from security import simkeys
from security.channel import KitSecurity
from security.state import SecurityState

KIT_ID = 7
PROFILE = "default"  # the cryptographic profile of the harness's kits and centre


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Kit:
    root: Path
    edge: AsyncEdgeClient
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def media_dir(self) -> Path:
        return self.root / "data" / "media"

    def media(self, name: str, data: bytes, mime: str) -> MediaRef:
        """A media file written the way media/ will: complete and on disk before filing."""
        path = self.media_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return MediaRef(name, len(data), hashlib.sha256(data).hexdigest(), mime)

    def kit_states(self) -> dict[int, int]:
        db = sqlite3.connect(self.root / "data" / "outbox.sqlite3")
        try:
            return dict(db.execute("SELECT seq, state FROM items"))
        finally:
            db.close()


def centre_items(centre_dir: Path) -> dict[int, tuple[int, str | None]]:
    """seq -> (copies, media path) of every item the centre stored for the kit."""
    db = sqlite3.connect(centre_dir / "centre.sqlite3")
    try:
        rows = db.execute("SELECT seq, copies, media_path FROM items WHERE kit_id = ?", (KIT_ID,))
        return {seq: (copies, media) for seq, copies, media in rows}
    finally:
        db.close()


async def _spawn(*args: str, log: Path) -> asyncio.subprocess.Process:
    out = open(log, "ab")  # noqa: SIM115 — the child owns it until it exits
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edge.cli",
            *args,
            stdout=out,
            stderr=out,
            env={**os.environ, "KIT_CLOCK_SYNCED": "1"},
        )
    finally:
        out.close()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def centre(
    root: Path,
    *,
    udp_gateways: Sequence[str] = (),
    kit_ids: Sequence[int] = (KIT_ID,),
    profile: str = PROFILE,
    tls: bool = False,
) -> AsyncIterator[tuple[str, Path]]:
    """`kit centre` on a free port, its kits enrolled with simulation keys; yields its base
    URL and data folder. ``tls``: HTTPS, kits with their derived identities."""
    port = free_port()
    data = root / "centre"
    config = root / "centre.toml"
    gateways = "".join(udp_gateways)
    simkeys.install_centre(data / "keys", profile)
    config.write_text(
        f'listen = "127.0.0.1:{port}"\ndata_dir = "{data}"\ntls = {str(tls).lower()}\n'
        + "".join(
            f'[[kits]]\nkit_id = {i}\nname = "测试套件 {i}"\nprofile = "{profile}"\n'
            f'public_key = "{simkeys.kit_pair(i, profile).public_text}"\n'
            for i in kit_ids
        )
        + gateways
    )
    proc = await _spawn("centre", "--config", str(config), log=root / "centre.log")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(
                        url + "/v1/acks", headers={"Kit-Id": str(kit_ids[0])}, ssl=False
                    ) as r:
                        if r.status in (200, 401):  # it answers (401: kits must sign)
                            break
                except aiohttp.ClientError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError((root / "centre.log").read_text())
                await asyncio.sleep(0.05)
        yield url, data
    finally:
        await _stop(proc)


def security_toml(kit_id: int, root: Path, profile: str = PROFILE) -> str:
    """The [security] table of a simulated kit, its key pair installed under ``root``/data."""
    simkeys.install_kit(root / "data" / "keys", kit_id, profile)
    centre_key = simkeys.centre_pair(profile).public_text
    return f'[security]\nprofile = "{profile}"\ncentre_public_key = "{centre_key}"\n'


def kit_security(kit_id: int, state: Path, profile: str = PROFILE) -> KitSecurity:
    """Sealing for an in-process uplink of a simulated kit (close its ``state`` after)."""
    pair = simkeys.kit_pair(kit_id, profile)
    centre_public = simkeys.centre_pair(profile).public
    return KitSecurity(kit_id, pair, centre_public, SecurityState(state))


@asynccontextmanager
async def kit(
    root: Path, links_toml: str, extra: str = "", kit_id: int = KIT_ID, profile: str = PROFILE
) -> AsyncIterator[Kit]:
    """`kit edge` and `kit uplink` with the given [[links]]; yields a client of the edge."""
    config = root / "kit.toml"
    config.write_text(
        f'[kit]\nid = {kit_id}\nname = "测试套件"\n'
        '[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        + security_toml(kit_id, root, profile)
        + f"[uplink]\npoll_s = 0.2\n{extra}\n{links_toml}"
    )
    edge = AsyncEdgeClient(f"ipc://{root / 'run' / 'edge'}.sock", timeout_s=1.0)
    k = Kit(root, edge)
    try:
        k.procs.append(await _spawn("edge", "--config", str(config), log=root / "edge.log"))
        for _ in range(200):
            try:
                await edge.call({"op": "status"})
                break
            except EdgeUnavailable:
                if k.procs[0].returncode is not None:
                    raise RuntimeError((root / "edge.log").read_text()) from None
        k.procs.append(await _spawn("uplink", "--config", str(config), log=root / "uplink.log"))
        yield k
    finally:
        for proc in reversed(k.procs):
            await _stop(proc)
        await edge.close()
