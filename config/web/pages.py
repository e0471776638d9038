"""The pages' HTML, built with every outside value escaped (reports, names, config values)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from config.loader import ConfigIssue
from config.web.configform import FormField, FormGroup
from config.web.i18n import KIND_NAMES, Tr, script_strings
from config.web.reports import KINDS


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def json_block(element_id: str, data: object) -> str:
    """Data for the scripts in a non-executable block; ``<`` escaped so it cannot end the tag."""
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


NAV = (
    ("status", "/", "状态", "Status"),
    ("report", "/report", "报告", "Report"),
    ("map", "/map", "地图", "Map"),
    ("config", "/config", "配置", "Config"),
)


def layout(
    tr: Tr,
    *,
    title: str,
    body: str,
    active: str,
    csrf: str,
    kit_name: str,
    path: str,
    scripts: tuple[str, ...] = (),
    data: dict[str, Any] | None = None,
) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=on" if key == active else ""}>{esc(tr(zh, en))}</a>'
        for key, href, zh, en in NAV
    )
    other = "en" if tr.code == "zh" else "zh"
    switch = f'<a class="lang" href="/lang/{other}?next={esc(path)}">{"English" if other == "en" else "中文"}</a>'
    blocks = json_block("strings", script_strings(tr))
    for key, value in (data or {}).items():
        blocks += json_block(key, value)
    tags = "".join(f'<script src="/static/{s}" defer></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="{tr.html_lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf" content="{esc(csrf)}">
<title>{esc(title)} · {esc(kit_name)}</title>
<link rel="stylesheet" href="/static/app.css">{tags}</head>
<body><header><strong class="kit">{esc(kit_name)}</strong><nav>{nav}</nav>{switch}</header>
<main>{body}</main>{blocks}</body></html>"""


def status_body(tr: Tr) -> str:
    def card(key: str, zh: str, en: str, inner: str = "") -> str:
        return f'<section class="card" id="{key}"><h2>{esc(tr(zh, en))}</h2>{inner}</section>'

    queue = "".join(
        f'<div class="q"><span class="p">P{i}</span><span class="n" id="q-P{i}">–</span>'
        f"<small>{esc(tr(zh, en))}</small></div>"
        for i, (zh, en) in enumerate(
            (
                ("生命", "life"),
                ("报告", "report"),
                ("轨迹", "track"),
                ("预览", "preview"),
                ("大文件", "bulk"),
            )
        )
    )
    return (
        '<div id="banner" class="banner" hidden></div>'
        '<div class="grid">'
        + card(
            "links", "链路", "Links", '<table class="links"><tbody id="link-rows"></tbody></table>'
        )
        + card("queue", "待发送", "Queued", f'<div class="queue">{queue}</div>')
        + card(
            "battery",
            "电量",
            "Battery",
            '<div class="big" id="bat-pct">–</div><div id="bat-info"></div>',
        )
        + card(
            "gnss",
            "定位与时钟",
            "Position and clock",
            '<div class="big" id="gnss-fix">–</div><div id="gnss-info"></div><div id="clock"></div>',
        )
        + card("delivered", "最近送达", "Recently delivered", '<ul id="delivered-list"></ul>')
        + card("storage", "存储", "Storage", '<div id="storage-info"></div>')
        + card("team", "队员", "Team", '<div id="team-info"></div>')
        + "</div>"
    )


