"""The live status the pages show: the edge's answer plus what the bus says, shaped for phones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq.asyncio

from drivers.clock import clock_synchronised
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.errors import KitError

log = logging.getLogger("web.status")

POLL_S = 2.0  # the edge is asked this often, and at once after a bus event
STALE_S = 30.0  # a link or device report older than this: its process is probably gone
RECENT_DELIVERED = 12


class StatusHub:
    """Keeps the latest status snapshot; every page's event stream waits on its version."""

    def __init__(self, edge: AsyncEdgeClient, sub_endpoint: str, data_dir: Path) -> None:
        self.edge = edge
        self.sub_endpoint = sub_endpoint
        self.data_dir = data_dir
        self.snapshot: dict[str, Any] = {"edge": {"running": False}, "loading": True}
        self.raw: dict[str, Any] | None = None
        self.version = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self.delivered: deque[dict[str, Any]] = deque(maxlen=RECENT_DELIVERED)
        self.last_success: dict[str, float] = {}  # link name → time.time() of its last delivery

    async def run(self) -> None:
        while True:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()
            await asyncio.sleep(0.2)  # a burst of events makes one refresh

    async def refresh(self) -> None:
        try:
            status: dict[str, Any] | None = await self.edge.call({"op": "status"})
            error = None
        except KitError as err:
            status, error = None, {"zh": err.zh, "en": err.en}
        self.raw = status
        self.snapshot = compose(
            status,
            error,
            list(self.delivered),
            self.last_success,
            clock_synchronised(),
            _disk(self.data_dir),
        )
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def next(self, seen: int, timeout: float) -> tuple[dict[str, Any], int] | None:
        """The snapshot once its version is past ``seen``; None after ``timeout`` without one."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > seen), timeout)
            except TimeoutError:
                return None
            return self.snapshot, self.version

    async def watch_bus(self) -> None:
        sub = bus.Subscriber(
            zmq.asyncio.Context.instance(),
            self.sub_endpoint,
            topics.ITEMS_DELIVERED,
            topics.ITEM_ACCEPTED,
            topics.LINK_STATE,
            topics.BATTERY_LEVEL,
            topics.POSITION_FIX,
        )
        try:
            while True:
                topic, message = await sub.receive()
                if topic is topics.ITEMS_DELIVERED:
                    now = time.time()
                    self.last_success[message.link] = now
                    for seq in message.seqs[-RECENT_DELIVERED:]:
                        self.delivered.appendleft(
                            {"seq": seq, "link": message.link, "at": round(now, 1)}
                        )
                self._wake.set()
        finally:
            sub.close()


def _disk(folder: Path) -> dict[str, int] | None:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return None
    return {"total": usage.total, "free": usage.free}


def compose(
    status: dict[str, Any] | None,
    error: dict[str, str] | None,
    delivered: list[dict[str, Any]],
    last_success: dict[str, float],
    clock_ok: bool,
    disk: dict[str, int] | None,
) -> dict[str, Any]:
    """The page's view of the kit: only what it shows, in the units it shows."""
    now = time.time()
    out: dict[str, Any] = {
        "edge": {"running": status is not None, "error": error},
        "clock_ok": clock_ok,
        "disk": disk,
        "delivered": [{**d, "ago_s": round(now - d["at"])} for d in delivered],
    }
    if status is None:
        return out
    links = []
    for name, ln in (status.get("links") or {}).items():
        success = last_success.get(name)
        links.append(
            {
                "name": name,
                "kind": ln.get("kind"),
                "online": bool(ln.get("online")) and ln.get("age_s", 0) <= STALE_S,
                "stale": ln.get("age_s", 0) > STALE_S,
                "rate_bps": ln.get("rate_bps"),
                "rtt_s": ln.get("rtt_s"),
                "last_success_s": None if success is None else round(now - success),
            }
        )
    gnss = (status.get("devices") or {}).get("gnss")
    out.update(
        {
            "kit": status.get("kit"),
            "safe_mode": status.get("safe_mode"),
            "config_errors": status.get("config_errors") or [],
            "queued": status.get("queued") or {},
            "links": links,
            "battery": status.get("battery"),
            "position": status.get("position"),
            "gnss": None
            if gnss is None
            else {
                "online": gnss.get("online"),
                "zh": gnss.get("summary_zh"),
                "en": gnss.get("summary_en"),
            },
            "store_bytes": (status.get("store") or {}).get("bytes"),
            "team": status.get("team"),
            "orders": (status.get("orders") or [])[:5],
        }
    )
    return out
