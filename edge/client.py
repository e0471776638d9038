"""Client of the edge daemon's RPC: file items, read status; retries are safe (idempotent)."""

from __future__ import annotations

from typing import Any

import cbor2
import zmq

from edge.errors import BadItem, EdgeUnavailable, KitError
from edge.item import Item, to_wire


class EdgeRefused(KitError, RuntimeError):
    """The edge daemon answered, and said no."""


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
        raise EdgeUnavailable(
            f"edge 进程无响应（{self.endpoint}）；请先运行 kit run",
            f"edge daemon not answering at {self.endpoint}; start it with `kit run`",
        )

    @staticmethod
    def _checked(answer: dict[str, Any]) -> dict[str, Any]:
        if answer.get("ok"):
            return answer
        err = answer.get("error") or {}
        cls = BadItem if err.get("type") == "BadItem" else EdgeRefused
        raise cls(str(err.get("zh", "未知错误")), str(err.get("en", "unknown error")))

    def accept(self, item: Item) -> dict[str, Any]:
        """File ``item``; returns once it is durable: ``{"seq": n, "new": bool, "state": …}``."""
        return self._checked(self.call({"op": "accept", "item": to_wire(item)}))

    def status(self) -> dict[str, Any]:
        return self._checked(self.call({"op": "status"}))

    def get(self, seq: int) -> dict[str, Any]:
        return self._checked(self.call({"op": "get", "seq": seq}))

    def close(self) -> None:
        self._drop_socket()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
