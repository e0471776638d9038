"""The dashboard's pages and JSON: login, the page, kits, feed, tracks, media, live events.

Every answer carries a strict CSP ('self' only): the page loads nothing from outside the
centre, its map comes from an MBTiles file in the data folder (or the kit's bundled
sample area), and its scripts are the kit page's own helpers plus ``dashboard.js``.
"""

# ruff: noqa: E501  (HTML templates with their bilingual text, kept whole, as config/web/pages.py)
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from aiohttp import web

from centre.dashboard import queries
from centre.dashboard.access import ACCESS, SESSION_COOKIE, Access, Operator, same_origin
from centre.keys import CONFIG, STORE
from centre.mediastore import MediaMissing
from config.web.i18n import COOKIE, LANGS, Tr
from config.web.pages import esc, json_block
from config.web.server import CSP, SECURITY_HEADERS
from config.web.server import STATIC as KIT_STATIC
from config.web.tiles import SAMPLE, TileSource
from media.voice import VoiceError
from media.voice import decode as decode_voice

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
POLL_S = 1.0  # how often a live page's stream looks for new items
PING_S = 15.0
MAX_STREAMS = 64  # live pages open at once, per worker
CODEC2 = "audio/x-codec2"
TILES = web.AppKey("dashboard_tiles", TileSource)
STOPPING = web.AppKey("dashboard_stopping", asyncio.Event)
STREAMS = web.AppKey("dashboard_streams", list)
_INT = re.compile(r"[0-9]{1,10}\Z")

# Strings the script shows, by key (common.js's t()).
STRINGS: dict[str, tuple[str, str]] = {
    "never": ("从未", "never"),
    "ago": ("{n} 秒前", "{n} s ago"),
    "min_ago": ("{n} 分钟前", "{n} min ago"),
    "not_reported": ("未上报", "not reported"),
    "copies": ("{n} 份", "{n} copies"),
    "via": ("经 {link}", "via {link}"),
    "received": ("收到", "received"),
    "created": ("生成", "created"),
    "download": ("下载", "download"),
    "no_file": ("文件尚未到达", "file not here yet"),
    "kit": ("套件", "kit"),
    "member": ("队员", "member"),
    "battery": ("电量", "battery"),
    "backlog": ("积压", "backlog"),
    "status_age": ("状态生成于 {age}", "status made {age}"),
    "status_clock": ("（套件时钟未校准，按收到时间）", "(kit clock not set: time received)"),
    "hours_left": ("约剩 {n} 小时", "about {n} h left"),
    "on_mains": ("外部供电", "on mains"),
    "power_normal": ("正常模式", "normal mode"),
    "power_save": ("省电模式", "power saving"),
    "power_critical": ("电量危急", "battery critical"),
    "battery_unknown": ("电量未知", "battery unknown"),
    "link_up": ("在线", "up"),
    "link_down": ("离线", "down"),
    "links_more": ("另有 {up} 条在线、{down} 条离线", "{up} more up, {down} more down"),
    "gnss_fix": ("已定位", "GNSS fix"),
    "gnss_no_fix": ("无定位", "no GNSS fix"),
    "disk_used": ("磁盘已用 {n} %", "disk {n} % used"),
    "urgent_backlog": ("P0 {p0} · P1 {p1}", "P0 {p0} · P1 {p1}"),
    "state_queued": ("排队中", "queued"),
    "state_sent": ("已发出 {n} 次", "sent {n}×"),
    "state_delivered": ("套件已确认（经 {link}）", "acknowledged by the kit (via {link})"),
    "handheld": ("已送达 {who}", "delivered to {who}"),
    "handheld_failed": ("未能送达队员：{why}", "not delivered to the member: {why}"),
    # Meshtastic's routing errors, as an operator reads them.
    "mesh_MAX_RETRANSMIT": ("无应答，已多次重试", "no answer after every retry"),
    "mesh_TIMEOUT": ("超时无应答", "timed out"),
    "mesh_NO_RESPONSE": ("无应答", "no response"),
    "mesh_NO_ROUTE": ("无路由", "no route to the member"),
    "mesh_GOT_NAK": ("对方拒收", "refused by the member's radio"),
    "mesh_BAD_DESTINATION": ("队员编号无效", "no such member"),
    "mesh_TOO_LARGE": ("消息过长", "message too long"),
    "mesh_DUTY_CYCLE_LIMIT": ("信道占用超限，稍后重试", "duty-cycle limit, try later"),
    "mesh_NO_CHANNEL": ("信道不符", "no such channel"),
    "order_sent": ("指令已排队 #{n}", "order queued #{n}"),
    "live": ("实时", "live"),
    "offline": ("连接中断，重连中…", "connection lost, reconnecting…"),
    "whole_team": ("全体队员 (^all)", "whole team (^all)"),
    "the_kit": ("套件本身", "the kit itself"),
    "no_items": ("没有符合条件的条目", "no items match"),
    "path": ("投递路径", "delivery path"),
    "copy_n": ("第 {n} 份", "copy {n}"),
    "first_copy": ("最先到达", "first"),
    "from_addr": ("来自 {via}", "from {via}"),
    "relayed_by": ("经套件 {kit} 中继", "relayed by kit {kit}"),
    "unrecorded": ("另有 {n} 份到达时尚无记录", "{n} more copies arrived before paths were kept"),
}
KIND_NAMES: dict[str, tuple[str, str]] = {
    "sos": ("SOS 求救", "SOS"),
    "trapped": ("被困", "trapped"),
    "casualties": ("伤亡", "casualties"),
    "needs": ("需求", "needs"),
    "situation": ("灾情", "situation"),
    "message": ("消息", "message"),
    "receipt": ("回执", "receipt"),
    "other": ("其他", "other"),
    "track": ("轨迹", "track"),
    "sensor": ("传感器", "sensor"),
    "thumbnail": ("缩略图", "thumbnail"),
    "preview": ("预览视频", "preview clip"),
    "voice": ("语音", "voice note"),
    "photo": ("照片", "photo"),
    "video": ("视频片段", "video segment"),
    "audio": ("录音", "audio"),
    "audit": ("审计日志", "audit log"),
}
PRIORITY_NAMES = (
    ("生命", "life"),
    ("报告", "report"),
    ("轨迹", "track"),
    ("预览", "preview"),
    ("大文件", "bulk"),
)


