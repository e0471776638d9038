"""The centre's ingest service: the aiohttp application and the ``kit centre`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from centre import export, ingest, orders, tus
from centre.config import CentreConfig, build_config, load_config
from centre.dashboard import cli as dashboard_cli
from centre.dashboard import views as dashboard
from centre.db import StoreUnavailable
from centre.errors import BadCentreConfig, Refused, UnknownKit
from centre.frames import FrameGateway
from centre.keys import CONFIG, STORE, UPLOADS
from centre.kitauth import TLS, VERIFIER, TlsSlot, kit_auth
from centre.mediastore import open_media
from centre.msggw import Terminal, beidou_gateway, mesh_gateway, sms_gateway
from centre.store import Store
from centre.udpgw import UdpServer, serve_udp
from centre.uploads import Uploads
from security.cli import CENTRE_COMMANDS, centre_command, centre_security
from security.ipauth import RequestVerifier
from security.tlsid import CentreTls, centre_certificate
from uplink.frames import BadFrame, pack_relay, unpack_relay

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FRAMES_TYPE = "application/octet-stream"


@dataclass
class Gateways:
    """The narrow links' frame gateways by name, and the UDP sockets of those that have one."""

    by_name: dict[str, FrameGateway] = field(default_factory=dict)
    udp: dict[str, UdpServer] = field(default_factory=dict)
    terminals: dict[str, Terminal] = field(default_factory=dict)


GATEWAYS = web.AppKey("gateways", Gateways)


@dataclass(frozen=True)
class Role:
    """What this process does besides serving HTTP: the sole process does everything; of
    several workers, the parent prepares the store and the first one owns the serial
    terminals and UDP sockets (a device or port is opened once)."""

    prepare: bool = True  # enrol the configured kits, finish interrupted uploads
    listeners: bool = True  # open the gateways' UDP sockets and serial terminals; exports


ROLE = web.AppKey("role", Role)


