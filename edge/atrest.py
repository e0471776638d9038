"""Item bodies encrypted at rest under the kit's data key; destroying the key shreds them.

A sealed body is a 21-byte header, the ciphertext and a 16-byte tag::

    ff 41 52 | version (1) | cipher (1) | key id (4) | nonce (12) | ciphertext | tag (16)

``0xff`` never starts a CBOR item (it is the "break" code), so a plaintext body written
before encryption was turned on cannot be mistaken for a sealed one: both kinds read.
The associated data is the header and the item's uid, so a body moved to another row,
or its header edited, does not open. The nonce is random per write (a body is written
once). The data key is 32 random bytes in ``<data_dir>/keys/outbox.key`` (0600, the
service user's); each cipher uses its own key derived from it (HKDF-SHA256 for
ChaCha20-Poly1305, HKDF-SM3 for SM4-GCM). The store records the key's id, so that a
store whose key is gone (wiped) is recognised as such and never gets a new key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import KitError
from edge.fsync import fsync_dir as _fsync_dir

DATA_KEY = "outbox.key"  # in the kit's keys folder, so every key wipe destroys it
KEY_BYTES = 32
MAGIC = b"\xffAR"
VERSION = 1
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + 2 + KEY_ID_BYTES + NONCE_BYTES
OVERHEAD = HEADER_BYTES + TAG_BYTES

CHACHA20_POLY1305 = 1
SM4_GCM = 2
CIPHER_NAMES = {CHACHA20_POLY1305: "chacha20-poly1305", SM4_GCM: "sm4-gcm"}
PROFILE_CIPHERS = {"default": CHACHA20_POLY1305, "national": SM4_GCM}
_KEY_FILE_TAG = "outbox-data-key-v1"


class BodyUnreadable(KitError, ValueError):
    """A stored body that does not open: malformed, under another key, moved or tampered."""


class DataKeyError(KitError, RuntimeError):
    """The data key cannot be used (unreadable, corrupt, readable by others): bodies are
    neither read nor written until it is fixed."""


class KeysWiped(DataKeyError):
    """The data key was destroyed: the outbox's sealed bodies can never be read again."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    cipher: int
    key_id: bytes
    nonce: bytes


def _where(seq: int | None) -> tuple[str, str]:
    return ("", "") if seq is None else (f"条目 {seq} ", f"item {seq}: ")


def parse_header(body: bytes, seq: int | None = None) -> Header | None:
    """The header of a sealed body; None for a plaintext one; else :class:`BodyUnreadable`."""
    if not body or body[0] != MAGIC[0]:
        return None
    zh, en = _where(seq)
    if len(body) < HEADER_BYTES:
        raise BodyUnreadable(
            f"{zh}密文头被截断：{len(body)} 字节，至少需要 {HEADER_BYTES} 字节",
            f"{en}sealed body header truncated: {len(body)} bytes, {HEADER_BYTES} needed",
        )
    if body[: len(MAGIC)] != MAGIC:
        raise BodyUnreadable(
            f"{zh}内容既不是明文条目也不是密文：开头为 {body[:3].hex()}",
            f"{en}body is neither a plaintext item nor sealed: it starts {body[:3].hex()}",
        )
    version, cipher = body[3], body[4]
    if version != VERSION:
        raise BodyUnreadable(
            f"{zh}密文版本 {version} 不受支持（支持 {VERSION}）",
            f"{en}sealed body version {version} is not supported (expected {VERSION})",
        )
    if cipher not in CIPHER_NAMES:
        raise BodyUnreadable(
            f"{zh}未知的加密算法编号 {cipher}", f"{en}unknown cipher number {cipher}"
        )
    if len(body) < OVERHEAD:
        raise BodyUnreadable(
            f"{zh}密文被截断：{len(body)} 字节，至少需要 {OVERHEAD} 字节",
            f"{en}sealed body truncated: {len(body)} bytes, at least {OVERHEAD} needed",
        )
    key_id = body[5 : 5 + KEY_ID_BYTES]
    return Header(version, cipher, key_id, body[5 + KEY_ID_BYTES : HEADER_BYTES])


