"""Who may change the kit: scrypt-hashed passwords, sessions, CSRF tokens, login back-off.

There is no default password: until ``kit web-password`` sets one, nobody can log in.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import KitError

USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 256
# scrypt at n=2**14, r=8: 16 MB and ~50 ms on a Pi 4 per try: slow for guessing, fine for people.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_MAX_S = 12 * 3600  # a login lasts a shift at most, however active


class BadPassword(KitError, ValueError):
    """A password that cannot be set (too short, too long, or a bad user name)."""


def read_new_password(from_stdin: bool) -> str | None:
    """A new password from stdin (one line), or asked twice on the terminal; None (after
    saying so) when the two differ. Shared by `kit web-password` and `kit centre operator`."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("新密码 / new password: ")
    if getpass.getpass("再输入一次 / again: ") != password:
        print("错误 / error: 两次输入不一致 / the passwords differ", file=sys.stderr)
        return None
    return password


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024**2
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024**2,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got.hex(), digest)


# Compared against when the user is unknown, so timing does not tell names apart.
_DUMMY = hash_password("not a password", salt=b"\0" * 16)


class Users:
    """The password file (``<data>/web/users.json``: name → scrypt hash), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(k): str(v) for k, v in raw.items()}

    def any(self) -> bool:
        return bool(self._read())

    def set(self, user: str, password: str) -> None:
        if not USER_NAME.match(user):
            raise BadPassword(
                "用户名只能是 1–32 个字母、数字或 _.-",
                "a user name is 1-32 letters, digits or _.-",
            )
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise BadPassword(
                f"密码需要 {MIN_PASSWORD}–{MAX_PASSWORD} 个字符",
                f"a password needs {MIN_PASSWORD}-{MAX_PASSWORD} characters",
            )
        users = self._read()
        users[user] = hash_password(password)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(users, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def check(self, user: str, password: str) -> bool:
        stored = self._read().get(user)
        ok = verify_password(password[:MAX_PASSWORD], stored or _DUMMY)
        return ok and stored is not None


@dataclass
class Session:
    user: str
    created: float
    seen: float


@dataclass
class Sessions:
    """Server-side sessions; the cookie holds only a random token."""

    idle_s: float
    clock: Callable[[], float] = time.monotonic
    _by_token: dict[str, Session] = field(default_factory=dict)

    def start(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        self._by_token[token] = Session(user, now, now)
        return token

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        now = self.clock()
        if session is None:
            return None
        if now - session.seen > self.idle_s or now - session.created > SESSION_MAX_S:
            del self._by_token[token]
            return None
        session.seen = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass
class LoginLimiter:
    """Per client: ``free`` wrong passwords, then a lock that doubles with each further one."""

    free: int = 5
    base_s: float = 2.0
    max_s: float = 900.0
    forget_s: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, _Failures] = field(default_factory=dict)

    def wait_s(self, client: str) -> float:
        """Seconds this client must wait before it may try again (0: it may try now)."""
        f = self._clients.get(client)
        if f is None:
            return 0.0
        return max(0.0, f.locked_until - self.clock())

    def failed(self, client: str) -> float:
        now = self.clock()
        f = self._clients.setdefault(client, _Failures())
        if now - f.last > self.forget_s:
            f.count = 0
        f.count += 1
        f.last = now
        if f.count >= self.free:
            f.locked_until = now + min(self.max_s, self.base_s * 2 ** (f.count - self.free))
        if len(self._clients) > 10_000:  # a flood of addresses must not grow memory forever
            oldest = min(self._clients, key=lambda c: self._clients[c].last)
            del self._clients[oldest]
        return self.wait_s(client)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


class Csrf:
    """Tokens bound to a visitor cookie: HMAC(secret, visitor id); the secret lives in memory."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or os.urandom(32)

    def token(self, visitor: str) -> str:
        return hmac.new(self.secret, visitor.encode(), hashlib.sha256).hexdigest()

    def valid(self, visitor: str | None, token: str | None) -> bool:
        if not visitor or not token:
            return False
        return hmac.compare_digest(self.token(visitor), token)
