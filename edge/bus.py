"""Typed publish/subscribe over ZeroMQ: publishers → XSUB | proxy | XPUB → subscribers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, TypeVar

import cbor2
import zmq
import zmq.asyncio

from edge.topics import BY_NAME, Topic

log = logging.getLogger(__name__)
T = TypeVar("T")

PUB_SOCKET = "bus-in"  # publishers connect here (the proxy's XSUB)
SUB_SOCKET = "bus-out"  # subscribers connect here (the proxy's XPUB)


class BadMessage(ValueError):
    """A bus message that does not match its topic's declared type."""


def encode(topic: Topic[T], message: T) -> list[bytes]:
    if not isinstance(message, topic.type):
        raise TypeError(f"{topic.name} carries {topic.type.__name__}, not {type(message).__name__}")
    # Messages are flat: read the fields directly (dataclasses.asdict deep-copies).
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}  # type: ignore[arg-type]
    return [topic.name.encode(), cbor2.dumps(fields)]


def decode(frames: list[bytes]) -> tuple[Topic[Any], Any]:
    if len(frames) != 2:
        raise BadMessage(f"expected 2 frames, got {len(frames)}")
    topic = BY_NAME.get(frames[0].decode("utf-8", "replace"))
    if topic is None:
        raise BadMessage(f"unknown topic {frames[0]!r}")
    try:
        fields = cbor2.loads(frames[1])
        return topic, topic.type(**fields)
    except Exception as exc:
        raise BadMessage(f"{topic.name}: {exc}") from None


class Publisher:
    """Publishes typed messages; messages may be dropped when nobody keeps up (by design)."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str) -> None:
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)

    async def publish(self, topic: Topic[T], message: T) -> None:
        await self._sock.send_multipart(encode(topic, message))

    def close(self) -> None:
        self._sock.close(0)


class Subscriber:
    """Receives the messages of the topics it subscribed to, decoded to their types."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, *topics: Topic[Any]) -> None:
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        for topic in topics:
            # The separator-free prefix match is safe: topic names are distinct, full frames.
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.name.encode())

    async def receive(self) -> tuple[Topic[Any], Any]:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                return decode(frames)
            except BadMessage as exc:
                log.warning("dropped a bad bus message: %s", exc)

    def close(self) -> None:
        self._sock.close(0)


async def run_proxy(ctx: zmq.asyncio.Context, pub_endpoint: str, sub_endpoint: str) -> None:
    """Forward every publisher's messages to every subscriber until cancelled."""
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for s in (xsub, xpub):
        s.setsockopt(zmq.LINGER, 0)
    xsub.bind(pub_endpoint)
    xpub.bind(sub_endpoint)

    async def forward(src: zmq.asyncio.Socket, dst: zmq.asyncio.Socket) -> None:
        while True:
            await dst.send_multipart(await src.recv_multipart())

    try:
        await asyncio.gather(forward(xsub, xpub), forward(xpub, xsub))
    finally:
        xsub.close(0)
        xpub.close(0)
