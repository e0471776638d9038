"""The web page over plain HTTP: headers, CSRF, logins and their back-off, uploads, injection,
and config edits that would break the kit — each refused with nothing stored."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import zmq
import zmq.asyncio
from conftest import start_edge, stop
from hygiene import nothing_left_open, run  # noqa: F401
from web_helpers import PASSWORD, csrf, edge_status, jpeg, login, page, write_config

from config.web.auth import LoginLimiter, Users

# The process-wide ZeroMQ contexts are made once here, not inside a test that would own their fds.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One edge daemon for the module; each test writes its own config file pointing at it."""
    root = tmp_path_factory.mktemp("web")
    config = write_config(root / "kit.toml", root)
    Users(root / "data" / "web" / "users.json").set("admin", PASSWORD)
    proc: subprocess.Popen[bytes] = start_edge(config)
    try:
        yield root
    finally:
        stop(proc)


def queued(root: Path) -> dict[str, int]:
    return dict(edge_status(root / "kit.toml")["queued"])


def test_every_response_carries_a_self_only_csp_and_no_store(kit: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "kit.toml", kit)

    async def main() -> None:
        async with page(config) as (_, client):
            for path in ("/", "/report", "/map", "/login", "/static/app.css", "/nowhere"):
                response = await client.get(path)
                csp = response.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "script-src 'self'" in csp, path
                assert "unsafe-inline" not in csp
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["X-Frame-Options"] == "DENY"
            first = await client.get("/")
            assert first.headers["Cache-Control"] == "no-store"
            assert '<html lang="zh-CN">' in await first.text()  # Chinese first
            switch = await client.get("/lang/en?next=/report", allow_redirects=False)
            assert switch.headers["Location"] == "/report"
            english = await (await client.get("/report")).text()
            assert '<html lang="en">' in english and "File a report" in english
            away = await client.get("/lang/zh?next=//evil.example/", allow_redirects=False)
            assert away.headers["Location"] == "/"  # never a redirect off the kit

    run(main())


def test_a_post_without_its_visitors_csrf_token_is_refused_and_files_nothing(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)
    before = queued(kit)

    async def main() -> None:
        async with page(config) as (_, client), page(config) as (_, other):
            form = {"kind": "sos", "text": "no token"}
            assert (await client.post("/api/reports", data=form)).status == 403
            token = await csrf(client)
            stolen = await csrf(other)  # a valid token, but another visitor's
            bad = await client.post("/api/reports", data=form, headers={"X-CSRF-Token": stolen})
            assert bad.status == 403
            assert "CSRF" in await bad.text()
            cross = await client.post(
                "/api/reports",
                data=form,
                headers={"X-CSRF-Token": token, "Origin": "http://evil.example"},
            )
            assert cross.status == 403
            logout = await client.post("/logout", data={"csrf": "0" * 64}, allow_redirects=False)
            assert logout.status == 403

    run(main())
    assert queued(kit) == before


def test_wrong_passwords_lock_the_client_out_for_longer_each_time(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)
    now = [1000.0]

    async def main() -> None:
        async with page(config) as (web, client):
            web.limiter = LoginLimiter(free=5, base_s=2.0, clock=lambda: now[0])
            for _ in range(4):
                assert await login(client, password="wrong password!") == 401
            assert await login(client, password="wrong password!") == 429
            # While locked even the right password is refused, with the wait in the answer.
            token = await csrf(client, "/login")
            locked = await client.post(
                "/login", data={"csrf": token, "user": "admin", "password": PASSWORD}
            )
            assert locked.status == 429
            assert locked.headers["Retry-After"] == "3"
            assert "请 3 秒后再试" in await locked.text()
            now[0] += 2.5
            assert await login(client, password="wrong again!!") == 429  # next lock: 4 s
            assert web.limiter.wait_s("127.0.0.1") == pytest.approx(4.0)
            now[0] += 4.5
            assert await login(client) == 303

    run(main())


def test_a_login_is_an_httponly_strict_session_and_config_needs_one(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)

    async def main() -> None:
        async with page(config) as (_, client):
            anonymous = await client.get("/config", allow_redirects=False)
            assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"
            token = await csrf(client, "/login")
            response = await client.post(
                "/login",
                data={"csrf": token, "user": "admin", "password": PASSWORD},
                allow_redirects=False,
            )
            cookie = response.headers["Set-Cookie"]
            assert "kit_s=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert (await client.get("/config", allow_redirects=False)).status == 200
            await client.post("/logout", data={"csrf": token}, allow_redirects=False)
            assert (await client.get("/config", allow_redirects=False)).status == 303

    run(main())


