"""`kit web`: the aiohttp server of the kit's page; `kit web-password` sets a login.

Pages: status (live over server-sent events), report (no login), team map on offline
tiles, configuration (login). Every response carries a strict CSP ('self' only), every
POST a CSRF token, and nothing the page loads comes from outside the kit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from config.loader import BadConfig, Loaded, load, validate
from config.schema import KitConfig
from config.web import pages
from config.web.auth import (
    BadPassword,
    Csrf,
    LoginLimiter,
    Sessions,
    Users,
    read_new_password,
)
from config.web.configform import ALL_PROCESSES, ConfigFile, Stale, build_form, fingerprint
from config.web.hub import StatusHub
from config.web.i18n import COOKIE, LANGS, Tr
from config.web.reports import BadReport, ReportDesk, check_photo, parse_form
from config.web.restart import request_restart
from config.web.tiles import SAMPLE, TileSource
from config.web.wifi import write_hostapd
from edge import bus
from edge.client import AsyncEdgeClient
from edge.daemon import RPC_SOCKET
from edge.errors import EdgeUnavailable, KitError
from edge.sdnotify import systemd_notify
from security.cli import KIT_STATE
from security.trail import AuditTrail

log = logging.getLogger("web")

STATIC = Path(__file__).with_name("static")
VISITOR = "kit_v"
SESSION = "kit_s"
MAX_FORM_BYTES = 1024 * 1024  # config forms and TOML text; photos stream past this
MAX_FIELD_BYTES = 8 * 1024  # one text field of a report
MAX_STREAMS = 64  # live status pages open at once
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make form posts say Origin: null
    "Permissions-Policy": "geolocation=(self), camera=(self), microphone=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VISITOR_KEY = web.RequestKey("visitor", str)
FRESH_KEY = web.RequestKey("fresh_visitor", bool)


def _tiles_path(config: KitConfig) -> Path:
    if config.web.tiles is not None:
        p = config.web.tiles
        return p if p.is_absolute() else config.paths.data_dir / p
    default = config.paths.data_dir / "map.mbtiles"
    return default if default.exists() else SAMPLE


class KitWeb:
    """The page's state: config, edge client, logins, reports, tiles and the live status."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        config = loaded.config
        self.config_path = loaded.source
        web_dir = config.paths.data_dir / "web"
        self.edge = AsyncEdgeClient(
            config.endpoint(RPC_SOCKET), timeout_s=config.edge.rpc_timeout_s
        )
        self.users = Users(web_dir / "users.json")
        self.sessions = Sessions(idle_s=config.web.session_idle_min * 60.0)
        self.limiter = LoginLimiter()
        self.csrf = Csrf()
        self.desk = ReportDesk(self.edge, config.media_dir, web_dir / "reports.jsonl")
        self.trail = AuditTrail(config.paths.data_dir / KIT_STATE, config.kit.id or None, "web")
        self.file = ConfigFile(self.config_path, web_dir / "audit.jsonl", self.trail)
        self.tiles = TileSource(_tiles_path(config))
        self.hub = StatusHub(self.edge, config.endpoint(bus.SUB_SOCKET), config.paths.data_dir)
        self.streams = 0

    @property
    def config(self) -> KitConfig:
        return self.loaded.config

    def reloaded(self, config: KitConfig) -> None:
        """Settings the page itself uses apply at once (photo limits, idle time, map file)."""
        self.loaded = Loaded(config, self.config_path)
        self.sessions.idle_s = config.web.session_idle_min * 60.0
        path = _tiles_path(config)
        if path != self.tiles.path:
            with contextlib.suppress(Exception):
                new = TileSource(path)
                self.tiles.close()
                self.tiles = new

    # -- helpers ---------------------------------------------------------------------------

    def tr(self, request: web.Request) -> Tr:
        return Tr(request.cookies.get(COOKIE, "zh"))

    def token(self, request: web.Request) -> str:
        return self.csrf.token(request[VISITOR_KEY])

    def page(
        self,
        request: web.Request,
        *,
        title: str,
        body: str,
        active: str,
        scripts: tuple[str, ...] = (),
        data: dict[str, Any] | None = None,
        status: int = 200,
    ) -> web.Response:
        html = pages.layout(
            self.tr(request),
            title=title,
            body=body,
            active=active,
            csrf=self.token(request),
            kit_name=self.config.kit.name,
            path=request.path,
            scripts=scripts,
            data=data,
        )
        return web.Response(text=html, content_type="text/html", status=status)

    def user(self, request: web.Request) -> str | None:
        session = self.sessions.get(request.cookies.get(SESSION))
        return None if session is None else session.user

    # -- pages -----------------------------------------------------------------------------

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        tr = self.tr(request)
        return self.page(
            request,
            title=tr("状态", "Status"),
            body=pages.status_body(tr),
            active="status",
            scripts=("common.js", "status.js"),
            data={"snapshot": self.hub.snapshot},
        )

    async def report_page(self, request: web.Request) -> web.StreamResponse:
        tr = self.tr(request)
        w = self.config.web
        return self.page(
            request,
            title=tr("报告", "Report"),
            body=pages.report_body(tr, w.max_photos, w.max_photo_mb),
            active="report",
            scripts=("common.js", "slippy.js", "report.js"),
            data={"tileinfo": self.tiles.info()},
        )

    async def map_page(self, request: web.Request) -> web.StreamResponse:
        tr = self.tr(request)
        return self.page(
            request,
            title=tr("地图", "Map"),
            body=pages.map_body(tr),
            active="map",
            scripts=("common.js", "slippy.js", "map.js"),
            data={"tileinfo": self.tiles.info()},
        )

    async def set_lang(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info["code"]
        target = request.query.get("next", "/")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/"
        response = web.HTTPSeeOther(target)
        if code in LANGS:
            response.set_cookie(COOKIE, code, max_age=365 * 86400, samesite="Strict", httponly=True)
        raise response

    # -- live status -----------------------------------------------------------------------

    async def status_json(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.hub.snapshot, headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text="too many live pages open")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        self.streams += 1
        try:
            seen = -1
            while True:
                got = await self.hub.next(seen, timeout=15.0)
                if got is None:
                    await response.write(b": ping\n\n")  # keeps proxies and phones from timing out
                    continue
                snapshot, seen = got
                data = json.dumps(snapshot, ensure_ascii=False)
                await response.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, ConnectionError):
            return response
        finally:
            self.streams -= 1

    # -- reports ---------------------------------------------------------------------------

    async def file_report(self, request: web.Request) -> web.StreamResponse:
        w = self.config.web
        limit = w.max_photo_mb * 1024**2
        total = w.max_photos * limit + 256 * 1024
        if request.content_length is not None and request.content_length > total:
            return _refuse(
                413,
                "photos",
                f"上传过大：{request.content_length / 1e6:.1f} MB（上限 {total // 1024**2} MB）",
                f"upload too large: {request.content_length / 1e6:.1f} MB "
                f"(limit {total // 1024**2} MB)",
            )
        if not request.content_type.startswith("multipart/form-data"):
            return _refuse(400, "form", "需要表单数据", "multipart form data expected")
        fields: dict[str, str] = {}
        photos: list[bytes] = []
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    return _refuse(
                        400, "form", "不支持嵌套表单", "nested multipart is not supported"
                    )
                name = part.name or ""
                if name == "photos":
                    if not part.filename:
                        await part.release()
                        continue
                    if len(photos) >= w.max_photos:
                        return _refuse(
                            400,
                            "photos",
                            f"照片太多（最多 {w.max_photos} 张）",
                            f"too many photos (at most {w.max_photos})",
                        )
                    data = await _read_part(part, limit)
                    if data is None:
                        return _refuse(
                            413,
                            "photos",
                            f"照片过大：{part.filename}（上限 {w.max_photo_mb} MB）",
                            f"photo too large: {part.filename} (limit {w.max_photo_mb} MB)",
                        )
                    check_photo(data, limit)
                    photos.append(data)
                else:
                    value = await _read_part(part, MAX_FIELD_BYTES)
                    if value is None:
                        return _refuse(400, name, f"字段 {name} 过长", f"field {name} too long")
                    fields[name] = value.decode("utf-8", "replace")
            form = parse_form(fields)
            filed = await self.desk.file(form, photos)
        except BadReport as err:
            return _refuse(400, err.field, err.zh, err.en)
        except EdgeUnavailable as err:
            return _refuse(503, "", f"报告未受理：{err.zh}", f"report not filed: {err.en}")
        except KitError as err:
            return _refuse(400, "", err.zh, err.en)
        return web.json_response(
            {
                "ok": True,
                "seq": filed.seq,
                "uid": filed.uid,
                "kind": filed.kind,
                "priority": filed.priority,
                "state": "ACCEPTED",
                "photos": len(filed.photos),
                "photos_pending": filed.photos_pending,
            }
        )

    async def report_state(self, request: web.Request) -> web.StreamResponse:
        seq = _int(request.match_info["seq"])
        filed = None if seq is None else self.desk.find(seq)
        if filed is None:
            raise web.HTTPNotFound(text="no such report from this page")
        try:
            got = await self.edge.call({"op": "get", "seq": filed.seq})
        except KitError as err:
            return web.json_response({"seq": filed.seq, "state": None, "error": err.en})
        photo_states = []
        for p in filed.photos:
            with contextlib.suppress(KitError):
                photo_states.append((await self.edge.call({"op": "get", "seq": p["seq"]}))["state"])
        return web.json_response(
            {
                "seq": filed.seq,
                "state": got["state"],
                "link": got.get("link"),
                "photos": photo_states,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def photo(self, request: web.Request) -> web.StreamResponse:
        seq, index = _int(request.match_info["seq"]), _int(request.match_info["i"])
        filed = None if seq is None else self.desk.find(seq)
        if filed is None or index is None or not 0 <= index < len(filed.photos):
            raise web.HTTPNotFound()
        media_dir = self.config.media_dir.resolve()
        path = (media_dir / filed.photos[index]["thumb"]).resolve()
        if not path.is_relative_to(media_dir) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "image/webp"})

    # -- map -------------------------------------------------------------------------------

    async def map_data(self, request: web.Request) -> web.StreamResponse:
        try:  # fresh: a member's new position shows on the next refresh of the map
            snap: dict[str, Any] = await self.edge.call({"op": "status"})
        except KitError:
            snap = self.hub.raw or {}
        pos = snap.get("position")
        team = []
        for m in snap.get("team") or []:
            if (
                isinstance(m, dict)
                and isinstance(m.get("lat"), int | float)
                and isinstance(m.get("lon"), int | float)
            ):
                team.append(
                    {
                        k: m.get(k)
                        for k in (
                            "node",
                            "name",
                            "short",
                            "lat",
                            "lon",
                            "last_heard_ms",
                            "battery_pct",
                            "snr",
                            "age_s",
                        )
                    }
                )
        reports = [
            {
                "seq": r.seq,
                "kind": r.kind,
                "text": r.text,
                "count": r.count,
                "lat": r.lat,
                "lon": r.lon,
                "created_ms": r.created_ms,
                "photos": [f"/photos/{r.seq}/{i}" for i in range(len(r.photos))],
            }
            for r in self.desk.recent
            if r.lat is not None and r.lon is not None
        ]
        return web.json_response(
            {
                "kit": None
                if not pos
                else {"lat": pos["lat"], "lon": pos["lon"], "name": self.config.kit.name},
                "team": team,
                "reports": reports[-100:],
            },
            headers={"Cache-Control": "no-store"},
        )

    async def tile(self, request: web.Request) -> web.StreamResponse:
        z, x = _int(request.match_info["z"]), _int(request.match_info["x"])
        y = _int(request.match_info["y"])
        if z is None or x is None or y is None:
            raise web.HTTPNotFound()
        data = await asyncio.to_thread(self.tiles.tile, z, x, y)
        if data is None:
            raise web.HTTPNotFound()
        kind = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
        if data[:4] == b"RIFF":
            kind = "image/webp"
        return web.Response(
            body=data, content_type=kind, headers={"Cache-Control": "max-age=86400"}
        )

    # -- login -----------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        tr = self.tr(request)
        body = pages.login_body(tr, self.token(request), no_users=not self.users.any())
        return self.page(request, title=tr("登录", "Log in"), body=body, active="config")

    async def login(self, request: web.Request) -> web.StreamResponse:
        tr = self.tr(request)
        client = request.remote or "?"
        wait = self.limiter.wait_s(client)
        if wait > 0:
            return self._login_refused(request, tr, wait)
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        ok = await asyncio.to_thread(self.users.check, user, password)
        if not ok:
            wait = self.limiter.failed(client)
            log.warning("wrong password for %r from %s", user, client)
            await self.trail.login(user, client, ok=False, lock_s=wait)
            if wait > 0:
                return self._login_refused(request, tr, wait)
            body = pages.login_body(
                tr, self.token(request), tr("用户名或密码错误", "wrong user name or password")
            )
            return self.page(
                request, title=tr("登录", "Log in"), body=body, active="config", status=401
            )
        self.limiter.succeeded(client)
        log.info("%s logged in from %s", user, client)
        await self.trail.login(user, client, ok=True)
        response = web.HTTPSeeOther("/config")
        response.set_cookie(
            SESSION, self.sessions.start(user), httponly=True, samesite="Strict", path="/"
        )
        raise response

    def _login_refused(self, request: web.Request, tr: Tr, wait: float) -> web.Response:
        seconds = int(wait) + 1
        body = pages.login_body(
            tr,
            self.token(request),
            tr(
                f"密码错误次数过多，请 {seconds} 秒后再试",
                f"too many wrong passwords: try again in {seconds} s",
            ),
        )
        response = self.page(
            request, title=tr("登录", "Log in"), body=body, active="config", status=429
        )
        response.headers["Retry-After"] = str(seconds)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.end(request.cookies.get(SESSION))
        response = web.HTTPSeeOther("/")
        response.del_cookie(SESSION, path="/")
        raise response

    # -- configuration ---------------------------------------------------------------------

    def _require_user(self, request: web.Request) -> str:
        user = self.user(request)
        if user is None:
            raise web.HTTPSeeOther("/login")
        return user

    async def config_page(self, request: web.Request) -> web.StreamResponse:
        user = self._require_user(request)
        try:
            text, raw = self.file.read()
            config = validate(raw, self.config_path)
        except (BadConfig, OSError):
            raise web.HTTPSeeOther("/config/raw") from None
        return self._config_form(request, user, config, fingerprint(text))

    def _config_form(
        self,
        request: web.Request,
        user: str,
        config: KitConfig,
        base: str,
        *,
        errors: dict[str, list[str]] | None = None,
        submitted: dict[str, list[str]] | None = None,
        notice: str = "",
        status: int = 200,
    ) -> web.Response:
        tr = self.tr(request)
        body = pages.config_body(
            tr,
            form=build_form(config),
            csrf=self.token(request),
            base=base,
            user=user,
            errors=errors,
            submitted=submitted,
            notice=notice,
            audit=self.file.audit_entries(),
        )
        body += pages.wipe_card(tr, csrf=self.token(request), kit_id=config.kit.id)
        return self.page(
            request, title=tr("配置", "Configuration"), body=body, active="config", status=status
        )

    async def wipe_keys(self, request: web.Request) -> web.StreamResponse:
        """Destroy the kit's keys (a kit about to be abandoned): a login, the CSRF token
        (middleware) and this kit's id typed as confirmation."""
        user = self._require_user(request)
        post = await request.post()
        tr = self.tr(request)
        kit_id = self.config.kit.id
        if str(post.get("confirm", "")).strip() != str(kit_id):
            text = tr(
                f"未销毁：请输入本机编号 {kit_id} 以确认。",
                f"Not wiped: type this kit's id, {kit_id}, to confirm.",
            )
            return self.page(
                request,
                title=tr("销毁密钥", "Wipe keys"),
                body=pages.message_body(tr, tr("销毁密钥", "Wipe keys"), text),
                active="config",
                status=400,
            )
        from security.cli import wipe_kit_keys

        who = f"web: {self._who(request, user)}"
        wiped = await asyncio.to_thread(wipe_kit_keys, self.config, who)
        text = tr(
            f"已销毁 {len(wiped)} 个密钥文件。请关机；再次使用前须重新生成密钥并在指挥中心登记。",
            f"Wiped {len(wiped)} key files. Power the kit off; before it is used again it must "
            "be provisioned anew and enrolled at the centre.",
        )
        return self.page(
            request,
            title=tr("销毁密钥", "Wipe keys"),
            body=pages.message_body(tr, tr("密钥已销毁", "Keys wiped"), text),
            active="config",
        )

    def _who(self, request: web.Request, user: str) -> str:
        return f"{user}@{request.remote or '?'}"

    async def save_config(self, request: web.Request) -> web.StreamResponse:
        user = self._require_user(request)
        post = await request.post()
        form: dict[str, list[str]] = {}
        for key in post:
            if key not in form:
                form[key] = [str(v) for v in post.getall(key)]
        base = str(post.get("base", ""))
        try:
            text, raw = self.file.read()
            current = validate(raw, self.config_path)
        except (BadConfig, OSError):
            raise web.HTTPSeeOther("/config/raw") from None
        tr = self.tr(request)
        try:
            saved = await asyncio.to_thread(
                self.file.save_form, current, form, base, self._who(request, user)
            )
        except Stale as err:
            return self._config_form(
                request, user, current, fingerprint(text), errors=_errors(err), status=409
            )
        except BadConfig as err:
            return self._config_form(
                request, user, current, base, errors=_errors(err), submitted=form, status=400
            )
        notice = self._applied(
            tr, saved.config, [(c.path, *c.shown()) for c in saved.changes], saved.restart
        )
        return self._config_form(
            request, user, saved.config, fingerprint(self.config_path.read_bytes()), notice=notice
        )

    def _applied(
        self, tr: Tr, config: KitConfig, changes: list[tuple[str, str, str]], restart: list[str]
    ) -> str:
        if changes:
            self.reloaded(config)
        kit_processes = {n for n in restart if n in ALL_PROCESSES}
        if kit_processes:
            request_restart(config.paths.runtime_dir, kit_processes)
        if "hostapd" in restart:
            write_hostapd(config.wifi, config.paths.data_dir)
        return pages.saved_notice(tr, changes, restart, bool(kit_processes))

    async def raw_page(self, request: web.Request) -> web.StreamResponse:
        user = self._require_user(request)
        del user
        try:
            text = self.config_path.read_bytes()
        except OSError:
            text = b""
        issues = []
        try:
            validate(self.file.read()[1], self.config_path)
        except BadConfig as err:
            issues = err.issues
        except OSError as err:
            issues = [_issue(f"cannot read: {err}")]
        tr = self.tr(request)
        body = pages.raw_body(
            tr,
            csrf=self.token(request),
            base=fingerprint(text),
            text=text.decode("utf-8", "replace"),
            issues=issues,
            safe_mode=bool(issues),
        )
        return self.page(request, title=tr("配置文件", "Config file"), body=body, active="config")

    async def save_raw(self, request: web.Request) -> web.StreamResponse:
        user = self._require_user(request)
        post = await request.post()
        text, base = str(post.get("text", "")), str(post.get("base", ""))
        tr = self.tr(request)
        try:
            saved = await asyncio.to_thread(
                self.file.save_text, text, base, self._who(request, user)
            )
        except BadConfig as err:
            current = self.config_path.read_bytes()
            body = pages.raw_body(
                tr,
                csrf=self.token(request),
                base=fingerprint(current) if isinstance(err, Stale) else base,
                text=text,
                issues=err.issues,
                safe_mode=False,
                notice=pages.not_saved(tr, len(err.issues)),
            )
            return self.page(
                request, title=tr("配置文件", "Config file"), body=body, active="config", status=400
            )
        notice = self._applied(
            tr, saved.config, [(c.path, *c.shown()) for c in saved.changes], saved.restart
        )
        current = self.config_path.read_bytes()
        body = pages.raw_body(
            tr,
            csrf=self.token(request),
            base=fingerprint(current),
            text=current.decode(),
            issues=[],
            safe_mode=False,
            notice=notice,
        )
        return self.page(request, title=tr("配置文件", "Config file"), body=body, active="config")


