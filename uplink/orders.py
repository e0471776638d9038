"""Orders from the centre, taken once each however many times and links they arrive by.

For each new order the kit files a receipt item (P1, ``data.order_id``): when it reaches
the centre the order counts as delivered and is no longer re-sent. Then the order goes
on the bus (``order.received``) for whoever acts on it: the mesh process passes a
member's or the team's order on over LoRa, ``kit status`` and the web page show it.

The receipt is accepted before the order is marked seen, so a power cut in between
files a second receipt (harmless: the centre closes an order once) rather than none.
Seen order ids are kept in ``<data>/uplink/orders-seen`` (the most recent
:data:`KEEP`), written atomically, so a restart does not take an order twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from pathlib import Path

from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.errors import EdgeUnavailable
from edge.item import new_item
from uplink.frames import Order

log = logging.getLogger(__name__)

KEEP = 4096  # order ids remembered; the centre stops re-sending once the receipt is in
QUEUE = 256
RETRY_MAX_S = 30.0


class OrderDesk:
    """Takes orders from the links (:meth:`take`), files receipts, announces orders."""

    def __init__(
        self, kit_id: int, edge: AsyncEdgeClient, publisher: bus.Publisher, state_dir: Path
    ) -> None:
        self.kit_id = kit_id
        self.edge = edge
        self.publisher = publisher
        self.path = state_dir / "orders-seen"
        self.seen: deque[int] = deque(_load(self.path), maxlen=KEEP)
        self.queue: asyncio.Queue[tuple[Order, str]] = asyncio.Queue(QUEUE)
        self.taken = 0

    def take(self, order: Order, link: str) -> None:
        """An order arrived over ``link`` (called by the uplink; never blocks)."""
        if order.order_id in self.seen:
            return
        try:
            self.queue.put_nowait((order, link))
        except asyncio.QueueFull:
            log.warning(
                "order %d dropped for now: too many waiting (it is re-sent)", order.order_id
            )

    async def run(self) -> None:
        while True:
            order, link = await self.queue.get()
            if order.order_id in self.seen:
                continue  # the same order by another link meanwhile
            await self._receipt(order, link)
            self.seen.append(order.order_id)
            _save(self.path, self.seen)
            self.taken += 1
            log.warning(
                "指令 / order %d over %s for %s: %s",
                order.order_id,
                link,
                order.target or "the kit",
                order.text,
            )
            await self.publisher.publish(
                topics.ORDER_RECEIVED,
                topics.OrderReceived(
                    order.order_id, order.target, order.text, link, int(time.time() * 1000)
                ),
            )

    async def _receipt(self, order: Order, link: str) -> None:
        item = new_item(
            "receipt", source=f"kit:{self.kit_id}", data={"order_id": order.order_id, "link": link}
        )
        delay = 0.5
        while True:
            try:
                await self.edge.accept(item)  # the same uid each try: accepted once
                return
            except EdgeUnavailable as err:
                log.warning("receipt of order %d waits for the edge: %s", order.order_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)


def _load(path: Path) -> list[int]:
    try:
        ids = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        log.error("%s unreadable (%s): orders may be taken again", path, err)
        return []
    return [i for i in ids if isinstance(i, int)] if isinstance(ids, list) else []


def _save(path: Path, seen: deque[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(list(seen), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