# -- the key file -------------------------------------------------------------------------


def make_key(path: Path) -> None:
    """A new data key at ``path`` (0600, folder 0700), durably; never replaces one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    text = f"{_KEY_FILE_TAG}\n{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic; fails if a key is already there
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


def read_key(path: Path) -> bytes:
    """The 32 key bytes of ``path``; :class:`DataKeyError` if unreadable, corrupt or
    readable by others."""
    try:
        info = path.stat()
        raw = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataKeyError(
            f"无法读取发件箱数据密钥 {path}：{exc}",
            f"cannot read the outbox data key {path}: {exc}",
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DataKeyError(
            f"发件箱数据密钥 {path} 权限过宽（{stat.filemode(info.st_mode)}）：应为 0600",
            f"the outbox data key {path} is readable by others "
            f"({stat.filemode(info.st_mode)}): chmod 600 it",
        )
    lines = raw.split()
    try:
        if len(lines) != 2 or lines[0] != _KEY_FILE_TAG:
            raise ValueError(f"expected two lines, the first {_KEY_FILE_TAG!r}")
        key = base64.b64decode(lines[1], validate=True)
        if len(key) != KEY_BYTES:
            raise ValueError(f"{len(key)} key bytes, not {KEY_BYTES}")
    except (ValueError, binascii.Error) as exc:
        raise DataKeyError(
            f"发件箱数据密钥 {path} 已损坏：{exc}", f"the outbox data key {path} is corrupt: {exc}"
        ) from None
    return key


def wipe_key(keys_dir: Path) -> list[Path]:
    """Overwrite, fsync and delete the data key (the crypto-shred); returns what went."""
    path = keys_dir / DATA_KEY
    try:
        f = open(path, "r+b")  # noqa: SIM115 — closed below, before the unlink
    except FileNotFoundError:
        return []
    with f:
        f.write(os.urandom(max(os.fstat(f.fileno()).st_size, 1)))
        f.flush()
        os.fsync(f.fileno())
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _fsync_dir(keys_dir)
    return [path]


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"fieldkit outbox key id\0" + key).digest()[:KEY_ID_BYTES]


class _Key:
    """The data key in memory, with one AEAD key per cipher derived from it."""

    def __init__(self, key: bytes, path: Path) -> None:
        self.id = key_id(key)
        self.inode = path.stat().st_ino
        self._chacha = ChaCha20Poly1305(
            HKDF(hashes.SHA256(), 32, salt=None, info=b"fieldkit outbox chacha20-poly1305").derive(
                key
            )
        )
        self._sm4 = HKDF(hashes.SM3(), 16, salt=None, info=b"fieldkit outbox sm4-gcm").derive(key)

    def seal(self, cipher: int, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        if cipher == CHACHA20_POLY1305:
            return self._chacha.encrypt(nonce, plaintext, aad)
        enc = Cipher(algorithms.SM4(self._sm4), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        return enc.update(plaintext) + enc.finalize() + enc.tag

    def open(self, cipher: int, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
        if cipher == CHACHA20_POLY1305:
            return self._chacha.decrypt(nonce, sealed, aad)
        ciphertext, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        dec = Cipher(algorithms.SM4(self._sm4), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(ciphertext) + dec.finalize()


class AtRest:
    """Seals and opens one store's item bodies; knows when the data key was wiped.

    ``AtRest()`` (no keys folder) never encrypts and opens plaintext bodies only.
    """

    def __init__(
        self, keys_dir: Path | None = None, profile: str = "default", encrypt: bool = False
    ) -> None:
        self.path = None if keys_dir is None else keys_dir / DATA_KEY
        self.cipher = PROFILE_CIPHERS[profile]
        self.encrypt = encrypt
        self._key: _Key | None = None
        self._store_path = Path("outbox.sqlite3")
        self.fault: DataKeyError | None = None

    def bind(self, recorded: str | None, store_path: Path) -> str | None:
        """Load (or, the first time encryption is on, make) the key for a store that
        recorded key id ``recorded``; returns the key id the store should record.

        A store that recorded a key whose file is gone, or differs, is wiped: it stays
        unreadable (a new key would not bring its bodies back) until it is removed.
        """
        self._store_path = store_path
        if self.path is None:
            if recorded is not None:
                self.fault = DataKeyError(
                    f"发件箱 {store_path} 由密钥 {recorded} 加密，但未给出密钥目录",
                    f"the outbox {store_path} is sealed under key {recorded}, "
                    "but no keys folder was given",
                )
            return recorded
        if recorded is None and self.encrypt and not self.path.exists():
            make_key(self.path)
        if not self.path.exists():
            if recorded is not None:
                self.fault = _wiped(store_path, "key file gone")
            return recorded
        try:
            key = _Key(read_key(self.path), self.path)
        except DataKeyError as err:
            self.fault = err
            return recorded
        if recorded is not None and recorded != key.id.hex():
            self.fault = _wiped(store_path, f"key {key.id.hex()} is not the store's {recorded}")
            return recorded
        self._key = key
        return key.id.hex()

    def check(self) -> None:
        """Raise :class:`KeysWiped` if the key was wiped (or replaced) since it was loaded,
        or the :class:`DataKeyError` that made it unusable at start."""
        if self.fault is not None:
            raise self.fault
        if self._key is None or self.path is None:
            return
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            inode = -1
        if inode != self._key.inode:
            self._key = None  # drop what this process holds of it
            self.fault = _wiped(self._store_path, "key file wiped while running")
            raise self.fault

    def seal(self, uid: bytes, body: bytes) -> bytes:
        """``body`` as it goes on disk: sealed if encryption is on, else as it is."""
        if not self.encrypt:
            return body
        if self._key is None:  # never written in the clear when encryption is on
            raise self.fault or DataKeyError("没有发件箱数据密钥", "no outbox data key")
        header = MAGIC + bytes((VERSION, self.cipher)) + self._key.id + os.urandom(NONCE_BYTES)
        return header + self._key.seal(self.cipher, header[-NONCE_BYTES:], header + uid, body)

    def open(self, uid: bytes, stored: bytes, seq: int | None = None) -> bytes:
        """The plaintext of a stored body (plaintext bodies pass through); checks nothing
        about the key file: call :meth:`check` once per batch first."""
        header = parse_header(stored, seq)
        if header is None:
            return stored
        zh, en = _where(seq)
        if self._key is None:
            raise BodyUnreadable(
                f"{zh}已加密，但本机没有发件箱数据密钥",
                f"{en}body is sealed but there is no data key",
            )
        if header.key_id != self._key.id:
            raise BodyUnreadable(
                f"{zh}由另一把密钥（{header.key_id.hex()}）加密，本机密钥为 {self._key.id.hex()}",
                f"{en}sealed under another key ({header.key_id.hex()}), "
                f"this kit's is {self._key.id.hex()}",
            )
        try:
            return self._key.open(
                header.cipher, header.nonce, stored[:HEADER_BYTES] + uid, stored[HEADER_BYTES:]
            )
        except InvalidTag:
            raise BodyUnreadable(
                f"{zh}密文校验失败：内容被篡改，或被移到了别的条目",
                f"{en}sealed body does not verify: tampered with, or moved from another item",
            ) from None

    def status(self) -> dict[str, Any]:
        return {
            "encrypt": self.encrypt,
            "cipher": CIPHER_NAMES[self.cipher] if self.encrypt else None,
            "key_id": None if self._key is None else self._key.id.hex(),
            "wiped": isinstance(self.fault, KeysWiped),
            "message": None if self.fault is None else str(self.fault),
        }


def _wiped(store_path: Path, why: str) -> KeysWiped:
    return KeysWiped(
        f"本机密钥已销毁：发件箱中的条目已无法解密，也不再接收新条目。重新启用本机前，"
        f"请运行 kit provision 并删除 {store_path}",
        f"this kit's keys were wiped ({why}): the outbox's items can no longer be decrypted "
        f"and new items are refused; before using the kit again, run `kit provision` and "
        f"delete {store_path}",
    )
