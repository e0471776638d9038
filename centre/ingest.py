"""IP ingest: ``POST /v1/items`` (CBOR batches of [seq, item]) and ``GET /v1/acks``."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import cbor2
from aiohttp import web

from centre.acks import MAX_SEQ
from centre.errors import Refused
from centre.keys import CONFIG, STORE
from edge.errors import BadItem
from edge.item import Item, check_size, from_wire

log = logging.getLogger(__name__)

CBOR_TYPE = "application/cbor"
_KIT_ID = re.compile(r"[0-9]{1,5}\Z")
_LINK = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,31}\Z")
_MAX_DEPTH = 8  # batch → entry → item map → data/position: no honest body goes deeper


def kit_id_of(request: web.Request) -> int:
    text = request.headers.get("Kit-Id", "").strip()
    if not _KIT_ID.match(text) or not 1 <= int(text) <= 65535:
        raise Refused(
            400, f"Kit-Id 应为 1…65535 的整数：{text!r}", f"Kit-Id must be 1..65535, not {text!r}"
        )
    return int(text)


def link_of(request: web.Request) -> str:
    """The link a batch came in on: ``ip`` or ``ip:<Kit-Link header>`` (e.g. ip:vsat)."""
    name = request.headers.get("Kit-Link")
    if name is None:
        return "ip"
    if not _LINK.match(name):
        raise Refused(
            400,
            f"Kit-Link 应为 1–32 个小写字母、数字或 _.:-：{name!r}",
            f"Kit-Link must be 1-32 of a-z 0-9 _.:- , not {name!r}",
        )
    return f"ip:{name}"


def parse_batch(body: bytes) -> list[tuple[int, Any]]:
    """A body → [(seq, item wire map)]; any defect of the envelope refuses the whole body."""
    fp = io.BytesIO(body)
    try:
        raw = cbor2.CBORDecoder(
            fp, read_size=1, max_depth=_MAX_DEPTH, allow_duplicate_keys=False
        ).decode()
    except Exception as exc:  # cbor2 raises several types (and tag decoders more) on bad input
        raise Refused(400, f"CBOR 编码无效：{exc}", f"malformed CBOR: {exc}") from None
    if fp.tell() != len(body):
        raise Refused(
            400,
            f"CBOR 之后还有 {len(body) - fp.tell()} 字节多余数据",
            f"{len(body) - fp.tell()} bytes of trailing data after the CBOR value",
        )
    if not isinstance(raw, list):
        raise Refused(
            400, "请求体应为 [序号, 条目] 的数组", "body must be a CBOR array of [seq, item]"
        )
    out: list[tuple[int, Any]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, list) or len(entry) != 2:
            raise Refused(
                400, f"第 {i} 项应为 [序号, 条目]", f"entry {i} is not a [seq, item] pair"
            )
        seq = entry[0]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise Refused(
                400,
                f"第 {i} 项的序号应为 0…{MAX_SEQ} 的整数：{seq!r}",
                f"entry {i}: seq must be an integer 0..{MAX_SEQ}, not {seq!r}",
            )
        out.append((seq, entry[1]))
    return out


def decode_items(
    entries: list[tuple[int, Any]],
) -> tuple[list[tuple[int, Item]], list[tuple[int, str]]]:
    """Validate each item; a bad one is rejected alone, with its reason."""
    items: list[tuple[int, Item]] = []
    rejected: list[tuple[int, str]] = []
    for seq, wire in entries:
        try:
            item = from_wire(wire)
            check_size(item)
        except BadItem as err:
            rejected.append((seq, str(err)))
            continue
        items.append((seq, item))
    return items, rejected


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[CONFIG].max_body_bytes
    size = request.content_length
    try:
        if size is not None and size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        return await request.read()  # the application's client_max_size stops chunked bodies
    except web.HTTPRequestEntityTooLarge:
        raise Refused(
            413,
            f"请求体超过上限 {limit} 字节，请分批发送",
            f"body exceeds the limit of {limit} bytes; send smaller batches",
        ) from None


ORDER_RESEND_S = 30.0  # an order without a receipt rides along again after this long


async def _answer(
    request: web.Request, kit_id: int, rejected: list[tuple[int, str]]
) -> web.Response:
    """Acknowledged ranges, refusals, and the kit's orders due (re-sent until a receipt)."""
    store = request.app[STORE]
    acks = await store.acked_ranges(kit_id)
    orders = await store.orders_to_send(kit_id, resend_after_s=ORDER_RESEND_S)
    body = cbor2.dumps(
        {
            "acks": [[lo, hi] for lo, hi in acks],
            "rejected": [[s, r] for s, r in rejected],
            "orders": [[o.order_id, o.target, o.text] for o in orders],
        }
    )
    return web.Response(body=body, content_type=CBOR_TYPE)


async def post_items(request: web.Request) -> web.Response:
    kit_id = kit_id_of(request)
    link = link_of(request)
    store = request.app[STORE]
    await store.require_kit(kit_id)  # before reading a body that would be refused anyway
    entries = parse_batch(await _read_body(request))
    items, rejected = decode_items(entries)
    for seq, reason in rejected:
        log.warning("kit %d seq %d over %s rejected: %s", kit_id, seq, link, reason)
    result = await store.ingest(kit_id, items, link=link, via=request.remote)
    rejected += result.rejected
    log.info(
        "kit %d over %s: %d new, %d copies, %d waiting for media, %d rejected",
        kit_id,
        link,
        len(result.stored),
        len(result.duplicates),
        len(result.waiting),
        len(rejected),
    )
    return await _answer(request, kit_id, rejected)


async def get_acks(request: web.Request) -> web.Response:
    kit_id = kit_id_of(request)
    store = request.app[STORE]
    await store.require_kit(kit_id)
    return await _answer(request, kit_id, [])


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/items", post_items)
    app.router.add_get("/v1/acks", get_acks, allow_head=False)