def test_without_a_provisioned_password_nobody_can_log_in(tmp_path: Path) -> None:
    config = write_config(tmp_path / "kit.toml", tmp_path)  # a data folder with no users file

    async def main() -> None:
        async with page(config) as (_, client):
            text = await (await client.get("/login")).text()
            assert "尚未设置管理密码（没有默认密码）" in text
            assert await login(client, password="") == 401
            assert await login(client, password="admin") == 401

    run(main())


def test_oversized_and_non_image_uploads_are_refused_with_their_reason(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)
    text = config.read_text().replace("max_photo_mb = 20", "max_photo_mb = 1")
    config.write_text(text.replace("max_photos = 4", "max_photos = 2"))
    before = queued(kit)
    photos = kit / "data" / "media" / "photos"
    files_before = sorted(photos.iterdir()) if photos.exists() else []

    async def main() -> None:
        async with page(config) as (_, client):
            token = await csrf(client)
            headers = {"X-CSRF-Token": token}

            async def post(files: list[tuple[str, bytes]]) -> tuple[int, dict[str, str]]:
                form = aiohttp.FormData()
                form.add_field("kind", "situation")
                form.add_field("text", "桥梁垮塌")
                for name, data in files:
                    form.add_field("photos", data, filename=name, content_type="image/jpeg")
                response = await client.post("/api/reports", data=form, headers=headers)
                return response.status, await response.json()

            status, answer = await post([("big.jpg", b"\xff\xd8\xff" + b"\0" * 1_200_000)])
            assert (status, answer["field"]) == (413, "photos")
            assert answer["zh"] == "照片过大：big.jpg（上限 1 MB）"
            status, answer = await post([("huge.jpg", b"\0" * 3_000_000)])  # past the whole limit
            assert status == 413 and answer["en"].startswith("upload too large")
            status, answer = await post([("notes.jpg", b"%PDF-1.7 not a photo")])
            assert status == 400 and answer["en"].startswith("not a JPEG or PNG image")
            status, answer = await post([("ok.jpg", jpeg()), ("bad.jpg", b"GIF89a....")])
            assert status == 400  # one bad photo refuses the whole report
            status, answer = await post([(f"{i}.jpg", jpeg()) for i in range(3)])
            assert status == 400 and answer["zh"] == "照片太多（最多 2 张）"

    run(main())
    assert queued(kit) == before
    assert (sorted(photos.iterdir()) if photos.exists() else []) == files_before


def test_script_in_a_report_is_stored_as_text_and_escaped_wherever_shown(
    kit: Path, tmp_path: Path
) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    evil_name = "<script>alert('k')</script>"
    config = write_config(tmp_path / "kit.toml", kit, name=evil_name)

    async def main() -> None:
        async with page(config) as (_, client):
            token = await csrf(client)
            form = aiohttp.FormData(default_to_multipart=True)
            for key, value in (
                ("kind", "needs"),
                ("text", evil),
                ("lat", "30.66"),
                ("lon", "104.06"),
            ):
                form.add_field(key, value)
            response = await client.post("/api/reports", data=form, headers={"X-CSRF-Token": token})
            assert response.status == 200, await response.text()
            seq = (await response.json())["seq"]
            markers = await client.get("/api/map")
            assert markers.content_type == "application/json"
            mine = [r for r in (await markers.json())["reports"] if r["seq"] == seq]
            assert mine[0]["text"] == evil  # data, shown by the scripts as text
            for path in ("/", "/report", "/map", "/login"):
                html = await (await client.get(path)).text()
                assert "<script>alert" not in html and "<img src=x" not in html, path
                assert "&lt;script&gt;alert(&#x27;k&#x27;)&lt;/script&gt;" in html, path
            assert await login(client) == 303
            html = await (await client.get("/config")).text()
            assert "<script>alert" not in html

    run(main())
    assert queued(kit)["P1"] >= 1


