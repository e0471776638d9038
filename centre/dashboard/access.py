"""Who may use the dashboard and the order and export APIs: operators and machines.

Operators log in with a password (``kit centre operator add``; scrypt hashes, login
back-off and CSRF tokens from :mod:`config.web.auth`). Their sessions live in the store,
so every worker of a PostgreSQL centre knows them; the CSRF secret lives in the data
folder for the same reason. Machines (the command centre's own platforms) send
``Authorization: Bearer <token>`` (``kit centre token add``); programs on the centre's
host that are not browsers are trusted while ``[dashboard] trust_loopback`` is on.
A request that carries what only browsers send (Origin, Sec-Fetch-*, cookies) is never
a trusted program: it needs an operator's session, and a CSRF token to change anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from centre.config import CentreConfig
from centre.db import PgDatabase
from centre.errors import Refused
from centre.store import Store, now_ms
from config.web.auth import SESSION_MAX_S, Csrf, LoginLimiter, Users
from security.trail import AuditTrail

SESSION_COOKIE = "centre_s"
_SESSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS operator_sessions("
    "token_sha256 TEXT PRIMARY KEY, operator TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL, seen_ms BIGINT NOT NULL)"
)
# Wrong passwords per client address, in the store so that every worker of a centre counts
# the same failures (a guesser spread over the workers behind one address gains nothing).
_FAILURES_DDL = (
    "CREATE TABLE IF NOT EXISTS login_failures("
    "client TEXT PRIMARY KEY, count BIGINT NOT NULL,"
    " last_ms BIGINT NOT NULL, locked_until_ms BIGINT NOT NULL)"
)
_BROWSER_HEADERS = ("Origin", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Cookie")


def in_data(config: CentreConfig, path: Path) -> Path:
    return path if path.is_absolute() else config.data_dir / path


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def shared_secret(path: Path) -> bytes:
    """The CSRF secret every worker shares: made once (the first worker wins), then read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    secret = os.urandom(32)
    try:
        os.write(fd, secret.hex().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return secret


class Tokens:
    """Machines' bearer tokens, ``NAME:SECRET``; the secret is kept as an operator's
    password is (scrypt, in its own file), shown once when made."""

    def __init__(self, path: Path) -> None:
        self.secrets = Users(path)

    def add(self, name: str) -> str:
        """A new token for ``name`` (replacing its old one)."""
        secret = secrets.token_urlsafe(32)
        self.secrets.set(name, secret)
        return f"{name}:{secret}"

    def who(self, token: str) -> str | None:
        name, _, secret = token.partition(":")
        return name if secret and self.secrets.check(name, secret) else None


@dataclass(frozen=True)
class Operator:
    name: str
    token: str  # the session's; CSRF tokens are bound to it


class SharedLimiter:
    """:class:`LoginLimiter`'s rule (``free`` wrong passwords, then a lock doubling with each
    further one, forgotten after ``forget_s``), counted in the store for every worker."""

    def __init__(self, store: Store, rule: LoginLimiter | None = None) -> None:
        self.store = store
        self.rule = rule or LoginLimiter()

    async def wait_s(self, client: str) -> float:
        """Seconds this client must wait before it may try again (0: it may try now)."""
        async with (
            self.store.reading() as db,
            db.execute(
                "SELECT locked_until_ms FROM login_failures WHERE client = ?", (client,)
            ) as cur,
        ):
            row = await cur.fetchone()
        return 0.0 if row is None else max(0.0, (int(row[0]) - now_ms()) / 1000)

    async def failed(self, client: str) -> float:
        """Count one wrong password of ``client``; the seconds it must now wait."""
        rule, now = self.rule, now_ms()
        forget_ms = int(rule.forget_s * 1000)
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM login_failures WHERE last_ms < ?", (now - forget_ms,))
            await db.execute(
                "INSERT INTO login_failures VALUES (?, 1, ?, 0) ON CONFLICT (client) DO UPDATE"
                " SET count = login_failures.count + 1, last_ms = excluded.last_ms",
                (client, now),
            )
            async with db.execute(
                "SELECT count FROM login_failures WHERE client = ?", (client,)
            ) as cur:
                (count,) = await cur.fetchone()
            until = 0
            if count >= rule.free:
                lock_s = min(rule.max_s, rule.base_s * 2 ** (int(count) - rule.free))
                until = now + int(lock_s * 1000)
                await db.execute(
                    "UPDATE login_failures SET locked_until_ms = ? WHERE client = ?",
                    (until, client),
                )
        return max(0.0, (until - now) / 1000)

    async def succeeded(self, client: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM login_failures WHERE client = ?", (client,))


class Access:
    """Operators' passwords and sessions, machines' tokens, the login back-off, CSRF."""

    def __init__(self, config: CentreConfig, store: Store) -> None:
        d = config.dashboard
        self.store = store
        self.users = Users(in_data(config, d.operators_file))
        self.tokens = Tokens(in_data(config, d.tokens_file))
        self.idle_ms = d.session_idle_min * 60_000
        self.trust_loopback = d.trust_loopback
        self.limiter = SharedLimiter(store)
        self.csrf = Csrf(shared_secret(config.data_dir / "dashboard" / "csrf.secret"))
        self.trail = AuditTrail(config.security_db, None, "dashboard")  # logins, chained

    async def prepare(self) -> None:
        """The sessions' table, made by whichever worker comes first."""
        if isinstance(self.store.db, PgDatabase):
            await self.store.db.serialised(f"{_SESSIONS_DDL}; {_FAILURES_DDL}")
            return
        async with self.store.transaction() as db:
            await db.execute(_SESSIONS_DDL.replace("BIGINT", "INTEGER"))
            await db.execute(_FAILURES_DDL.replace("BIGINT", "INTEGER"))

    # -- sessions -------------------------------------------------------------------------

    async def start(self, operator: str) -> str:
        token = secrets.token_urlsafe(32)
        now = now_ms()
        async with self.store.transaction() as db:
            await db.execute(
                "DELETE FROM operator_sessions WHERE seen_ms < ? OR created_ms < ?",
                (now - self.idle_ms, now - SESSION_MAX_S * 1000),
            )
            await db.execute(
                "INSERT INTO operator_sessions VALUES (?, ?, ?, ?)",
                (_digest(token), operator, now, now),
            )
        return token

    async def operator(self, request: web.Request) -> Operator | None:
        """The logged-in operator of ``request`` (their session is kept alive), or None."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token or len(token) > 100:
            return None
        now = now_ms()
        async with (
            self.store.reading() as db,
            db.execute(
                "SELECT operator, created_ms, seen_ms FROM operator_sessions"
                " WHERE token_sha256 = ?",
                (_digest(token),),
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return None
        name, created, seen = str(row[0]), int(row[1]), int(row[2])
        if now - seen > self.idle_ms or now - created > SESSION_MAX_S * 1000:
            await self.end(token)
            return None
        if now - seen > 10_000:  # a write at most every 10 s per session, not per request
            async with self.store.transaction() as db:
                await db.execute(
                    "UPDATE operator_sessions SET seen_ms = ? WHERE token_sha256 = ?",
                    (now, _digest(token)),
                )
        return Operator(name, token)

    async def end(self, token: str | None) -> None:
        if token:
            async with self.store.transaction() as db:
                await db.execute(
                    "DELETE FROM operator_sessions WHERE token_sha256 = ?", (_digest(token),)
                )

    # -- guards ---------------------------------------------------------------------------

    def csrf_ok(self, request: web.Request, operator: Operator) -> bool:
        return same_origin(request) and self.csrf.valid(
            operator.token, request.headers.get("X-CSRF-Token")
        )

    async def require(self, request: web.Request, *, write: bool) -> str:
        """Who is asking (``operator:NAME``, ``token:NAME`` or ``local``), else a refusal:
        401 without credentials, 403 for a browser's change without a valid CSRF token."""
        auth = request.headers.get("Authorization", "")
        if auth:
            scheme, _, token = auth.partition(" ")
            bearer = scheme.lower() == "bearer"
            name = await asyncio.to_thread(self.tokens.who, token.strip()) if bearer else None
            if name is None:
                raise Refused(
                    401,
                    "接口令牌无效（kit centre token add 生成）",
                    "invalid bearer token (kit centre token add makes one)",
                    {"WWW-Authenticate": "Bearer"},
                )
            return f"token:{name}"
        if is_browser(request):
            operator = await self.operator(request)
            if operator is None:
                raise Refused(401, "请先在 /dashboard 登录", "log in at /dashboard first", {})
            if write and not self.csrf_ok(request, operator):
                raise Refused(
                    403,
                    "请求被拒绝：页面已过期（CSRF），请刷新页面后重试",
                    "refused: the page is out of date (CSRF); reload it and try again",
                )
            return f"operator:{operator.name}"
        if self.trust_loopback and is_loopback(request.remote):
            return "local"
        raise Refused(
            401,
            "需要接口令牌：Authorization: Bearer …（kit centre token add 生成）",
            "a bearer token is needed: Authorization: Bearer … (kit centre token add)",
            {"WWW-Authenticate": "Bearer"},
        )


ACCESS = web.AppKey("access", Access)


def is_browser(request: web.Request) -> bool:
    return any(h in request.headers for h in _BROWSER_HEADERS)


def is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin"
    return origin.split("://", 1)[-1] == request.host


async def require(request: web.Request, *, write: bool) -> str:
    """:meth:`Access.require` of the application ``request`` came to."""
    return await request.app[ACCESS].require(request, write=write)
