"""`kit uplink`: build the configured links and run the uplink until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import zmq.asyncio

from config.schema import KitConfig
from edge import bus, topics
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from edge.item import Priority
from edge.service import run_service
from security.cli import keys_wiped, kit_security
from security.keys import KIT_KEY
from security.mirror import serve_mirror
from uplink import registry
from uplink.link import Link
from uplink.orders import OrderDesk
from uplink.runner import Uplink

log = logging.getLogger("uplink")


def build(config: KitConfig, edge: AsyncEdgeClient) -> Uplink:
    links = [registry.make(c) for c in config.links if c.enabled]
    return Uplink(
        config.kit.id,
        links,
        edge,
        config.paths.data_dir,
        config.media_dir,
        ack_timeouts={c.name: c.ack_timeout for c in config.links},
        part_bytes=config.uplink.part_bytes,
        max_fragments=config.uplink.max_fragments,
        poll_s=config.uplink.poll_s,
        security=kit_security(config),
    )


async def _wake_on_new_items(config: KitConfig, uplink: Uplink) -> None:
    """A newly accepted item (a P0 above all) wakes every idle link at once."""
    sub = bus.Subscriber(
        zmq.asyncio.Context.instance(), config.endpoint(bus.SUB_SOCKET), topics.ITEM_ACCEPTED
    )
    try:
        while True:
            await sub.receive()
            uplink.wake()
    finally:
        sub.close()


SAVE_POLL_FACTOR = 4.0  # in power-saving mode the uplink looks for work this much less often


async def _follow_power(config: KitConfig, uplink: Uplink) -> None:
    """Power saving: bulk media (P4) waits and the uplink polls less until mains or a charge."""
    sub = bus.Subscriber(
        zmq.asyncio.Context.instance(), config.endpoint(bus.SUB_SOCKET), topics.POWER_MODE
    )
    try:
        while True:
            _, change = await sub.receive()
            saving = change.mode != "normal"
            paused = frozenset({Priority.P4}) if saving else frozenset()
            if paused != uplink.paused:
                log.info(
                    "power %s (%s): bulk media %s",
                    change.mode,
                    change.reason,
                    "paused" if saving else "resumed",
                )
            uplink.paused = paused
            factor = SAVE_POLL_FACTOR if saving else 1.0
            uplink.poll_s = config.uplink.poll_s * factor
            uplink.wake()
    finally:
        sub.close()


REPORT_S = 10.0  # link and device states are published this often, and on every change


def link_state(link: Link) -> topics.LinkState:
    return topics.LinkState(
        link.name, link.kind, link.online, round(link.rate.value, 1), round(link.rtt.value, 3)
    )


async def _report_states(config: KitConfig, uplink: Uplink) -> None:
    """Publish every link's state (and its device's) on change and every ``REPORT_S``."""
    publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
    changed = asyncio.Event()
    uplink.on_link_state = lambda _link: changed.set()
    try:
        while True:
            for link in uplink.links:
                await publisher.publish(topics.LINK_STATE, link_state(link))
                try:
                    device = link.device_state()
                except Exception:  # a driver's bug must not stop the uplink
                    log.exception("state of %s's device not known", link.name)
                    continue
                if device is not None:
                    await publisher.publish(topics.DEVICE_STATE, device)
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), REPORT_S)
    finally:
        uplink.on_link_state = None
        publisher.close()


async def _take_orders(config: KitConfig, uplink: Uplink, edge: AsyncEdgeClient) -> None:
    publisher = bus.Publisher(zmq.asyncio.Context.instance(), config.endpoint(bus.PUB_SOCKET))
    desk = OrderDesk(config.kit.id, edge, publisher, uplink.state_dir)
    uplink.on_order = desk.take
    try:
        await desk.run()
    finally:
        uplink.on_order = None
        publisher.close()


WIPE_CHECK_S = 2.0  # how often the uplink looks whether the kit's key is still there

WIPED = (
    "本机密钥已销毁，不再发送；请关机 / this kit's keys were wiped: sending nothing; "
    "power the kit off"
)


async def _end_on_wipe(config: KitConfig) -> None:
    """Return once the kit's key file is gone: the uplink then stops and drops the keys it
    derived (sealing, request signing, TLS) with everything else it holds."""
    key = config.keys_dir / KIT_KEY
    while key.exists():
        await asyncio.sleep(WIPE_CHECK_S)
    log.critical(WIPED)


async def serve(config: KitConfig, stop: asyncio.Event) -> None:
    if config.kit.id == 0:
        log.error("套件未配置编号，不发送 / kit id not configured: sending nothing until it is")
        await stop.wait()
        return
    if config.security.centre_public_key and keys_wiped(config):
        log.critical(WIPED)  # restarted after the wipe: idle, never send unsealed
        await stop.wait()
        return
    edge = AsyncEdgeClient(config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s)
    uplink = build(config, edge)
    if not uplink.links:
        log.warning("没有配置链路 / no links configured: add [[links]] to the config")
    log.info("uplink for kit %d: %s", config.kit.id, ", ".join(link.name for link in uplink.links))
    state = None if uplink.security is None else uplink.security.state  # its audit, mirrored
    tasks = [
        asyncio.create_task(uplink.run()),
        asyncio.create_task(_wake_on_new_items(config, uplink)),
        asyncio.create_task(_report_states(config, uplink)),
        asyncio.create_task(_follow_power(config, uplink)),
        asyncio.create_task(_take_orders(config, uplink, edge)),
        asyncio.create_task(serve_mirror(config, state, edge)),
    ]
    if uplink.security is not None:
        tasks.append(asyncio.create_task(_end_on_wipe(config)))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in [stopper, *tasks]:
            t.cancel()
        await asyncio.gather(stopper, *tasks, return_exceptions=True)
        await edge.close()
    if not stop.is_set():  # the key was wiped: let go of the links and the keys, wait to stop
        if uplink.security is not None:
            uplink.security.state.close()
        del uplink, state, tasks
        await stop.wait()


def main(config_path: Path | None = None) -> int:
    return run_service("uplink", serve, config_path)