def report_body(tr: Tr, max_photos: int, max_photo_mb: int) -> str:
    kinds = "".join(
        f'<label class="kind kind-{k.value}"><input type="radio" name="kind" value="{k.value}"'
        f"{' checked' if k.value == 'situation' else ''}><span>{esc(tr(*KIND_NAMES[k.value]))}</span></label>"
        for k in KINDS
    )
    photos = (
        f'<label class="field">{esc(tr("照片", "Photos"))} '
        f"<small>{esc(tr(f'最多 {max_photos} 张，每张不超过 {max_photo_mb} MB', f'up to {max_photos}, each at most {max_photo_mb} MB'))}</small>"
        f'<input type="file" id="photos" name="photos" accept="image/*" capture="environment" multiple></label>'
        '<div id="previews" class="previews"></div>'
        if max_photos
        else ""
    )
    return f"""<h1>{esc(tr("提交报告", "File a report"))}</h1>
<p class="hint">{esc(tr("无需登录。报告先保存在套件中，任何链路可用时即发往指挥中心。", "No login needed. The kit keeps the report and sends it to the centre over any link that is up."))}</p>
<form id="report-form" novalidate data-max-photos="{max_photos}" data-max-mb="{max_photo_mb}">
<fieldset class="kinds"><legend>{esc(tr("类型", "Kind"))}</legend>{kinds}</fieldset>
<label class="field">{esc(tr("人数", "Number of people"))}<input type="number" name="count" min="0" max="1000000" inputmode="numeric"></label>
<label class="field">{esc(tr("说明", "Description"))}<textarea name="text" rows="4" maxlength="2000"></textarea></label>
<fieldset><legend>{esc(tr("位置", "Position"))}</legend>
<div class="buttons"><button type="button" id="pos-phone">{esc(tr("手机定位", "From the phone"))}</button>
<button type="button" id="pos-kit">{esc(tr("套件定位", "From the kit's GNSS"))}</button>
<button type="button" id="pos-map">{esc(tr("地图点选", "Tap on the map"))}</button></div>
<div class="latlon"><label>{esc(tr("纬度", "Latitude"))}<input name="lat" id="lat" inputmode="decimal"></label>
<label>{esc(tr("经度", "Longitude"))}<input name="lon" id="lon" inputmode="decimal"></label></div>
<input type="hidden" name="position_source" id="position_source"><input type="hidden" name="accuracy" id="accuracy">
<div id="pick-map" class="map small" hidden></div><p id="pos-msg" class="msg"></p></fieldset>
{photos}
<button type="submit" class="primary" id="submit">{esc(tr("提交报告", "File the report"))}</button>
<p id="form-msg" class="msg" role="status"></p></form>
<section class="card"><h2>{esc(tr("我提交的报告", "My reports"))}</h2><ul id="my-reports"></ul></section>"""


def map_body(tr: Tr) -> str:
    return f"""<div id="map" class="map full"></div>
<p class="legend"><span class="dot kit"></span>{esc(tr("本套件", "this kit"))}
<span class="dot member"></span>{esc(tr("队员", "team member"))}
<span class="dot report"></span>{esc(tr("报告", "report"))} · <span id="map-name"></span></p>
<div id="popup" class="popup" hidden></div>"""


def login_body(tr: Tr, csrf: str, message: str = "", *, no_users: bool = False) -> str:
    if no_users:
        return f"""<h1>{esc(tr("配置需要登录", "Configuration needs a login"))}</h1>
<p class="error">{esc(tr("尚未设置管理密码（没有默认密码）。请在套件上运行：", "No admin password is set (there is no default). On the kit, run:"))}</p>
<pre>kit web-password --config /etc/kit/kit.toml</pre>"""
    msg = f'<p class="error" role="alert">{esc(message)}</p>' if message else ""
    return f"""<h1>{esc(tr("登录", "Log in"))}</h1>{msg}
<form method="post" action="/login" class="login">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<label class="field">{esc(tr("用户名", "User"))}<input name="user" value="admin" autocomplete="username" required></label>
<label class="field">{esc(tr("密码", "Password"))}<input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit" class="primary">{esc(tr("登录", "Log in"))}</button></form>"""


def _input(f: FormField, submitted: dict[str, list[str]] | None) -> str:
    name = esc(f.path)
    attrs = "".join(f' {k}="{esc(v)}"' for k, v in f.attrs.items())
    value: Any = f.value
    if submitted is not None and f.path in submitted and f.widget not in ("secret",):
        got = submitted[f.path]
        value = got if f.widget == "multi" else (got[-1] if got else "")
    if f.widget == "bool":
        on = bool(submitted.get(f.path)) if submitted is not None else bool(f.value)
        return f'<input type="checkbox" name="{name}" id="{name}"{" checked" if on else ""}>'
    if f.widget == "select":
        opts = "".join(
            f"<option{' selected' if str(value) == c else ''}>{esc(c)}</option>" for c in f.choices
        )
        return f'<select name="{name}" id="{name}">{opts}</select>'
    if f.widget == "multi":
        chosen = {str(v) for v in (value or [])}
        return "".join(
            f'<label class="inline"><input type="checkbox" name="{name}" value="{esc(c)}"'
            f"{' checked' if c in chosen else ''}>{esc(c)}</label>"
            for c in f.choices
        )
    if f.widget == "lines":
        text = "\n".join(value) if isinstance(value, list) else str(value)
        return f'<textarea name="{name}" id="{name}" rows="2">{esc(text)}</textarea>'
    if f.widget == "secret":
        return f'<input type="password" name="{name}" id="{name}" autocomplete="new-password" placeholder="********"{attrs}>'
    if f.widget == "readonly":
        return f'<output id="{name}">{esc(value)}</output>'
    kind = "number" if f.widget in ("int", "float") else "text"
    step = ' step="any"' if f.widget == "float" else ""
    shown = "" if value is None else value
    return f'<input type="{kind}"{step} name="{name}" id="{name}" value="{esc(shown)}"{attrs}>'


