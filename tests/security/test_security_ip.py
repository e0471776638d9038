"""IP links: every request of a keyed kit is signed and every answer the kit acts on is
the centre's (security.ipauth, centre.kitauth), in both profiles, against the real centre
application on a real socket and the kit's real IP link."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest
from aiohttp import web
from hygiene import nothing_left_open, until  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from centre.app import make_app, serve
from centre.config import CentreConfig, KitEntry
from centre.keys import STORE
from centre.kitauth import VERIFIER
from edge.item import Item, Kind, MediaRef, new_item, to_wire
from security import simkeys, tlsid
from security.channel import KitSecurity, Refusal
from security.ipauth import HEADER, RequestSigner, RequestVerifier
from security.state import SecurityState
from uplink.kinds.ip import Config, IpLink

PROFILES = ("default", "national")
KIT, REVOKED, STRANGER = 7, 8, 99  # enrolled; enrolled then revoked; keys but not enrolled


def report(text: str) -> Item:
    return new_item(Kind.SITUATION, source="kit", text=text, created_ms=1_750_000_000_000)


def kit_end(tmp: Path, kit_id: int, prof: str, *, claims: int | None = None) -> RequestSigner:
    """Kit ``kit_id``'s signer; ``claims`` signs as another kit id with these keys."""
    security = KitSecurity(
        claims or kit_id,
        simkeys.kit_pair(kit_id, prof),
        simkeys.centre_pair(prof).public,
        SecurityState(tmp / f"kit{kit_id}-{claims}.sqlite3"),
        tmp / f"kit{kit_id}-{claims}.seq",
    )
    return RequestSigner.for_kit(security)


