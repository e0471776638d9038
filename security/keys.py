"""Key files at rest, public keys as text, provisioning and wiping.

A private key file is two lines, the profile and the base64 of the private key, in a
``keys/`` folder of mode 0700, the file itself 0600 (readable only by the service
user); one readable by anyone else is refused. A public key travels as text:
``<profile>:<base64>`` (in the centre's ``[[kits]]`` and the kit's ``[security]``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KitError
from edge.fsync import fsync_dir as _fsync_dir
from security.profiles import BadKey, Profile, profile

KIT_KEY = "kit.key"
KIT_PUB = "kit.pub"
KIT_SEQUENCE = "kit.seq"  # durable message-sequence blocks of this key (uplink.msgseq)


class KeyFileError(KitError, OSError):
    """A key file that is missing, unreadable, malformed or too widely readable."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    profile: Profile
    private: bytes
    public: bytes

    @property
    def public_text(self) -> str:
        return public_text(self.profile, self.public)


def public_text(prof: Profile, public: bytes) -> str:
    return f"{prof.name}:{base64.b64encode(public).decode()}"


def parse_public(text: str) -> tuple[Profile, bytes]:
    """``<profile>:<base64>`` → (profile, public key bytes), checked; else :class:`BadKey`."""
    name, sep, b64 = text.strip().partition(":")
    if not sep:
        raise BadKey(
            f"公钥格式应为 <配置>:<base64>：{text[:40]!r}",
            f"a public key reads <profile>:<base64>, not {text[:40]!r}",
        )
    prof = profile(name)
    try:
        public = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("公钥不是有效的 base64", "public key is not valid base64") from None
    prof.check_public(public)
    if prof.name == "national":
        from security import sm2  # the curve check only matters for SM2 points

        try:
            sm2.check_public(public[:64])
            sm2.check_public(public[64:])
        except sm2.BadSm2Key as err:
            raise BadKey(err.zh, err.en) from None
    return prof, public


def write_private(path: Path, pair: KeyPair) -> None:
    """Write ``pair`` to ``path`` (0600, folder 0700), durably and atomically; an existing
    key is never replaced (:class:`KeyFileError`)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    text = f"{pair.profile.name}\n{base64.b64encode(pair.private).decode()}\n".encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and fails if another process made the key first
    except FileExistsError:
        raise KeyFileError(
            f"密钥已存在：{path}（如需更换，先运行 kit wipe-keys）",
            f"a key already exists at {path} (run `kit wipe-keys` first to replace it)",
        ) from None
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


def read_private(path: Path) -> KeyPair:
    try:
        info = path.stat()
        raw = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(
            f"没有密钥文件 {path}：请先运行 kit provision",
            f"no key file {path}: run `kit provision` first",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"无法读取密钥文件 {path}：{exc}", f"cannot read key file {path}: {exc}"
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"密钥文件 {path} 权限过宽（{stat.filemode(info.st_mode)}）：应为 0600",
            f"key file {path} is readable by others ({stat.filemode(info.st_mode)}): "
            "chmod 600 it, or wipe and provision anew",
        )
    lines = raw.split()
    try:
        if len(lines) != 2:
            raise ValueError("two lines expected")
        prof = profile(lines[0])
        private = base64.b64decode(lines[1], validate=True)
        prof.check_private(private)
        return KeyPair(prof, private, prof.public(private))
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(
            f"密钥文件 {path} 已损坏：{exc}", f"key file {path} is corrupt: {exc}"
        ) from None


def provision(keys_dir: Path, profile_name: str, name: str = KIT_KEY) -> KeyPair:
    """A new key pair in ``keys_dir/name`` (and its public key beside it, ``.pub``).

    Refuses to overwrite an existing key: wipe it first (a deliberate act).
    """
    prof = profile(profile_name)
    path = keys_dir / name
    if path.exists():  # fail before the (slow, for SM2) key generation
        raise KeyFileError(
            f"密钥已存在：{path}（如需更换，先运行 kit wipe-keys）",
            f"a key already exists at {path} (run `kit wipe-keys` first to replace it)",
        )
    private = prof.generate()
    pair = KeyPair(prof, private, prof.public(private))
    write_private(path, pair)
    path.with_suffix(".pub").write_text(pair.public_text + "\n", encoding="ascii")
    return pair


def wipe(keys_dir: Path) -> list[Path]:
    """Overwrite and delete every private key in ``keys_dir``; returns what was wiped.

    Overwriting in place is best effort on flash (wear levelling may keep old blocks);
    what it guarantees is that the kit itself can no longer read or use the key.
    """
    wiped: list[Path] = []
    if not keys_dir.is_dir():
        return wiped
    for path in sorted(keys_dir.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".key":
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.write(os.urandom(size))
                f.flush()
                os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        wiped.append(path)
    _fsync_dir(keys_dir)
    return wiped