def _field(
    tr: Tr, f: FormField, errors: dict[str, list[str]], submitted: dict[str, list[str]] | None
) -> str:
    errs = errors.get(f.path, [])
    err_html = "".join(
        f'<p class="error field-error" data-path="{esc(f.path)}">{esc(f.path)}: {esc(e)}</p>'
        for e in errs
    )
    bounds = f" · {esc(f.bounds)}" if f.bounds else ""
    optional = esc(tr(" · 可留空", " · may be empty")) if f.optional else ""
    return (
        f'<div class="cfg{" bad" if errs else ""}"><label for="{esc(f.path)}">{esc(f.title)}</label>'
        f"{_input(f, submitted)}"
        f"<small>{esc(f.description)}{bounds}{optional} · <code>{esc(f.path)}</code></small>{err_html}</div>"
    )


def _group(
    tr: Tr,
    g: FormGroup,
    errors: dict[str, list[str]],
    submitted: dict[str, list[str]] | None,
    depth: int,
) -> str:
    inner = "".join(_field(tr, f, errors, submitted) for f in g.fields)
    inner += "".join(_group(tr, sub, errors, submitted, depth + 1) for sub in g.groups)
    errs = errors.get(g.path, [])
    err_html = "".join(
        f'<p class="error field-error" data-path="{esc(g.path)}">{esc(g.path)}: {esc(e)}</p>'
        for e in errs
    )
    if depth == 0:
        return inner
    open_attr = " open" if errs or any(p.startswith(g.path) for p in errors) else ""
    return (
        f'<details class="group"{open_attr} id="g-{esc(g.path)}"><summary>{esc(g.title)} <small>{esc(g.description)}</small></summary>'
        f"{err_html}{inner}</details>"
    )


def config_body(
    tr: Tr,
    *,
    form: FormGroup,
    csrf: str,
    base: str,
    user: str,
    errors: dict[str, list[str]] | None = None,
    submitted: dict[str, list[str]] | None = None,
    notice: str = "",
    audit: list[dict[str, Any]] | None = None,
) -> str:
    errors = errors or {}
    general = "".join(
        f'<p class="error">{esc(p or tr("文件", "file"))}: {esc(m)}</p>'
        for p, ms in errors.items()
        for m in ms
        if not any(p == f.path for f in _all(form)) and not _is_group(form, p)
    )
    summary = ""
    if errors:
        n = sum(len(v) for v in errors.values())
        summary = f'<div class="banner" role="alert">{esc(tr(f"未保存：有 {n} 处错误，见下方标红的字段。", f"Not saved: {n} error(s), marked in red below."))}</div>{general}'
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            esc(a.get("time", "")),
            esc(a.get("who", "")),
            "<br>".join(
                f"<code>{esc(c.get('path'))}</code>: {esc(c.get('old'))} → {esc(c.get('new'))}"
                for c in a.get("changes", [])
            ),
        )
        for a in audit or []
    )
    return f"""<h1>{esc(tr("配置", "Configuration"))}</h1>
<p class="who">{esc(tr("已登录：", "Logged in: "))}{esc(user)}
<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{esc(csrf)}"><button type="submit">{esc(tr("退出", "Log out"))}</button></form>
<a href="/config/raw">{esc(tr("直接编辑 TOML", "Edit the TOML"))}</a></p>
{notice}{summary}
<form method="post" action="/config" id="config-form" novalidate>
<input type="hidden" name="csrf" value="{esc(csrf)}"><input type="hidden" name="base" value="{esc(base)}">
{_group(tr, form, errors, submitted, 0)}
<button type="submit" class="primary" id="save">{esc(tr("检查、保存并应用", "Check, save and apply"))}</button></form>
<section class="card"><h2>{esc(tr("修改记录", "Change log"))}</h2><table class="audit">{rows}</table></section>"""


