"""Orders from the command centre to a kit, or through it to a team member on the mesh.

``POST /v1/orders`` with JSON ``{"kit_id": 7, "target": "!a1b2c3d4", "text": "…"}``
queues one (``target``: empty for the kit itself, ``^all`` for the whole team channel, a
node id for one member, stored in lower case; anything else is refused with 400); the
answer is ``201 {"order_id": n}``. ``GET
/v1/orders?kit_id=7`` lists the kit's orders, newest first, each ``queued``, ``sent``
(offered to the kit at least once), ``delivered`` (the kit's receipt item came back,
with when and over which link) or ``failed`` (the kit has it, but its radio could not
reach the member: ``delivery_error`` says why). Orders ride along with the answers the kit gets over
any link — IP answers and narrow-link ACKs — until the receipt arrives.

Who may use it: a logged-in operator (the dashboard, with its CSRF token), a machine with
a bearer token, or a program on the centre's own host (see :mod:`centre.dashboard.access`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from aiohttp import web

from centre.dashboard.access import require
from centre.errors import Refused
from centre.keys import STORE
from uplink.frames import BadFrame

log = logging.getLogger(__name__)

TEAM = "^all"  # the kit's mesh sends such an order to the team channel
MEMBER = re.compile(r"![0-9a-f]{8}")  # a handheld's Meshtastic node id, as the mesh names it
MAX_SHOWN = 40  # characters of a refused target quoted back


def order_target(raw: str) -> str:
    """The target as the kit's mesh routes it: "" (the kit itself), ``^all`` (the team) or
    a member's node id, hex digits in either case kept in lower case (``!a1b2c3d4``).

    Anything else would be taken by the kit and then go nowhere (an order never delivered
    nor failed), so it is refused here, where the operator is still at the form."""
    target = raw.strip()
    if target.startswith("!"):
        target = target.lower()
    if target in ("", TEAM) or MEMBER.fullmatch(target):
        return target
    raise Refused(
        400,
        f"指令对象无效：{raw[:MAX_SHOWN]!r}（空：套件本身；^all：全体队员；!加8位十六进制节点号：队员）",
        f"invalid order target {raw[:MAX_SHOWN]!r} (empty: the kit itself; ^all: the whole team; "
        "! and 8 hex digits: a member's node id)",
    )


async def post_order(request: web.Request) -> web.Response:
    who = await require(request, write=True)
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "请求体不是 JSON", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "请求体应为 JSON 对象", "the body must be a JSON object")
    kit_id, target, text = body.get("kit_id"), body.get("target", ""), body.get("text")
    if not isinstance(kit_id, int) or isinstance(kit_id, bool) or not 1 <= kit_id <= 65535:
        raise Refused(400, "kit_id 应为 1–65535 的整数", "kit_id must be an integer 1..65535")
    if not isinstance(target, str) or not isinstance(text, str):
        raise Refused(400, "target 和 text 应为字符串", "target and text must be strings")
    target = order_target(target)
    try:
        order = await request.app[STORE].add_order(kit_id, target, text)
    except BadFrame as err:
        raise Refused(400, err.zh, err.en) from None
    log.info("order %d for kit %d queued by %s", order.order_id, kit_id, who)
    return web.json_response({"order_id": order.order_id}, status=201)


async def get_orders(request: web.Request) -> web.Response:
    await require(request, write=False)
    raw = request.query.get("kit_id", "")
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise Refused(400, "请用 ?kit_id=1–65535 指明设备", "name the kit: ?kit_id=1..65535")
    return web.json_response({"orders": await request.app[STORE].orders(int(raw))})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/orders", post_order)
    app.router.add_get("/v1/orders", get_orders, allow_head=False)
