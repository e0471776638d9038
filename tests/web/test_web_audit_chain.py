"""Config saves and logins in the chained audit logs: the kit's page (over HTTP) writes its
saves (who, which key paths; never a value) and logins to the kit's chain, the centre's
dashboard its operators' logins to the centre's; both chains verify, and both files are
written with ``synchronous=FULL``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp.test_utils import TestClient, TestServer
from hygiene import nothing_left_open, run  # noqa: F401
from web_helpers import page as kit_page

from centre.config import load_config
from centre.dashboard.access import ACCESS
from config.loader import render_default
from config.web.auth import LoginLimiter, Users
from security.cli import KIT_STATE
from security.state import SecurityState

# The process-wide ZeroMQ contexts are made once here, not inside a test that would own their fds.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)
zmq.Context.instance().socket(zmq.REQ).close(linger=0)

PASSWORD = "correct horse battery"
SECRET = "wifi-secret-1234"


def kit_config(root: Path) -> Path:
    text = render_default(
        7, "测试套件", str(root / "data"), str(root / "run"), "http://127.0.0.1:9"
    )
    text = text.replace('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:0"')
    path = root / "kit.toml"
    path.write_text(text, encoding="utf-8")
    Users(root / "data" / "web" / "users.json").set("admin", PASSWORD)
    return path


async def token(client: TestClient[Any, Any], path: str) -> tuple[str, str]:
    text = await (await client.get(path)).text()
    found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', text)
    assert found, text[:300]
    return found.group(1), text


async def log_in(client: TestClient[Any, Any], user: str, password: str, path: str) -> int:
    """The login form posted; the kit's page wants its CSRF token, the dashboard's login
    only a same-origin request."""
    form = {"user": user, "password": password}
    if path == "/login":
        form["csrf"], _ = await token(client, path)
    response = await client.post(path, data=form, allow_redirects=False)
    return response.status


def chain(path: Path, event: str) -> list[tuple[int | None, str, str, str]]:
    state = SecurityState(path)
    try:
        assert state.verify_chain() is None
        (sync,) = state._db.execute("PRAGMA synchronous").fetchone()
        assert sync == 2  # FULL: a row is on disk when audit() returns
        return state.audit_rows(event)
    finally:
        state.close()


def test_a_config_change_and_logins_on_the_kits_page_are_in_the_kits_chain(
    tmp_path: Path,
) -> None:
    config = kit_config(tmp_path)

    async def main() -> None:
        async with kit_page(config) as (_, client):
            assert await log_in(client, "admin", "not the password", "/login") == 401
            assert await log_in(client, "admin", PASSWORD, "/login") == 303
            csrf, page = await token(client, "/config/raw")
            base = page.split('name="base" value="')[1].split('"')[0]
            text = config.read_text(encoding="utf-8")
            text = text.replace('# passphrase = "8 to 63 characters"', f'passphrase = "{SECRET}"')
            text = text.replace("max_photos = 4 ", "max_photos = 3 ")
            saved = await client.post(
                "/config/raw", data={"csrf": csrf, "base": base, "text": text}
            )
            assert saved.status == 200, await saved.text()

    run(main())
    state = tmp_path / "data" / KIT_STATE
    logins = chain(state, "login")
    assert logins == [
        (7, "wrong-password", "user 'admin' from 127.0.0.1", "web"),
        (7, "ok", "user 'admin' from 127.0.0.1", "web"),
    ]
    changes = chain(state, "config-changed")
    assert changes == [
        (7, "saved", "admin@127.0.0.1 changed 2: web.max_photos, wifi.passphrase", "web")
    ]
    assert SECRET not in state.read_bytes().decode("latin-1")  # the value is nowhere
    assert "not the password" not in state.read_bytes().decode("latin-1")
    # The page's own change log still has the save (secret shown masked).
    log = (tmp_path / "data" / "web" / "audit.jsonl").read_text(encoding="utf-8")
    assert "wifi.passphrase" in log and SECRET not in log


def test_a_lock_out_on_the_kits_page_is_audited_once_with_its_length(tmp_path: Path) -> None:
    config = kit_config(tmp_path)

    async def main() -> None:
        async with kit_page(config) as (web, client):
            web.limiter = LoginLimiter(free=5, base_s=2.0, clock=lambda: 1000.0)
            for _ in range(4):
                assert await log_in(client, "mallory", "guess", "/login") == 401
            assert await log_in(client, "mallory", "guess", "/login") == 429
            assert await log_in(client, "admin", PASSWORD, "/login") == 429  # locked

    run(main())
    reasons = [(r, d) for _, r, d, _ in chain(tmp_path / "data" / KIT_STATE, "login")]
    assert reasons == [("wrong-password", "user 'mallory' from 127.0.0.1")] * 4 + [
        ("locked-out", "user 'mallory' from 127.0.0.1, locked for 3 s")
    ]


def test_an_operators_failed_dashboard_login_is_in_the_centres_chain(tmp_path: Path) -> None:
    from centre.app import make_app as centre_app

    path = tmp_path / "centre.toml"
    path.write_text(
        f'data_dir = "{tmp_path}"\nlisten = "127.0.0.1:0"\n[[kits]]\nkit_id = 7\nname = "一队"\n',
        encoding="utf-8",
    )
    Users(tmp_path / "dashboard" / "operators.json").set("zhang", PASSWORD)
    config = load_config(path)

    async def main() -> None:
        app = centre_app(config)
        async with TestClient(TestServer(app)) as client:
            assert app[ACCESS].trail.path == config.security_db
            assert await log_in(client, "zhang", "wrong password!", "/dashboard/login") == 401
            assert await log_in(client, "zhang", PASSWORD, "/dashboard/login") == 303

    run(main())
    assert chain(config.security_db, "login") == [
        (None, "wrong-password", "user 'zhang' from 127.0.0.1", "dashboard"),
        (None, "ok", "user 'zhang' from 127.0.0.1", "dashboard"),
    ]