def _issue(message: str) -> Any:
    from config.loader import ConfigIssue

    return ConfigIssue("", message)


def _errors(err: BadConfig) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for issue in err.issues:
        out.setdefault(issue.path, []).append(issue.message)
    return out


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[0-9]{1,11}", text) else None  # ASCII digits only


def _refuse(status: int, field: str, zh: str, en: str) -> web.Response:
    return web.json_response({"ok": False, "field": field, "zh": zh, "en": en}, status=status)


async def _read_part(part: Any, limit: int) -> bytes | None:
    """The part's bytes, or None as soon as it passes ``limit`` (the rest is not kept)."""
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


# -- middlewares ---------------------------------------------------------------------------


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.host


def make_app(kit: KitWeb) -> web.Application:
    @web.middleware
    async def visitor_and_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        visitor = request.cookies.get(VISITOR)
        fresh = visitor is None or len(visitor) > 64
        request[VISITOR_KEY] = secrets.token_urlsafe(18) if fresh or visitor is None else visitor
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            token = request.headers.get("X-CSRF-Token")
            if token is None and request.content_type == "application/x-www-form-urlencoded":
                token = str((await request.post()).get("csrf", ""))
            if (
                fresh
                or not _same_origin(request)
                or not kit.csrf.valid(request[VISITOR_KEY], token)
            ):
                tr = kit.tr(request)
                return web.Response(
                    status=403,
                    text=tr(
                        "请求被拒绝：页面已过期（CSRF），请刷新页面后重试",
                        "refused: the page is out of date (CSRF); reload it and try again",
                    ),
                )
        request[FRESH_KEY] = fresh
        return await handler(request)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        if request.get(FRESH_KEY):  # headers are final here: add the cookie line itself
            response.headers.add(
                "Set-Cookie", f"{VISITOR}={request[VISITOR_KEY]}; HttpOnly; Path=/; SameSite=Strict"
            )
        if "Cache-Control" not in response.headers and not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"

    app = web.Application(middlewares=[visitor_and_csrf], client_max_size=MAX_FORM_BYTES)
    app.on_response_prepare.append(headers)
    r = app.router
    r.add_get("/", kit.status_page)
    r.add_get("/report", kit.report_page)
    r.add_get("/map", kit.map_page)
    r.add_get("/lang/{code}", kit.set_lang)
    r.add_get("/api/status", kit.status_json)
    r.add_get("/events", kit.events)
    r.add_post("/api/reports", kit.file_report)
    r.add_get("/api/reports/{seq}", kit.report_state)
    r.add_get("/photos/{seq}/{i}", kit.photo)
    r.add_get("/api/map", kit.map_data)
    r.add_get("/tiles/{z}/{x}/{y}.png", kit.tile)
    r.add_get("/login", kit.login_page)
    r.add_post("/login", kit.login)
    r.add_post("/logout", kit.logout)
    r.add_get("/config", kit.config_page)
    r.add_post("/config", kit.save_config)
    r.add_get("/config/raw", kit.raw_page)
    r.add_post("/config/raw", kit.save_raw)
    r.add_post("/config/wipe-keys", kit.wipe_keys)
    r.add_static("/static", STATIC)
    return app


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    loaded: Loaded,
    stop: asyncio.Event,
    *,
    listen: str | None = None,
    ready: Callable[[int], None] | None = None,
) -> None:
    kit = KitWeb(loaded)
    app = make_app(kit)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = parse_listen(listen or loaded.config.web.listen)
    site = web.TCPSite(runner, host, port)
    tasks = [asyncio.create_task(kit.hub.run()), asyncio.create_task(kit.hub.watch_bus())]
    try:
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("web page on http://%s:%d/", host, bound)
        if not kit.users.any():
            log.warning(
                "没有管理密码：配置页无法登录 / no admin password: `kit web-password` sets one"
            )
        if ready:
            ready(bound)
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
        await kit.edge.close()
        kit.tiles.close()


def main(config_path: Path | None = None, listen: str | None = None) -> int:
    """Run the web page until SIGTERM/SIGINT (what systemd and `kit run` start)."""
    loaded = load(config_path)
    logging.basicConfig(
        level=loaded.config.log.level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if loaded.safe_mode:
        log.error("安全模式 / SAFE MODE: config %s has errors; the page shows them", loaded.source)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with systemd_notify(stop) as notifier:
            await serve(
                loaded, stop, listen=listen, ready=lambda port: notifier.ready(f"web on :{port}")
            )

    try:
        asyncio.run(run())
    except OSError as err:
        log.error("网页无法启动 / cannot start the web page: %s", err)
        return 1
    return 0


def password_main(config_path: Path | None, user: str, from_stdin: bool) -> int:
    """`kit web-password`: set (or change) a login for the configuration pages."""
    loaded = load(config_path)
    users = Users(loaded.config.paths.data_dir / "web" / "users.json")
    password = read_new_password(from_stdin)
    if password is None:
        return 1
    try:
        users.set(user, password)
    except BadPassword as err:
        print(f"错误 / error: {err}", file=sys.stderr)
        return 2
    print(f"已设置 / set: {user} ({users.path})")
    return 0