def _form_of(html: str) -> dict[str, list[str]]:
    """What a browser would submit for the config form as rendered (checked boxes only)."""
    import re

    form: dict[str, list[str]] = {}
    for tag in re.findall(
        r"<input [^>]*>|<textarea [^>]*>[^<]*</textarea>|<select [^>]*>.*?</select>", html
    ):
        name = re.search(r'name="([^"]+)"', tag)
        if not name:
            continue
        key = name.group(1).replace("&#x27;", "'")
        if tag.startswith("<select"):
            chosen = re.search(r"<option selected>([^<]*)</option>", tag)
            form.setdefault(key, []).append(chosen.group(1) if chosen else "")
        elif tag.startswith("<textarea"):
            form.setdefault(key, []).append(re.sub(r"<[^>]+>", "", tag))
        elif 'type="checkbox"' in tag:
            if " checked" in tag:
                value = re.search(r'value="([^"]*)"', tag)
                form.setdefault(key, []).append(value.group(1) if value else "on")
        elif 'type="password"' in tag:
            form.setdefault(key, []).append("")
        else:
            value = re.search(r'value="([^"]*)"', tag)
            form.setdefault(key, []).append(value.group(1) if value else "")
    return form


def test_a_config_edit_that_would_break_the_kit_is_refused_and_a_good_one_is_audited(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)
    original = config.read_bytes()
    requests = kit / "run" / "restart-requests"
    requests.unlink(missing_ok=True)

    async def main() -> None:
        async with page(config) as (_, client):
            assert await login(client) == 303
            html = await (await client.get("/config")).text()
            form = _form_of(html)
            assert form["links[0].rate"] == ["1000.0"]
            bad = {**form, "links[0].rate": ["-5"], "wifi.enabled": ["on"], "kit.id": ["zero"]}
            response = await client.post(
                "/config", data={k: v[-1] for k, v in bad.items() if v} | {}
            )
            assert response.status == 400
            text = await response.text()
            assert 'data-path="links[0].rate"' in text
            assert "links[0].rate: Input should be greater than 0" in text
            assert 'data-path="kit.id"' in text
            assert "wifi: Value error, an access point needs a passphrase" in text
            assert config.read_bytes() == original
            assert not requests.exists()

            good = aiohttp.FormData()
            for key, values in {**form, "links[0].rate": ["2345"]}.items():
                for v in values:
                    good.add_field(key, v)
            response = await client.post("/config", data=good)
            assert response.status == 200
            text = await response.text()
            assert "已请求重启：uplink" in text
            # Stale: a form made before that save may not overwrite it.
            stale = aiohttp.FormData()
            for key, values in {**form, "links[0].rate": ["999"]}.items():
                for v in values:
                    stale.add_field(key, v)
            assert (await client.post("/config", data=stale)).status == 409

    run(main())
    assert "rate = 2345.0" in config.read_text()
    assert requests.read_text() == "uplink\n"
    audit = [
        json.loads(line) for line in (kit / "data" / "web" / "audit.jsonl").read_text().splitlines()
    ]
    assert audit[-1]["who"] == "admin@127.0.0.1"
    assert audit[-1]["changes"] == [{"path": "links[0].rate", "old": "1000.0", "new": "2345.0"}]
    assert audit[-1]["restart"] == ["uplink"]


def test_a_broken_config_shows_the_safe_mode_page_with_each_error_and_its_key_path(
    kit: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "kit.toml", kit)

    async def main() -> None:
        async with page(config) as (_, client):
            assert await login(client) == 303
            config.write_text(
                config.read_text().replace("max_batch = 512", "max_batch = 0\ntypo = 1")
            )
            response = await client.get("/config")
            assert response.url.path == "/config/raw"
            text = await response.text()
            assert "安全模式" in text
            assert "<code>edge.max_batch</code>: Input should be greater than or equal to 1" in text
            assert "<code>edge.typo</code>: unknown key (typo?)" in text
            token = await csrf(client, "/config/raw")
            base = text.split('name="base" value="')[1].split('"')[0]
            broken = await client.post(
                "/config/raw", data={"csrf": token, "base": base, "text": "[kit\nid = 7"}
            )
            assert broken.status == 400 and "TOML syntax" in await broken.text()
            fixed_text = config.read_text().replace("max_batch = 0\ntypo = 1", "max_batch = 64")
            fixed = await client.post(
                "/config/raw", data={"csrf": token, "base": base, "text": fixed_text}
            )
            assert fixed.status == 200
            assert "已请求重启：edge, uplink, drivers, mesh, media, web" in await fixed.text()

    run(main())
    assert "max_batch = 64" in config.read_text()
