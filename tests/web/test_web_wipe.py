"""Wiping the kit's keys from the configuration page: a login, the CSRF token and the
kit's id typed as confirmation; audited with who did it."""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.asyncio
from hygiene import nothing_left_open, run  # noqa: F401
from web_helpers import PASSWORD, csrf, login, page, write_config

from config.web.auth import Users
from security.cli import KIT_STATE
from security.keys import KIT_KEY, provision
from security.state import SecurityState

# The process-wide ZeroMQ context (and its I/O thread) outlives every test: make it now.
zmq.asyncio.Context.instance().socket(zmq.REQ).close(linger=0)


def test_keys_are_wiped_from_the_page_only_with_a_login_the_csrf_token_and_the_kit_id(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "kit.toml", tmp_path)  # kit id 7
    Users(tmp_path / "data" / "web" / "users.json").set("admin", PASSWORD)
    keys = tmp_path / "data" / "keys"
    provision(keys, "default")

    async def main() -> None:
        async with page(config) as (_, client):
            token = await csrf(client, "/login")
            anonymous = await client.post(
                "/config/wipe-keys", data={"csrf": token, "confirm": "7"}, allow_redirects=False
            )
            assert anonymous.status == 303 and anonymous.headers["Location"] == "/login"
            assert await login(client) == 303
            form = await (await client.get("/config")).text()
            assert 'action="/config/wipe-keys"' in form and "输入本机编号 7 以确认" in form
            token = await csrf(client, "/config")
            forged = await client.post("/config/wipe-keys", data={"confirm": "7"})
            assert forged.status == 403  # no CSRF token
            wrong = await client.post("/config/wipe-keys", data={"csrf": token, "confirm": "8"})
            assert wrong.status == 400
            assert "请输入本机编号 7 以确认" in await wrong.text()
            assert (keys / KIT_KEY).exists()
            done = await client.post("/config/wipe-keys", data={"csrf": token, "confirm": " 7 "})
            assert done.status == 200
            assert "已销毁 2 个密钥文件" in await done.text()  # the key and its .pub
            assert not (keys / KIT_KEY).exists()

    run(main())
    state = SecurityState(tmp_path / "data" / KIT_STATE)
    try:
        rows = state.audit_rows("key-wiped")
        assert [(kit, how.split("@")[0]) for kit, _, _, how in rows] == [(7, "web: admin")]
        assert state.verify_chain() is None
    finally:
        state.close()
