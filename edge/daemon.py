"""The edge daemon: sole writer of the outbox; answers "accept" only once an item is on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import zmq
import zmq.asyncio

from config.loader import Loaded
from config.loader import load as load_config
from edge import bus, topics
from edge.atrest import AtRest
from edge.errors import BadItem, DiskNearlyFull, KitError, StoreLocked
from edge.item import Item, Priority, check_size, from_wire
from edge.sdnotify import systemd_notify
from edge.statusreport import reporter_for
from edge.store import Accepted, Queued, State, Store

log = logging.getLogger("edge")

RPC_SOCKET = "edge"
MAX_REQUEST_BYTES = 64 * 1024


@dataclass
class _Pending:
    item: Item
    body: bytes  # its encoding, made once by the size check
    reply: Callable[[dict[str, Any]], None]


def error_reply(err: KitError) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(err).__name__, "zh": err.zh, "en": err.en}}


def lock_store(data_dir: Path) -> int:
    """Hold an exclusive lock on the data folder for this process's lifetime (the one writer)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "edge.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"另一个 edge 进程正在使用 {data_dir}", f"another edge daemon is using {data_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


RECENT_ORDERS = 20  # the centre's latest orders, as `kit status` shows them


class EdgeDaemon:
    """Owns the store, serves RPC, runs the bus proxy and commits accepts in groups."""

    def __init__(self, loaded: Loaded, store: Store, publisher: bus.Publisher) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.store = store
        self.publisher = publisher
        self.started = time.monotonic()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self.commits = 0
        self.accepted = 0
        # The latest state each process reported, by device / link name, with when it came.
        self.devices: dict[str, tuple[float, topics.DeviceState]] = {}
        self.links: dict[str, tuple[float, topics.LinkState]] = {}
        self.battery: tuple[float, topics.BatteryLevel] | None = None
        self.fix: tuple[float, topics.PositionFix] | None = None
        self.orders: deque[topics.OrderReceived] = deque(maxlen=RECENT_ORDERS)
        self.team: tuple[float, topics.TeamRoster] | None = None
        self.power_mode: tuple[float, topics.PowerModeChanged] | None = None

    async def watch_states(self, sub: bus.Subscriber) -> None:
        """Keep the latest device, link, battery and position reports for ``status``."""
        while True:
            topic, message = await sub.receive()
            now = time.monotonic()
            if topic is topics.DEVICE_STATE:
                self.devices[message.name] = (now, message)
            elif topic is topics.LINK_STATE:
                self.links[message.name] = (now, message)
            elif topic is topics.BATTERY_LEVEL:
                self.battery = (now, message)
            elif topic is topics.POSITION_FIX:
                self.fix = (now, message)
            elif topic is topics.ORDER_RECEIVED:
                self.orders.append(message)
            elif topic is topics.TEAM_ROSTER:
                self.team = (now, message)
            elif topic is topics.POWER_MODE:
                self.power_mode = (now, message)

    # -- group commit ----------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Commit everything that queued up while the previous commit was on its way to disk."""
        max_batch = self.config.edge.max_batch
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group, self._pending = self._pending[:max_batch], self._pending[max_batch:]
                try:
                    results = await self.store.accept_many(
                        [p.item for p in group], [p.body for p in group]
                    )
                except KitError as err:  # the keys were wiped after these were taken
                    for p in group:
                        p.reply(error_reply(err))
                    continue
                except Exception as exc:  # disk full, I/O error: tell every waiting client
                    if isinstance(exc, sqlite3.OperationalError | OSError):
                        # Expected on a full or failing disk: one line each, not a traceback.
                        log.error("commit of %d items failed: %s", len(group), exc)
                    else:
                        log.exception("commit of %d items failed", len(group))
                    for p in group:
                        p.reply(
                            {
                                "ok": False,
                                "error": {
                                    "type": "StoreError",
                                    "zh": f"存储写入失败：{exc}",
                                    "en": f"store write failed: {exc}",
                                },
                            }
                        )
                    continue
                self.commits += 1
                for p, result in zip(group, results, strict=True):
                    if isinstance(result, BadItem):
                        p.reply(error_reply(result))
                        continue
                    p.reply(_accepted_reply(result))
                    if result.new:
                        self.accepted += 1
                        await self.publisher.publish(
                            topics.ITEM_ACCEPTED,
                            topics.ItemAccepted(
                                result.seq, p.item.kind.value, int(p.item.priority), p.item.source
                            ),
                        )

    def _enqueue(self, item: Item, body: bytes, reply: Callable[[dict[str, Any]], None]) -> None:
        self._pending.append(_Pending(item, body, reply))
        self._wake.set()

    async def file(self, item: Item) -> dict[str, Any]:
        """Accept an item of the daemon's own (the kit's status) through the group commit;
        the answer is the one a client would get."""
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def reply(result: dict[str, Any]) -> None:
            if not answer.done():
                answer.set_result(result)

        self._enqueue(item, check_size(item), reply)
        return await answer

    # -- RPC -------------------------------------------------------------------------------

    async def serve_rpc(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            # ROUTER envelope: identity frames, an empty delimiter, then the request.
            try:
                split = frames.index(b"")
            except ValueError:
                log.warning("dropped a request without an envelope")
                continue
            envelope, body = frames[: split + 1], frames[split + 1 :]

            def reply(answer: dict[str, Any], envelope: list[bytes] = envelope) -> None:
                sock.send_multipart([*envelope, cbor2.dumps(answer)], flags=zmq.NOBLOCK)

            if len(body) != 1 or len(body[0]) > MAX_REQUEST_BYTES:
                reply(_bad_request("请求格式无效或过大", "malformed or oversized request"))
                continue
            try:
                request = cbor2.loads(body[0])
            except Exception:
                reply(_bad_request("请求不是有效的 CBOR", "request is not valid CBOR"))
                continue
            if not isinstance(request, dict):
                reply(_bad_request("请求不是映射", "request is not a map"))
                continue
            handler = self._handlers().get(str(request.get("op")))
            if handler is None:
                reply(
                    _bad_request(
                        f"未知操作：{request.get('op')!r}", f"unknown op {request.get('op')!r}"
                    )
                )
                continue
            try:
                await handler(request, reply)
            except KitError as err:
                reply(error_reply(err))

    def _handlers(
        self,
    ) -> dict[str, Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Awaitable[None]]]:
        return {
            "accept": self._op_accept,
            "status": self._op_status,
            "get": self._op_get,
            "next": self._op_next,
            "in_flight": self._op_in_flight,
            "sent": self._op_sent,
            "requeue": self._op_requeue,
            "ack": self._op_ack,
            "flush": self._op_flush,
            "withdraw": self._op_withdraw,
        }

    async def _op_flush(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        """Before a planned power-off: every accepted item is already durable (answers come
        after COMMIT); this also folds the WAL into the database file."""
        await self.store.checkpoint()
        reply({"ok": True})

    # -- the uplink's view and its writes ---------------------------------------------------

    async def _op_next(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        classes = _classes(request)
        max_size = _int(request, "max_size", 1, 2**62)
        limit = _int(request, "limit", 1, 1000)
        rows = await self.store.next_items(classes, max_size, limit)
        reply({"ok": True, "items": [_queued(q) for q in rows]})

    async def _op_in_flight(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        rows = await self.store.in_flight(_classes(request), _int(request, "limit", 1, 1000))
        reply({"ok": True, "items": [_queued(q) for q in rows]})

    async def _op_sent(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        link = request.get("link")
        if not isinstance(link, str) or not 0 < len(link) <= 64:
            raise BadItem("需要链路名称", "a link name is required")
        reply({"ok": True, "seqs": await self.store.mark_in_flight(_seqs(request), link)})

    async def _op_requeue(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        reply({"ok": True, "seqs": await self.store.requeue(_seqs(request))})

    async def _op_ack(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        ranges = request.get("ranges")
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(_is_int(x) for x in r) for r in ranges
        ):
            raise BadItem("确认范围格式无效", "acknowledgement ranges must be [[lo, hi], …]")
        acked = await self.store.acknowledge_ranges((int(lo), int(hi)) for lo, hi in ranges)
        if acked:
            await self.publisher.publish(
                topics.ITEMS_DELIVERED, topics.ItemsDelivered(acked, str(request.get("link", "")))
            )
        reply({"ok": True, "seqs": acked})

    async def _op_withdraw(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        """The media process evicts files nobody has started sending (a video segment whose
        preview the centre has): those items leave the queue as superseded; the seqs moved."""
        skip = frozenset(State) - {State.ACCEPTED}
        moved = await self.store._move(_seqs(request), State.SUPERSEDED, skip=skip)
        reply({"ok": True, "seqs": moved})

    async def _op_accept(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        item = from_wire(request.get("item"))
        body = check_size(item)
        self.store.at_rest.check()  # wiped keys: the kit is being abandoned, take nothing
        if item.priority > Priority.P1:
            self._check_margin()
        self._enqueue(item, body, reply)  # the answer goes out after the group's commit

    def _check_margin(self) -> None:
        """Below ``edge.reserve_mb`` free, only P0 and P1 are taken: an SOS always fits."""
        reserve = self.config.edge.reserve_mb * 2**20
        try:
            free = shutil.disk_usage(self.store.path.parent).free
        except OSError:
            return  # cannot tell: let the write itself succeed or fail
        if free < reserve:
            raise DiskNearlyFull(
                f"磁盘将满：剩余 {free / 2**20:.1f} MB，"
                f"{self.config.edge.reserve_mb} MB 留给求救和报告；轨迹和媒体暂不接收",
                f"disk nearly full: {free / 2**20:.1f} MB free, {self.config.edge.reserve_mb} MB "
                "kept for SOS and reports; tracks and media refused for now",
            )

    async def _op_status(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        reply({"ok": True, **(await self.status())})

    async def _op_get(
        self, request: dict[str, Any], reply: Callable[[dict[str, Any]], None]
    ) -> None:
        seq = request.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise BadItem("需要整数序号", "an integer seq is required")
        stored = await self.store.delivery(seq)  # no body: answers after a key wipe too
        if stored is None:
            reply(
                {
                    "ok": False,
                    "error": {"type": "NotFound", "zh": f"没有条目 {seq}", "en": f"no item {seq}"},
                }
            )
            return
        reply(
            {
                "ok": True,
                "seq": stored.seq,
                "state": stored.state.name,
                "attempts": stored.attempts,
                "link": stored.link,
                "kind": stored.kind.value,
                "priority": stored.priority.name,
            }
        )

    async def status(self) -> dict[str, Any]:
        counts = await self.store.counts()
        queued = await self.store.queued()
        try:
            db_bytes = sum(
                os.path.getsize(p)
                for p in (self.store.path, Path(f"{self.store.path}-wal"))
                if p.exists()
            )
        except OSError:
            db_bytes = -1
        return {
            "kit": {"id": self.config.kit.id, "name": self.config.kit.name},
            "safe_mode": self.loaded.safe_mode,
            "config": str(self.loaded.source),
            "config_errors": [str(i) for i in self.loaded.issues],
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "queued": {p.name: n for p, n in queued.items()},
            "states": {f"{s.name}.{p.name}": n for (s, p), n in sorted(counts.items())},
            "accepted_since_start": self.accepted,
            "commits": self.commits,
            "requeued_at_start": self.store.requeued_at_start,
            "store": {"path": str(self.store.path), "bytes": db_bytes},
            "at_rest": self.store.at_rest_status(),
            **self._reports(),
        }

    def _reports(self) -> dict[str, Any]:
        """What the other processes last reported, each with its age (stale: process gone?)."""
        now = time.monotonic()

        def aged(at: float, fields: dict[str, Any]) -> dict[str, Any]:
            return {**fields, "age_s": round(now - at, 1)}

        team_at, team = self.team if self.team is not None else (now, topics.TeamRoster([]))

        return {
            "devices": {
                name: aged(at, dataclasses.asdict(d))
                for name, (at, d) in sorted(self.devices.items())
            },
            "links": {
                name: aged(at, dataclasses.asdict(ln))
                for name, (at, ln) in sorted(self.links.items())
            },
            "battery": None if self.battery is None else aged(*_fields(self.battery)),
            "power_mode": None if self.power_mode is None else aged(*_fields(self.power_mode)),
            "position": None if self.fix is None else aged(*_fields(self.fix)),
            "orders": [dataclasses.asdict(o) for o in reversed(self.orders)],
            # age_s: of the mesh process's report, as for devices; last_heard_ms says when
            # each member was heard.
            "team": [aged(team_at, m._asdict()) for m in team.members],
        }


def _fields(report: tuple[float, Any]) -> tuple[float, dict[str, Any]]:
    return report[0], dataclasses.asdict(report[1])


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(request: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadItem(f"{key} 必须是 {lo}–{hi} 的整数", f"{key} must be an integer {lo}-{hi}")
    return value


def _classes(request: dict[str, Any]) -> list[Priority]:
    raw = request.get("classes")
    if not isinstance(raw, list) or not all(_is_int(p) and 0 <= p <= 4 for p in raw):
        raise BadItem("classes 必须是 0–4 的列表", "classes must be a list of 0-4")
    return [Priority(p) for p in raw]


def _seqs(request: dict[str, Any]) -> list[int]:
    raw = request.get("seqs")
    if not isinstance(raw, list) or not all(_is_int(s) and s > 0 for s in raw):
        raise BadItem("seqs 必须是正整数列表", "seqs must be a list of positive integers")
    return [int(s) for s in raw]


def _queued(q: Queued) -> list[Any]:
    return [q.seq, int(q.priority), q.size, q.source, q.body]


def _accepted_reply(result: Accepted) -> dict[str, Any]:
    return {"ok": True, "seq": result.seq, "new": result.new, "state": result.state.name}


def _bad_request(zh: str, en: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": "BadRequest", "zh": zh, "en": en}}


async def serve(
    loaded: Loaded, stop: asyncio.Event, ready: Callable[[], None] | None = None
) -> None:
    """Start the daemon's steps in order and run until ``stop`` is set."""
    config = loaded.config
    lock_fd = lock_store(config.paths.data_dir)
    config.paths.runtime_dir.mkdir(parents=True, exist_ok=True)
    ctx = zmq.asyncio.Context()
    tasks: list[asyncio.Task[None]] = []
    at_rest = AtRest(config.keys_dir, config.security.profile, config.security.encrypt_at_rest)
    store = await Store.open(config.store_path, at_rest)
    rpc = ctx.socket(zmq.ROUTER)
    rpc.setsockopt(zmq.LINGER, 0)
    publisher: bus.Publisher | None = None
    states: bus.Subscriber | None = None
    try:
        if at_rest.fault is not None:  # serve status and say why, rather than exit and loop
            log.error("%s", at_rest.fault)
        if store.requeued_at_start:
            log.info("put %d in-flight items back to ready", store.requeued_at_start)
        tasks.append(
            asyncio.create_task(
                bus.run_proxy(ctx, config.endpoint(bus.PUB_SOCKET), config.endpoint(bus.SUB_SOCKET))
            )
        )
        publisher = bus.Publisher(ctx, config.endpoint(bus.PUB_SOCKET))
        daemon = EdgeDaemon(loaded, store, publisher)
        tasks.append(asyncio.create_task(daemon.run_writer()))
        rpc.bind(config.endpoint(RPC_SOCKET))
        tasks.append(asyncio.create_task(daemon.serve_rpc(rpc)))
        states = bus.Subscriber(
            ctx,
            config.endpoint(bus.SUB_SOCKET),
            topics.DEVICE_STATE,
            topics.LINK_STATE,
            topics.BATTERY_LEVEL,
            topics.POSITION_FIX,
            topics.ORDER_RECEIVED,
            topics.TEAM_ROSTER,
            topics.POWER_MODE,
        )
        tasks.append(asyncio.create_task(daemon.watch_states(states)))
        if config.status.enabled:
            tasks.append(asyncio.create_task(reporter_for(daemon, config.status).run()))
        if loaded.safe_mode:
            log.error("安全模式 / SAFE MODE: config %s has errors:", loaded.source)
            for issue in loaded.issues:
                log.error("  %s", issue)
            await publisher.publish(
                topics.SAFE_MODE, topics.SafeMode("edge", [str(i) for i in loaded.issues])
            )
        log.info(
            "edge ready: %s, %d items queued",
            config.endpoint(RPC_SOCKET),
            sum((await store.queued()).values()),
        )
        if ready:
            ready()
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception():
                raise t.exception()  # type: ignore[misc]
        stopper.cancel()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rpc.close(0)
        if states is not None:
            states.close()
        if publisher:
            publisher.close()
        await store.close()
        ctx.term()
        os.close(lock_fd)


def main(config_path: Path | None = None) -> int:
    """Run the edge daemon until SIGTERM/SIGINT (what systemd and ``kit run`` start)."""
    loaded = load_config(config_path)
    logging.basicConfig(
        level=loaded.config.log.level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with systemd_notify(stop) as notifier:
            await serve(loaded, stop, ready=lambda: notifier.ready("edge ready"))

    try:
        asyncio.run(run())
    except KitError as err:
        log.error("%s", err)
        return 1
    return 0
