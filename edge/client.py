"""Client of the edge daemon's RPC: file items, read status; retries are safe (idempotent)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import cbor2
import zmq
import zmq.asyncio

from edge.errors import BadItem, EdgeUnavailable, KitError
from edge.item import Item, to_wire


class EdgeRefused(KitError, RuntimeError):
    """The edge daemon answered, and said no."""


def checked(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer if it says ok, else the error it carries, raised."""
    if answer.get("ok"):
        return answer
    err = answer.get("error") or {}
    cls = BadItem if err.get("type") == "BadItem" else EdgeRefused
    raise cls(str(err.get("zh", "未知错误")), str(err.get("en", "unknown error")))


def unavailable(endpoint: str) -> EdgeUnavailable:
    return EdgeUnavailable(
        f"edge 进程无响应（{endpoint}）；请先运行 kit run",
        f"edge daemon not answering at {endpoint}; start it with `kit run`",
    )


class EdgeClient:
    """Blocking client (CLI, tests, benchmarks). Each call retries on a fresh socket on time-out.

    Retrying an accept is safe: the item's uid makes the store answer with the same seq.
    """

    def __init__(self, endpoint: str, timeout_s: float = 5.0, retries: int = 2) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self.retries = retries
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            s = self._ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _drop_socket(self) -> None:
        # A REQ socket that lost its reply is stuck in "expect reply": start a new one.
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        payload = cbor2.dumps(request)
        for _ in range(self.retries + 1):
            sock = self._socket()
            sock.send(payload)
            if sock.poll(self.timeout_ms, zmq.POLLIN):
                answer = cbor2.loads(sock.recv())
                if not isinstance(answer, dict):
                    raise EdgeUnavailable("edge 的回答无效", "invalid answer from the edge daemon")
                return answer
            self._drop_socket()
        raise unavailable(self.endpoint)

    def accept(self, item: Item) -> dict[str, Any]:
        """File ``item``; returns once it is durable: ``{"seq": n, "new": bool, "state": …}``."""
        return checked(self.call({"op": "accept", "item": to_wire(item)}))

    def status(self) -> dict[str, Any]:
        return checked(self.call({"op": "status"}))

    def get(self, seq: int) -> dict[str, Any]:
        return checked(self.call({"op": "get", "seq": seq}))

    def close(self) -> None:
        self._drop_socket()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEdgeClient:
    """Asyncio client for long-running processes; many calls may be outstanding at once.

    A request id travels in the envelope, so answers may come back in any order (an
    accept waits for its group commit while a status answers at once).
    """

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            if len(frames) != 3 or frames[1] != b"":
                continue
            future = self._pending.pop(frames[0], None)
            if future is not None and not future.done():
                try:
                    answer = cbor2.loads(frames[2])
                except Exception:
                    answer = None
                if isinstance(answer, dict):
                    future.set_result(answer)
                else:
                    future.set_exception(
                        EdgeUnavailable("edge 的回答无效", "invalid answer from the edge daemon")
                    )

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request``; only idempotent requests may be retried after a time-out."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        rid = next(self._ids).to_bytes(8, "big")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        await self._sock.send_multipart([rid, b"", cbor2.dumps(request)])
        try:
            return checked(await asyncio.wait_for(future, self.timeout_s))
        except TimeoutError:
            raise unavailable(self.endpoint) from None
        finally:
            self._pending.pop(rid, None)

    async def accept(self, item: Item) -> dict[str, Any]:
        return await self.call({"op": "accept", "item": to_wire(item)})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._sock.close(0)