@dataclass
class Centre:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def verifier(self) -> RequestVerifier:
        return self.app[VERIFIER]

    async def rows(self) -> int:
        """Items stored for any kit."""
        async with (
            self.app[STORE].reading() as db,
            db.execute("SELECT count(*) FROM items") as rows,
        ):
            (count,) = await rows.fetchone()
        return int(count)

    def refusals(self) -> Counter[str]:
        """Refusals as the audit log has them; they must equal the counters."""
        state = self.verifier.security.state
        audited = Counter(r for _, r, _, _ in state.audit_rows("request-refused"))
        assert audited == +self.verifier.security.refused
        assert state.verify_chain() is None
        return audited

    async def send(
        self,
        method: str,
        path: str,
        *,
        signer: RequestSigner | None = None,
        kit: int = KIT,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        tamper: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = {"Kit-Id": str(kit), "Kit-Link": "vsat", **(headers or {})}
        if signer is not None:
            _, hdrs[HEADER] = signer.sign(method, path, hdrs, body)
        if tamper is not None:
            hdrs, body = tamper(hdrs, body)
        async with self.http.request(method, self.url + path, data=body, headers=hdrs) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def enrolled(prof: str) -> list[KitEntry]:
    """Kits 7 and 8 enrolled with their simulation keys under ``prof``."""
    return [
        KitEntry(
            kit_id=k,
            name=f"队 {k}",
            profile=prof,  # type: ignore[arg-type]
            public_key=simkeys.kit_pair(k, prof).public_text,
        )
        for k in (KIT, REVOKED)
    ]


@asynccontextmanager
async def centre(tmp: Path, prof: str) -> AsyncIterator[Centre]:
    config = CentreConfig(listen="127.0.0.1:0", data_dir=tmp / "centre", kits=enrolled(prof))
    simkeys.install_centre(config.keys_dir, prof)
    runner = web.AppRunner(make_app(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        runner.app[VERIFIER].security.state.revoke(REVOKED, "丢失 / lost in the field")
        async with aiohttp.ClientSession() as http:
            yield Centre(url, runner.app, http)
    finally:
        await runner.cleanup()


def batch(*items: tuple[int, Item]) -> bytes:
    return cbor2.dumps([[seq, to_wire(item)] for seq, item in items])


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.parametrize("prof", PROFILES)
def test_the_kits_ip_link_signs_items_and_media_and_checks_the_answers(
    tmp_path: Path, prof: str
) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            signer = kit_end(tmp_path, KIT, prof)
            link = IpLink(Config(kind="ip", name="vsat", url=c.url, rate=100_000))
            link.kit_id, link.auth = KIT, signer
            acks: list[tuple[int, int]] = []
            link.on_acks = acks.extend
            running = asyncio.create_task(link.run())
            try:
                await until(lambda: link.online)
                content = b"\xff\xd8 a photo of the collapsed school " * 200
                ref = MediaRef(
                    "photos/a.jpg", len(content), hashlib.sha256(content).hexdigest(), "image/jpeg"
                )
                photo = new_item(Kind.PHOTO, source="web", media=ref, created_ms=1_750_000_000_000)
                await link.post_items([(1, to_wire(report("三号楼倒塌"))), (2, to_wire(photo))])
                assert acks == [(1, 1)]  # the photo waits for its file
                meta = {"kit": str(KIT), "seq": "2", "sha256": ref.sha256, "filename": "a.jpg"}
                url = await link.tus_create(len(content), meta)
                assert await link.tus_offset(url) == 0
                assert await link.tus_patch(url, 0, content) == len(content)
                await link.post_items([])
                assert acks[-1] == (1, 2)
                assert await c.rows() == 2
                assert c.refusals() == Counter()
                assert link.stats.errors == 0
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
                signer.kit.state.close()

    run(main())


def _flip_auth(h: dict[str, str], b: bytes) -> tuple[dict[str, str], bytes]:
    n, tag = h[HEADER].split()
    raw = bytearray(base64.urlsafe_b64decode(tag + "=="))
    raw[0] ^= 1
    return {**h, HEADER: f"{n} {base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"}, b


@pytest.mark.parametrize("prof", PROFILES)
def test_strangers_forgeries_tampering_and_replays_are_refused_counted_and_audited(
    tmp_path: Path, prof: str
) -> None:
    async def main() -> None:
        async with centre(tmp_path, prof) as c:
            kit = kit_end(tmp_path, KIT, prof)
            stranger = kit_end(tmp_path, STRANGER, prof, claims=KIT)  # its own keys, kit 7's id
            revoked = kit_end(tmp_path, REVOKED, prof)
            # kit 7's own keys of the other profile: a downgrade (or upgrade) attempt
            other = kit_end(
                tmp_path, KIT, "default" if prof == "national" else "national", claims=KIT
            )
            body = batch((1, report("真的报告")))
            forged = batch((1, report("假的报告：撤离")))
            statuses = [
                # unsigned, as a keyed kit
                (await c.send("POST", "/v1/items", body=body))[0],
                (await c.send("GET", "/v1/acks"))[0],
                # signed with keys that are not kit 7's
                (await c.send("POST", "/v1/items", signer=stranger, body=body))[0],
                (await c.send("POST", "/v1/items", signer=other, body=body))[0],
                # kit 7's signature, another body / path / link / tag
                (
                    await c.send(
                        "POST", "/v1/items", signer=kit, body=body, tamper=lambda h, b: (h, forged)
                    )
                )[0],
                (
                    await c.send(
                        "POST",
                        "/v1/items",
                        signer=kit,
                        body=body,
                        tamper=lambda h, b: ({**h, "Kit-Link": "beidou"}, b),
                    )
                )[0],
                (await c.send("POST", "/v1/items", signer=kit, body=body, tamper=_flip_auth))[0],
                (
                    await c.send(
                        "POST",
                        "/v1/items",
                        signer=kit,
                        body=body,
                        tamper=lambda h, b: ({**h, HEADER: "12 not-a-tag"}, b),
                    )
                )[0],
                # a revoked kit, however well it signs
                (await c.send("POST", "/v1/items", signer=revoked, kit=REVOKED, body=body))[0],
            ]
            assert statuses == [401] * 8 + [403]
            assert await c.rows() == 0  # nothing stored
            # A genuine request, then the same bytes again (captured and replayed).
            hdrs = {"Kit-Id": str(KIT), "Kit-Link": "vsat"}
            _, hdrs[HEADER] = kit.sign("POST", "/v1/items", hdrs, body)
            for expected in (200, 401):
                async with c.http.post(c.url + "/v1/items", data=body, headers=hdrs) as resp:
                    assert resp.status == expected
            assert await c.rows() == 1
            refused = c.refusals()
            assert refused == Counter(unsigned=2, forged=5, malformed=1, revoked=1, replay=1), (
                refused
            )
            # tus: a keyed kit's upload is created, read and resumed only by signed requests
            meta = "kit " + base64.b64encode(str(KIT).encode()).decode() + ",seq " + "Mg=="
            tus = {"Tus-Resumable": "1.0.0", "Upload-Length": "5", "Upload-Metadata": meta}
            assert (await c.send("POST", "/v1/media", headers=tus, kit=KIT))[0] == 401
            async with c.http.post(c.url + "/v1/media", headers=tus) as resp:
                assert resp.status == 401  # no Kit-Id at all: the metadata names a keyed kit
            status, answer, _ = await c.send("POST", "/v1/media", signer=kit, headers=tus)
            assert status == 201
            path = answer["Location"]
            async with c.http.head(c.url + path, headers={"Tus-Resumable": "1.0.0"}) as resp:
                assert resp.status == 401
            chunk = {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            }
            async with c.http.patch(c.url + path, data=b"evil!", headers=chunk) as resp:
                assert resp.status == 401
            status, _, _ = await c.send("PATCH", path, signer=kit, headers=chunk, body=b"12345")
            assert status == 400  # signed, but a chunk's bytes are covered by its checksum
            for s in (kit, stranger, revoked, other):
                s.kit.state.close()

    run(main())


@pytest.mark.parametrize("prof", PROFILES)
def test_the_kit_refuses_answers_that_are_not_the_centres(tmp_path: Path, prof: str) -> None:
    """A stranger at the centre's address (or one replaying an old answer) cannot make
    the kit drop items with forged acknowledgements or obey forged orders."""

    async def main() -> None:
        replies: list[tuple[dict[str, str], bytes]] = []

        async def acks(request: web.Request) -> web.Response:
            headers, body = replies.pop(0) if replies else ({}, b"")
            return web.Response(body=body, headers=headers, content_type="application/cbor")

        fake = web.Application()
        fake.router.add_get("/v1/acks", acks)
        runner = web.AppRunner(fake)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        signer = kit_end(tmp_path, KIT, prof)
        # A genuine answer of the real centre to an earlier request, to replay.
        async with centre(tmp_path, prof) as c:
            status, real_headers, real_body = await c.send("GET", "/v1/acks", signer=signer)
            assert status == 200 and HEADER in real_headers
        evil = cbor2.dumps({"acks": [[1, 1000]], "orders": [[5, "", "全体撤离"]]})
        replies += [
            ({}, evil),  # no tag
            ({HEADER: "A" * 22}, evil),  # a made-up tag
            ({HEADER: real_headers[HEADER]}, real_body),  # a real answer, to another request
        ]
        link = IpLink(Config(kind="ip", name="vsat", url=url, rate=100_000, probe_interval=0.2))
        link.kit_id, link.auth = KIT, signer
        taken: list[object] = []
        link.on_acks = taken.append
        link.on_orders = taken.append
        running = asyncio.create_task(link.run())
        try:
            await until(lambda: not replies and link.stats.errors >= 3, timeout=20)
            assert taken == []
            assert not link.online
            audited = Counter(r for _, r, _, _ in signer.kit.state.audit_rows("answer-refused"))
            assert audited == Counter(unsigned=1, forged=2) == +signer.kit.refused
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await runner.cleanup()
            signer.kit.state.close()

    run(main())


def test_request_numbers_never_repeat_across_a_restart(tmp_path: Path) -> None:
    first = kit_end(tmp_path, KIT, "default")
    used = {first.sign("GET", "/v1/acks", {}, b"")[0] for _ in range(5)}
    first.kit.state.close()
    again = kit_end(tmp_path, KIT, "default")  # same counter file: a power cut, a restart
    assert again.sign("GET", "/v1/acks", {}, b"")[0] > max(used)
    again.kit.state.close()


_HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=60)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    auth=_HEADER_TEXT | st.from_regex(r"[0-9]{1,10} [A-Za-z0-9_-]{22}", fullmatch=True),
    method=st.sampled_from(["GET", "POST", "PATCH", "HEAD"]),
    path=_HEADER_TEXT,
    body=st.binary(max_size=64),
)
def test_any_kit_auth_header_is_refused_with_a_reason_or_verified(
    tmp_path: Path, auth: str, method: str, path: str, body: bytes
) -> None:
    from security.channel import CentreSecurity, Enrolled
    from security.profiles import profile

    state = SecurityState(tmp_path / "fuzz.sqlite3")
    try:
        security = CentreSecurity(
            {"default": simkeys.centre_pair("default")},
            {KIT: Enrolled(profile("default"), simkeys.kit_pair(KIT, "default").public)},
            state,
        )
        with pytest.raises(Refusal) as err:
            RequestVerifier(security).verify(KIT, method, path, {HEADER: auth}, body)
        assert err.value.reason in {"unsigned", "malformed", "forged"}
    finally:
        state.close()


# --- mutual TLS (security.tlsid) ---------------------------------------------------------


def _client(cert_from: KitSecurity | None, *, verify: Path | None = None) -> ssl.SSLContext:
    """A TLS client: with ``cert_from``'s derived client certificate, trusting ``verify``
    (or nothing checked, to see what the centre itself accepts)."""
    ctx = tlsid.kit_context(cert_from) if cert_from else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(verify)
    return ctx


@pytest.mark.parametrize("prof", PROFILES)
def test_mutual_tls_with_identities_derived_from_the_enrolled_keys(
    tmp_path: Path, prof: str
) -> None:
    async def main() -> None:
        config = CentreConfig(
            listen="127.0.0.1:0", data_dir=tmp_path / "centre", kits=enrolled(prof), tls=True
        )
        simkeys.install_centre(config.keys_dir, prof)
        sock = socket.create_server(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{sock.getsockname()[1]}"
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(config, sock=sock, stop=stop))
        signer = kit_end(tmp_path, KIT, prof)
        stranger = kit_end(tmp_path, STRANGER, prof, claims=KIT)
        revoked = kit_end(tmp_path, REVOKED, prof)
        try:
            state = SecurityState(config.security_db)
            state.revoke(REVOKED, "丢失 / lost")
            state.close()
            link = IpLink(Config(kind="ip", name="vsat", url=url, rate=100_000))
            link.kit_id, link.auth = KIT, signer
            acks: list[tuple[int, int]] = []
            link.on_acks = acks.extend
            running = asyncio.create_task(link.run())
            try:
                await until(lambda: link.online, timeout=20)
                await link.post_items([(1, to_wire(report("经 TLS 送达")))])
                assert acks == [(1, 1)]
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            body = batch((2, report("没有 TLS 身份")))
            hdrs = {"Kit-Id": str(KIT), "Kit-Link": "vsat"}
            async with aiohttp.ClientSession() as http:
                # Kit 7's signature, but not over kit 7's TLS identity: refused.
                _, hdrs[HEADER] = signer.sign("POST", "/v1/items", hdrs, body)
                async with http.post(
                    url + "/v1/items", data=body, headers=hdrs, ssl=_client(None)
                ) as resp:
                    assert resp.status == 401
                    assert "TLS identity" in await resp.text()
                # A stranger's certificate, or a revoked kit's, does not finish a handshake.
                for who, kit_id in ((stranger, KIT), (revoked, REVOKED)):
                    with pytest.raises(aiohttp.ClientError):
                        async with http.get(
                            url + "/v1/acks",
                            headers={"Kit-Id": str(kit_id)},
                            ssl=_client(who.kit),
                            server_hostname=tlsid.server_name(kit_id),
                        ):
                            pass
                # A browser gets the centre's own certificate (made on first start).
                tls_cert = config.keys_dir / "tls" / "tls.crt"
                async with http.get(
                    url + "/v1/acks",
                    ssl=_client(None, verify=tls_cert),
                    server_hostname="localhost",
                ) as resp:
                    assert resp.status == 400  # no Kit-Id: a refusal, over a working TLS
            state = SecurityState(config.security_db)
            try:
                audited = Counter(r for _, r, _, _ in state.audit_rows("tls-refused"))
                assert audited == Counter(revoked=1)  # the stranger fails at the certificate
                assert Counter(r for _, r, _, _ in state.audit_rows("request-refused")) == Counter(
                    {"tls-identity": 1}
                )
            finally:
                state.close()
        finally:
            stop.set()
            await serving
            for s in (signer, stranger, revoked):
                s.kit.state.close()

    run(main())