def tr_of(request: web.Request) -> Tr:
    return Tr(request.cookies.get(COOKIE, "zh"))


def _tiles_path(request_app: web.Application) -> Path:
    config = request_app[CONFIG]
    if config.dashboard.tiles is not None:
        p = config.dashboard.tiles
        return p if p.is_absolute() else config.data_dir / p
    default = config.data_dir / "map.mbtiles"
    return default if default.exists() else SAMPLE


def layout(
    tr: Tr,
    *,
    title: str,
    body: str,
    csrf: str = "",
    data: dict[str, object] | None = None,
    scripts: tuple[str, ...] = (),
) -> str:
    other = "en" if tr.code == "zh" else "zh"
    switch = f'<a class="lang" href="/dashboard/lang/{other}">{"English" if other == "en" else "中文"}</a>'
    blocks = json_block("strings", {k: tr(*v) for k, v in STRINGS.items()})
    for key, value in (data or {}).items():
        blocks += json_block(key, value)
    tags = "".join(f'<script src="{s}" defer></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="{tr.html_lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf" content="{esc(csrf)}">
<title>{esc(title)}</title>
<link rel="stylesheet" href="/dashboard/kit-static/app.css">
<link rel="stylesheet" href="/dashboard/static/dashboard.css">{tags}</head>
<body class="dash"><header><strong class="kit">{esc(tr("指挥中心看板", "Command centre dashboard"))}</strong>
<span id="live" class="live"></span>{switch}</header>
<main>{body}</main>{blocks}</body></html>"""


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status, headers=headers)


# -- login ---------------------------------------------------------------------------------


def login_body(tr: Tr, message: str = "", *, no_operators: bool = False) -> str:
    if no_operators:
        return (
            f"<h1>{esc(tr('看板需要登录', 'The dashboard needs a login'))}</h1>"
            f'<p class="error">{esc(tr("尚未添加操作员（没有默认密码）。在指挥中心运行：", "No operator has been added (there is no default password). On the centre, run:"))}</p>'
            "<pre>kit centre operator add NAME --config centre.toml</pre>"
        )
    msg = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
    return f"""<h1>{esc(tr("操作员登录", "Operator login"))}</h1>{msg}
<form method="post" action="/dashboard/login" class="login">
<label class="field">{esc(tr("操作员", "Operator"))}<input name="user" autocomplete="username" required></label>
<label class="field">{esc(tr("密码", "Password"))}<input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit" class="primary">{esc(tr("登录", "Log in"))}</button></form>"""


async def login_page(request: web.Request) -> web.StreamResponse:
    tr = tr_of(request)
    access = request.app[ACCESS]
    no_operators = not access.users.any()
    if no_operators:
        log.warning(
            "没有操作员：看板无法登录 / no operator: `kit centre operator add NAME` adds one"
        )
    body = login_body(tr, no_operators=no_operators)
    return _html(layout(tr, title=tr("登录", "Log in"), body=body))


def _refused_login(tr: Tr, wait: float) -> web.Response:
    seconds = int(wait) + 1
    message = tr(
        f"密码错误次数过多，请 {seconds} 秒后再试",
        f"too many wrong passwords: try again in {seconds} s",
    )
    page = layout(tr, title=tr("登录", "Log in"), body=login_body(tr, message))
    return _html(page, 429, {"Retry-After": str(seconds)})


async def login(request: web.Request) -> web.StreamResponse:
    tr = tr_of(request)
    access = request.app[ACCESS]
    if not same_origin(request):
        return _html(layout(tr, title="403", body=login_body(tr, "CSRF")), 403)
    client = request.remote or "?"
    wait = await access.limiter.wait_s(client)
    if wait > 0:
        return _refused_login(tr, wait)
    form = await request.post()
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    if not await asyncio.to_thread(access.users.check, user, password):
        wait = await access.limiter.failed(client)
        log.warning("dashboard: wrong password for %r from %s", user, client)
        await access.trail.login(user, client, ok=False, lock_s=wait)
        if wait > 0:
            return _refused_login(tr, wait)
        body = login_body(tr, tr("操作员或密码错误", "wrong operator name or password"))
        return _html(layout(tr, title=tr("登录", "Log in"), body=body), 401)
    await access.limiter.succeeded(client)
    log.info("dashboard: operator %s logged in from %s", user, client)
    await access.trail.login(user, client, ok=True)
    response = web.HTTPSeeOther("/dashboard")
    response.set_cookie(
        SESSION_COOKIE, await access.start(user), httponly=True, samesite="Strict", path="/"
    )
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    access = request.app[ACCESS]
    operator = await access.operator(request)
    if operator is not None:
        if not access.csrf_ok(request, operator):
            raise web.HTTPForbidden(text="CSRF")
        await access.end(operator.token)
    response = web.HTTPSeeOther("/dashboard/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def set_lang(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther("/dashboard")
    if request.match_info["code"] in LANGS:
        response.set_cookie(
            COOKIE,
            request.match_info["code"],
            max_age=365 * 86400,
            samesite="Strict",
            httponly=True,
        )
    raise response


# -- the page ------------------------------------------------------------------------------


async def _operator(request: web.Request) -> Operator:
    """The logged-in operator; a page request without one goes to the login, an API request
    gets 401."""
    operator = await request.app[ACCESS].operator(request)
    if operator is None:
        if request.path == "/dashboard":
            raise web.HTTPSeeOther("/dashboard/login")
        raise web.HTTPUnauthorized(text="请先登录 / log in first")
    return operator


def dashboard_body(tr: Tr, operator: str) -> str:
    kinds = "".join(
        f'<option value="{k}">{esc(tr(*v))}</option>'
        for k, v in KIND_NAMES.items()
        if k not in ("receipt",)
    )
    prios = "".join(
        f'<option value="{i}">P{i} {esc(tr(*v))}</option>' for i, v in enumerate(PRIORITY_NAMES)
    )

    def t(zh: str, en: str) -> str:
        return esc(tr(zh, en))

    return f"""<div class="dash-grid">
<section class="card mapcard"><h2>{t("地图", "Map")} <small id="map-name"></small></h2>
<div id="map" class="map dash-map"></div>
<p class="legend"><span class="dot kit"></span>{t("套件", "kit")}<span class="dot member"></span>{t("队员", "member")}<span class="dot report"></span>{t("报告", "report")}</p>
<div id="popup" class="popup" hidden></div></section>
<section class="card"><h2>{t("套件", "Kits")}</h2><div class="scroll"><table class="kits"><thead><tr>
<th>{t("套件", "Kit")}</th><th>{t("最近联系", "Last contact")}</th><th>{t("链路", "Links")}</th>
<th>{t("电量", "Battery")}</th><th>{t("积压", "Backlog")}</th><th>{t("位置", "Position")}</th></tr></thead>
<tbody id="kit-rows"></tbody></table></div></section>
<section class="card feedcard"><h2>{t("报告", "Reports")}</h2>
<form id="filters" class="filters">
<label>{t("类型", "Kind")}<select name="kind"><option value="">{t("全部报告", "all reports")}</option>{kinds}</select></label>
<label>{t("优先级", "Priority")}<select name="priority"><option value="">{t("全部", "all")}</option>{prios}</select></label>
<label>{t("自", "From")}<input type="datetime-local" name="since"></label>
<label>{t("至", "To")}<input type="datetime-local" name="until"></label>
<label class="inline"><input type="checkbox" name="area"> {t("仅地图范围内", "only the map's area")}</label>
</form>
<ul id="feed" class="feed"></ul></section>
<section class="card"><h2>{t("指令", "Orders")}</h2>
<form id="order" class="order">
<label>{t("套件", "Kit")}<select name="kit_id" required></select></label>
<label>{t("对象", "To")}<input name="target" list="targets" placeholder="{t("空：套件本身；^all：全体；!节点号：队员", "empty: the kit; ^all: team; !node: member")}"></label>
<datalist id="targets"></datalist>
<label>{t("内容", "Text")}<input name="text" required maxlength="200"></label>
<button type="submit">{t("发送", "Send")}</button> <span id="order-msg" class="msg"></span></form>
<table class="orders"><thead><tr><th>#</th><th>{t("对象", "To")}</th><th>{t("内容", "Text")}</th><th>{t("状态", "State")}</th></tr></thead>
<tbody id="order-rows"></tbody></table>
<form method="post" action="/dashboard/logout" id="logout" class="inline"><button type="submit">{t("退出", "Log out")} {esc(operator)}</button></form>
</section></div>"""


async def page(request: web.Request) -> web.StreamResponse:
    operator = await _operator(request)
    tr = tr_of(request)
    access = request.app[ACCESS]
    html = layout(
        tr,
        title=tr("指挥中心看板", "Command centre dashboard"),
        body=dashboard_body(tr, operator.name),
        csrf=access.csrf.token(operator.token),
        data={
            "tileinfo": request.app[TILES].info(),
            "kinds": {k: tr(*v) for k, v in KIND_NAMES.items()},
        },
        scripts=(
            "/dashboard/kit-static/common.js",
            "/dashboard/kit-static/slippy.js",
            "/dashboard/static/dashboard.js",
        ),
    )
    return _html(html)


# -- JSON ----------------------------------------------------------------------------------


def _json(value: object) -> web.Response:
    return web.json_response(
        value,
        dumps=lambda v: json.dumps(v, ensure_ascii=False),
        headers={"Cache-Control": "no-store"},
    )


async def api_kits(request: web.Request) -> web.StreamResponse:
    await _operator(request)
    return _json({"kits": await queries.kits(request.app[STORE])})


async def api_items(request: web.Request) -> web.StreamResponse:
    await _operator(request)
    try:
        filters = queries.Filters.parse(dict(request.query))
    except ValueError as err:
        raise web.HTTPBadRequest(text=str(err)) from None
    store, limit = request.app[STORE], request.app[CONFIG].dashboard.feed_limit
    return _json(
        {"items": await queries.items(store, filters, limit), "next": await queries.top_feed(store)}
    )


async def api_item(request: web.Request) -> web.StreamResponse:
    """One item with its delivery path (every copy: link, when, from where)."""
    await _operator(request)
    kit_id, seq = _ids(request)
    detail = await queries.item_detail(request.app[STORE], kit_id, seq)
    if detail is None:
        raise web.HTTPNotFound(text="没有此条目 / no such item")
    return _json(detail)


async def api_tracks(request: web.Request) -> web.StreamResponse:
    await _operator(request)
    raw = request.query.get("since_ms", "0")
    if not raw.isdigit() or len(raw) > 15:
        raise web.HTTPBadRequest(text="since_ms 应为毫秒数 / since_ms must be milliseconds")
    return _json({"members": await queries.tracks(request.app[STORE], int(raw))})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: each batch of items given feed positions past ``?after=``."""
    await _operator(request)
    raw = request.query.get("after", "0")
    if not raw.isdigit() or len(raw) > 18:
        raise web.HTTPBadRequest(text="after 应为整数 / after must be an integer")
    streams = request.app[STREAMS]
    if len(streams) >= MAX_STREAMS:
        raise web.HTTPServiceUnavailable(text="实时页面过多 / too many live pages open")
    after = int(raw)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    stopping = request.app[STOPPING]
    store = request.app[STORE]
    streams.append(response)
    try:
        await response.write(b"retry: 2000\n\n")
        quiet = 0.0
        while not stopping.is_set():
            batch = await queries.newer(store, after, 200)
            if batch:
                after = max(after, *(i["feed"] for i in batch))
                data = json.dumps({"items": batch, "next": after}, ensure_ascii=False)
                await response.write(f"data: {data}\n\n".encode())
                quiet = 0.0
                continue
            if quiet >= PING_S:
                await response.write(b": ping\n\n")
                quiet = 0.0
            try:
                await asyncio.wait_for(stopping.wait(), POLL_S)
            except TimeoutError:
                quiet += POLL_S
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        streams.remove(response)
    return response


# -- media and tiles -----------------------------------------------------------------------


def _ids(request: web.Request) -> tuple[int, int]:
    kit, seq = request.match_info["kit"], request.match_info["seq"]
    if not _INT.match(kit) or not _INT.match(seq):
        raise web.HTTPNotFound()
    return int(kit), int(seq)


async def media(request: web.Request) -> web.StreamResponse:
    """An item's file (Range requests for video); a Codec2 voice note decoded to WAV."""
    await _operator(request)
    kit_id, seq = _ids(request)
    config = request.app[CONFIG]
    found = await queries.media_path(request.app[STORE], kit_id, seq)
    if found is None:
        raise web.HTTPNotFound(text="没有此文件 / no such file")
    rel, mime = found
    files = request.app[STORE].media  # the folder, or S3 streamed through the centre
    try:
        if mime == CODEC2:
            wav = config.data_dir / "dashboard" / "decoded" / f"{kit_id}-{seq}.wav"
            if not wav.exists():
                wav.parent.mkdir(parents=True, exist_ok=True)
                part = wav.with_name(f".{wav.name}.part")
                async with files.local_copy(rel) as path:
                    try:
                        await asyncio.to_thread(decode_voice, path, part)
                    except VoiceError as err:
                        raise web.HTTPUnprocessableEntity(text=str(err)) from None
                part.replace(wav)
            return web.FileResponse(wav, headers=_media_headers(kit_id, seq, ".wav", "audio/wav"))
        suffix = PurePosixPath(rel).suffix
        return await files.respond(request, rel, _media_headers(kit_id, seq, suffix, mime))
    except MediaMissing:
        raise web.HTTPNotFound(text="没有此文件 / no such file") from None


def _media_headers(kit_id: int, seq: int, suffix: str, mime: str) -> dict[str, str]:
    return {
        "Content-Type": mime,
        "Content-Disposition": f'inline; filename="{kit_id}-{seq}{suffix}"',
        "Cache-Control": "private, max-age=3600",
    }


_TILE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"))


async def tile(request: web.Request) -> web.StreamResponse:
    z, x, y = (request.match_info[k] for k in ("z", "x", "y"))
    if not all(_INT.match(v) for v in (z, x, y)):
        raise web.HTTPNotFound()
    data = await asyncio.to_thread(request.app[TILES].tile, int(z), int(x), int(y))
    if data is None:
        raise web.HTTPNotFound()
    kind = next((t for magic, t in _TILE_TYPES if data.startswith(magic)), "image/png")
    return web.Response(body=data, content_type=kind, headers={"Cache-Control": "max-age=86400"})


# -- wiring --------------------------------------------------------------------------------


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(("/dashboard", "/tiles/")):
        response.headers.update(SECURITY_HEADERS)
        response.headers["Content-Security-Policy"] = CSP + "; media-src 'self'"
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"


async def start(app: web.Application) -> AsyncIterator[None]:
    """The access rules and the map (after the store opened); live streams end on shutdown."""
    access = Access(app[CONFIG], app[STORE])
    await access.prepare()
    app[ACCESS] = access
    tiles = TileSource(_tiles_path(app))
    app[TILES] = tiles
    try:
        yield
    finally:
        tiles.close()


async def _stop_streams(app: web.Application) -> None:
    app[STOPPING].set()


def add_routes(app: web.Application) -> None:
    app[STOPPING] = asyncio.Event()
    app[STREAMS] = []
    app.cleanup_ctx.append(start)
    app.on_shutdown.append(_stop_streams)
    app.on_response_prepare.append(_headers)
    r = app.router
    r.add_get("/dashboard", page)
    r.add_get("/dashboard/login", login_page)
    r.add_post("/dashboard/login", login)
    r.add_post("/dashboard/logout", logout)
    r.add_get("/dashboard/lang/{code}", set_lang)
    r.add_get("/dashboard/api/kits", api_kits)
    r.add_get("/dashboard/api/items", api_items)
    r.add_get("/dashboard/api/items/{kit}/{seq}", api_item)
    r.add_get("/dashboard/api/tracks", api_tracks)
    r.add_get("/dashboard/events", events)
    r.add_get("/dashboard/media/{kit}/{seq}", media)
    r.add_get("/tiles/{z}/{x}/{y}.png", tile)
    r.add_static("/dashboard/static", STATIC)
    r.add_static("/dashboard/kit-static", KIT_STATIC)
