"""Helpers and fixtures for the centre's tests: a centre on its own thread, items, store dumps.

Not a conftest.py: tests elsewhere import names from the root ``conftest`` module, which a
second conftest would shadow. Test modules import the fixtures from here by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import psycopg
import pytest
import requests
from aiohttp import web

from centre.app import make_app
from centre.config import CentreConfig, KitEntry
from centre.keys import STORE
from centre.store import Store
from edge.item import Item, Kind, MediaRef, Position, new_item, to_wire
from security import simkeys
from security.channel import KitSecurity
from security.ipauth import RequestSigner
from security.state import SecurityState

T = TypeVar("T")
CREATED_MS = 1_750_000_000_000


class KitAuth(requests.auth.AuthBase):
    """Signs each request naming a keyed kit in ``Kit-Id`` the way the kit's uplink does
    (:mod:`security.ipauth`), with the simulation keys of :data:`KITS`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.signers = {
            kit_id: RequestSigner.for_kit(
                KitSecurity(
                    kit_id,
                    simkeys.kit_pair(kit_id, "default"),
                    simkeys.centre_pair("default").public,
                    SecurityState(folder / f"kit-{kit_id}.sqlite3"),
                    folder / f"kit-{kit_id}.seq",
                )
            )
            for kit_id in sorted(KEYED)
        }
        self.lock = threading.Lock()  # tests send from several threads at once

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        kit = str(r.headers.get("Kit-Id", ""))
        if not kit.isdigit() or int(kit) not in KEYED:
            return r
        body = r.body or b""
        # A streamed body is signed as empty: the centre refuses it for its size first.
        data = body.encode() if isinstance(body, str) else body
        with self.lock:
            _, r.headers["Kit-Auth"] = self.signers[int(kit)].sign(
                str(r.method), r.path_url, r.headers, data if isinstance(data, bytes) else b""
            )
        return r

    def close(self) -> None:
        for signer in self.signers.values():
            signer.kit.state.close()


class RunningCentre:
    """The real application on a real socket, its event loop on a background thread.

    The centre has the simulation centre key, and ``http`` signs requests of keyed kits.
    """

    def __init__(self, config: CentreConfig) -> None:
        self.config = config
        simkeys.install_centre(config.keys_dir, "default")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.runner = web.AppRunner(make_app(config))
        self.url = self.call(self._start())
        self.http = requests.Session()
        self.http.auth = self.auth = KitAuth(config.data_dir)

    async def _start(self) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the centre's loop (the store lives there) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def store(self) -> Store:
        return self.runner.app[STORE]

    def post_items(self, kit: int | str, body: bytes, link: str | None = None) -> requests.Response:
        headers = {"Kit-Id": str(kit), "Content-Type": "application/cbor"}
        if link is not None:
            headers["Kit-Link"] = link
        return self.http.post(f"{self.url}/v1/items", data=body, headers=headers, timeout=30)

    def acks(self, kit: int) -> list[list[int]]:
        resp = self.http.get(f"{self.url}/v1/acks", headers={"Kit-Id": str(kit)}, timeout=30)
        assert resp.status_code == 200, resp.text
        acks: list[list[int]] = cbor2.loads(resp.content)["acks"]
        return acks

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.http.close()
        self.auth.close()
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def report(text: str = "三号楼倒塌，被困 4 人", **kw: Any) -> Item:
    return new_item(
        Kind.SITUATION,
        source="web",
        text=text,
        position=Position(31.83, 104.46, 650.0),
        data={"count": 4},
        created_ms=CREATED_MS,
        clock_ok=True,
        **kw,
    )


def photo(content: bytes, name: str = "photos/ruin.jpg") -> Item:
    ref = MediaRef(name, len(content), hashlib.sha256(content).hexdigest(), "image/jpeg")
    return new_item(Kind.PHOTO, source="web", media=ref, created_ms=CREATED_MS, clock_ok=True)


def batch(entries: Sequence[tuple[int, Item]]) -> bytes:
    return cbor2.dumps([[seq, to_wire(item)] for seq, item in entries])


def answer(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/cbor"
    out: dict[str, Any] = cbor2.loads(resp.content)
    return out


def dump(config: CentreConfig) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read with a separate connection (SQLite or PostgreSQL)."""
    if config.database:
        with psycopg.connect(config.database) as pg:
            tables = [
                r[0]
                for r in pg.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            ]
            return {
                t: sorted(pg.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables
            }
    with closing(sqlite3.connect(f"file:{config.db_path}?mode=ro", uri=True)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def _key(kit_id: int) -> str:
    return simkeys.kit_pair(kit_id, "default").public_text


LAB = 11  # a lab kit enrolled without a key: a stock tus client, which cannot sign
KITS = (
    KitEntry(kit_id=7, name="北川一队", public_key=_key(7)),
    KitEntry(kit_id=8, name="汶川二队", public_key=_key(8)),
    KitEntry(kit_id=9, name="丢失的设备", enabled=False, public_key=_key(9)),
    KitEntry(kit_id=LAB, name="实验台（无密钥）"),
)
KEYED = {k.kit_id for k in KITS if k.public_key}


STORES = ("sqlite", "postgresql")


@pytest.fixture(name="config", params=STORES)
def config_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> CentreConfig:
    """A centre on each store: SQLite, and a fresh database of the session's PostgreSQL
    (modules using it import ``pg_server_fixture`` from pg_helpers)."""
    database = ""
    if request.param == "postgresql":
        database = request.getfixturevalue("pg_server").new_database()
    return CentreConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "centre",
        max_upload_bytes=8 * 1024**2,
        kits=KITS,
        database=database,
    )


@pytest.fixture(name="centre")
def centre_fixture(config: CentreConfig) -> Iterator[RunningCentre]:
    running = RunningCentre(config)
    try:
        yield running
    finally:
        running.stop()