@web.middleware
async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every refusal with its status and bilingual reason, and log the reason."""
    try:
        return await handler(request)
    except (Refused, UnknownKit) as err:
        status = err.status if isinstance(err, Refused) else 403
        headers = err.headers if isinstance(err, Refused) else {}
        log.warning(
            "refused %s %s from %s with %d: %s",
            request.method,
            request.path,
            request.remote,
            status,
            err,
        )
        return web.Response(status=status, text=str(err), headers=headers)


async def _tus_resumable(request: web.Request, response: web.StreamResponse) -> None:
    # On every media response, the framework's own 404/405 included.
    if request.path.startswith(tus.PREFIX):
        response.headers["Tus-Resumable"] = tus.TUS_VERSION


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_store(config)
    try:
        uploads = Uploads(store)
        if app[ROLE].prepare:
            await store.sync_kits(config.kits)
            await uploads.recover()
        app[STORE] = store
        app[UPLOADS] = uploads
        yield
    finally:
        await store.close()


async def _gateways(app: web.Application) -> AsyncIterator[None]:
    """Start each configured frame gateway (after the store opens; stopped before it closes)."""
    gateways = Gateways()
    app[GATEWAYS] = gateways
    security = centre_security(app[CONFIG])
    app[VERIFIER] = RequestVerifier(security)
    try:
        for entry in app[CONFIG].gateways:
            gateway = FrameGateway(
                app[STORE],
                name=entry.name,
                mtu=entry.mtu,
                missing_after_s=entry.missing_after_s,
                security=security,
            )
            gateways.by_name[entry.name] = gateway
            if not app[ROLE].listeners:
                continue
            if entry.kind == "udp":
                gateways.udp[entry.name] = await serve_udp(gateway, entry.address)
            elif entry.kind in ("beidou", "sms", "mesh"):
                if entry.kind == "beidou":
                    terminal = beidou_gateway(gateway, entry.device, entry.protocol)
                elif entry.kind == "sms":
                    terminal = sms_gateway(gateway, entry.device)
                else:
                    terminal = mesh_gateway(gateway, entry.device)
                gateways.terminals[entry.name] = terminal
                await terminal.start()
        yield
    finally:
        for server in gateways.udp.values():
            await server.close()
        for terminal in gateways.terminals.values():
            await terminal.close()
        security.close()


async def _exports(app: web.Application) -> AsyncIterator[None]:
    """Run the configured exports where the serial terminals run: in one process only."""
    exports = None
    if app[ROLE].listeners and app[CONFIG].exports:
        exports = export.Exports(app[STORE], app[CONFIG].exports)
    try:
        yield
    finally:
        if exports is not None:
            await exports.close()


async def post_frames(request: web.Request) -> web.Response:
    """``POST /v1/frames`` for relays: length-prefixed frames in, the answers out likewise.

    The ``Kit-Link`` header names the gateway (may be left out when there is only one).
    The answer holds the gateway's replies to these frames, then its requests for
    missing fragments of the kits these frames came from.
    """
    gateways = request.app[GATEWAYS].by_name
    name = request.headers.get("Kit-Link")
    if name is None and len(gateways) == 1:
        gateway = next(iter(gateways.values()))
    elif name is None:
        raise Refused(
            400,
            f"请在 Kit-Link 中指明网关：{sorted(gateways)}",
            f"name the gateway in Kit-Link: one of {sorted(gateways)}",
        )
    elif name in gateways:
        gateway = gateways[name]
    else:
        raise Refused(404, f"没有名为 {name!r} 的帧网关", f"no frame gateway named {name!r}")
    try:
        frames = unpack_relay(await ingest._read_body(request))
    except BadFrame as err:
        raise Refused(400, err.zh, err.en) from None
    answers: list[bytes] = []
    kits: set[int] = set()
    relay_kit = None  # the relaying kit, when its TLS identity proves it
    tls = request.app[TLS].tls
    if tls is not None and request.transport is not None:
        ssl_object = request.transport.get_extra_info("ssl_object")
        relay_kit = None if ssl_object is None else tls.kit_of(ssl_object)
    for frame in frames:
        answers += await gateway.handle(frame, via=request.remote, relay_kit=relay_kit)
        if gateway.authentic is not None:
            kits.add(gateway.authentic)
    answers += await gateway.missing(kits)
    return web.Response(body=pack_relay(answers), content_type=FRAMES_TYPE)


async def open_store(config: CentreConfig) -> Store:
    """The store with the media store the config names (:class:`BadCentreConfig` if S3
    refuses the key or lacks the bucket; an unreachable S3 only warns)."""
    media = await open_media(config)
    try:
        return await Store.open(
            config.db_path,
            config.media_dir,
            database=config.database,
            pool_size=config.database_pool,
            wait_s=config.database_wait_s,
            media=media,
        )
    except BaseException:
        media.close()
        raise


def make_app(config: CentreConfig, role: Role | None = None) -> web.Application:
    app = web.Application(middlewares=[refusals, kit_auth], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[ROLE] = role or Role()
    app[TLS] = TlsSlot()
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_gateways)
    app.cleanup_ctx.append(_exports)
    app.on_response_prepare.append(_tus_resumable)
    ingest.add_routes(app)
    orders.add_routes(app)
    tus.add_routes(app)
    export.add_routes(app)
    dashboard.add_routes(app)  # after the store: its sessions live there
    app.router.add_post("/v1/frames", post_frames)
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kit centre", description="Command-centre ingest service (指挥中心接收服务)."
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8440")
    parser.add_argument("--data", metavar="DIR", type=Path, help="store and media folder")
    parser.add_argument("--config", metavar="FILE", type=Path, help="TOML config file")
    parser.add_argument(
        "--database", metavar="URL", help="postgresql://… (default: SQLite in the data folder)"
    )
    parser.add_argument(
        "--workers", metavar="N", type=int, help="worker processes (PostgreSQL only; default 1)"
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> CentreConfig:
    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.data is not None:
        overrides["data_dir"] = args.data
    if args.database is not None:
        overrides["database"] = args.database
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.config is not None:
        return load_config(args.config, overrides)
    return build_config(overrides, "command line")


async def serve(
    config: CentreConfig,
    *,
    sock: socket.socket | None = None,
    role: Role | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGINT or SIGTERM (or ``stop``), then let running requests finish and close
    the store. A worker serves on ``sock``, the listening socket it shares."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(config, role), shutdown_timeout=10.0)
    await runner.setup()
    try:
        tls = None
        if config.tls:
            if config.tls_cert is not None and config.tls_key is not None:
                cert, key = config.tls_cert, config.tls_key
            else:
                cert, key = centre_certificate(config.keys_dir / "tls", list(config.tls_names))
            tls = CentreTls(runner.app[VERIFIER].security, cert, key)
            runner.app[TLS].tls = tls
        ssl_context = None if tls is None else tls.base
        site: web.BaseSite = (
            web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
            if sock is None
            else web.SockSite(runner, sock, ssl_context=ssl_context)
        )
        await site.start()
        log.info("centre listening on %s, data in %s", runner.addresses, config.data_dir)
        await stop.wait()
        log.info("centre stopping")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    """``kit centre``: 0 after a clean stop, 2 for a bad config or command line."""
    if argv and argv[0] in CENTRE_COMMANDS:
        return centre_command(argv)
    if argv and argv[0] in dashboard_cli.COMMANDS:
        return dashboard_cli.main(argv)
    args = _parse_args(argv)
    try:
        config = _config(args)
    except BadCentreConfig as err:
        print(err, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.workers > 1:
        from centre.workers import run_workers

        return run_workers(config)
    try:
        asyncio.run(serve(config))
    except BadCentreConfig as err:  # found when starting: the media store refused
        print(err, file=sys.stderr)
        return 2
    except (OSError, StoreUnavailable) as err:
        print(f"无法启动接收服务：{err} / cannot start the centre: {err}", file=sys.stderr)
        return 1
    return 0