def _all(g: FormGroup) -> list[FormField]:
    out = list(g.fields)
    for s in g.groups:
        out += _all(s)
    return out


def _is_group(g: FormGroup, path: str) -> bool:
    return g.path == path or any(_is_group(s, path) for s in g.groups)


def saved_notice(
    tr: Tr, changes: list[tuple[str, str, str]], restart: list[str], requested: bool
) -> str:
    if not changes:
        return f'<div class="notice">{esc(tr("没有修改。", "Nothing changed."))}</div>'
    items = "".join(f"<li><code>{esc(p)}</code>: {esc(o)} → {esc(n)}</li>" for p, o, n in changes)
    if restart:
        names = ", ".join(restart)
        how = (
            tr(
                f"已请求重启：{names}（几秒内生效）",
                f"restart requested: {names} (applies in a few seconds)",
            )
            if requested
            else tr(f"需要重启：{names}", f"needs a restart: {names}")
        )
    else:
        how = tr("无需重启进程。", "no process needs a restart.")
    return f'<div class="notice" id="saved"><p>{esc(tr("已保存", "Saved"))}：{esc(how)}</p><ul>{items}</ul></div>'


def raw_body(
    tr: Tr,
    *,
    csrf: str,
    base: str,
    text: str,
    issues: list[ConfigIssue],
    safe_mode: bool,
    notice: str = "",
) -> str:
    head = ""
    if safe_mode:
        head = f'<div class="banner" role="alert">{esc(tr("安全模式：配置文件有错误，套件正以默认值和有效部分运行。请修正下列错误：", "SAFE MODE: the config file has errors; the kit runs on defaults and the valid parts. Fix these:"))}</div>'
    errs = "".join(
        f'<li class="error"><code>{esc(i.path or "(file)")}</code>: {esc(i.message)}</li>'
        for i in issues
    )
    return f"""<h1>{esc(tr("配置文件", "Config file"))}</h1>{head}{notice}<ul class="issues">{errs}</ul>
<form method="post" action="/config/raw"><input type="hidden" name="csrf" value="{esc(csrf)}">
<input type="hidden" name="base" value="{esc(base)}">
<textarea name="text" class="toml" rows="30" spellcheck="false">{esc(text)}</textarea>
<button type="submit" class="primary">{esc(tr("检查并保存", "Check and save"))}</button></form>
<p><a href="/config">{esc(tr("返回表单", "Back to the form"))}</a></p>"""


def wipe_card(tr: Tr, *, csrf: str, kit_id: int) -> str:
    return f"""<section class="card danger"><h2>{esc(tr("销毁密钥", "Wipe the keys"))}</h2>
<p>{esc(tr("套件将被遗弃或可能落入他人之手时使用：本机密钥被覆盖删除，之后不能再向指挥中心发送，须重新生成并登记。", "For a kit about to be abandoned or captured: the kit's keys are overwritten and deleted; it can no longer reach the centre until provisioned and enrolled anew."))}</p>
<form method="post" action="/config/wipe-keys" id="wipe-form"><input type="hidden" name="csrf" value="{esc(csrf)}">
<label>{esc(tr(f"输入本机编号 {kit_id} 以确认", f"Type this kit's id, {kit_id}, to confirm"))} <input name="confirm" inputmode="numeric" autocomplete="off" required></label>
<button type="submit" class="danger" id="wipe">{esc(tr("销毁密钥", "Wipe keys"))}</button></form></section>"""


def message_body(tr: Tr, title: str, text: str) -> str:
    return f'<h1>{esc(title)}</h1><p class="error">{esc(text)}</p>'


def not_saved(tr: Tr, n: int) -> str:
    text = tr(f"未保存：有 {n} 处错误", f"Not saved: {n} error(s)")
    return f'<div class="banner" role="alert">{esc(text)}</div>'
