"""Sealing and opening narrow-link frames: the kit's end and the centre's end.

Each (kit, centre) pair has two keys, one per direction, derived from the long-term
keys alone. The nonce is direction | kit id | message sequence | fragment index
(12 bytes), unique because message sequences are reserved durably before use (the
kit's :class:`~uplink.msgseq.MessageSequence`, the centre's store blocks), and a re-sent
fragment is byte-identical. The header is the associated data; the payload is encrypted.

An opened frame must still be fresh: :meth:`fresh` takes each (sequence, fragment)
once per key, within a window of :data:`~security.state.WINDOW` sequences.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from security.keys import (
    KIT_KEY,
    KIT_SEQUENCE,
    KeyFileError,
    KeyPair,
    parse_public,
    provision,
    read_private,
)
from security.profiles import BadKey, Directional, Profile, Unauthentic
from security.state import SecurityState
from uplink.frames import BadFrame, Frame

log = logging.getLogger("security")

_CONTEXT = b"fieldkit narrow v1\x00"
IP_CONTEXT = b"\x00ip requests v1"  # the IP links' request keys (security.ipauth)
TLS_CONTEXT = b"\x00tls identities v1"  # the IP links' TLS identities (security.tlsid)


class Refusal(BadFrame):
    """A frame refused for a security reason; ``reason`` is a short code for the audit."""

    def __init__(self, reason: str, zh: str, en: str) -> None:
        super().__init__(zh, en)
        self.reason = reason


def nonce(frame: Frame) -> bytes:
    return struct.pack(">BHIB4x", frame.downlink, frame.kit_id, frame.msg_seq, frame.index)


def context(prof: Profile, kit_id: int, kit_public: bytes, centre_public: bytes) -> bytes:
    """What the derived keys are bound to: profile, kit id and both public keys."""
    return (
        _CONTEXT
        + prof.name.encode()
        + b"\x00"
        + kit_id.to_bytes(2, "big")
        + kit_public
        + centre_public
    )


def fingerprint(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:8]


def _forged() -> Refusal:
    return Refusal("forged", "认证标签校验失败", "authentication tag does not verify")


class _Audited:
    """Refusals counted by reason and written to the audit log."""

    state: SecurityState
    refused: Counter[str]

    def refuse(self, err: BadFrame, *, kit_id: int | None, link: str, size: int) -> None:
        reason = err.reason if isinstance(err, Refusal) else "malformed"
        self.record("frame-refused", reason, kit_id, f"a frame ({size} bytes)", err.en, link)

    def record(
        self, event: str, reason: str, kit_id: int | None, what: str, why: str, link: str
    ) -> None:
        """Count one refusal of ``what`` and write it to the audit log (frames, IP requests
        and answers, TLS handshakes alike)."""
        self.refused[reason] += 1
        self.state.audit(event, kit_id, reason, f"{what}: {why}", link)
        log.warning("%s: refused %s of kit %s: %s", link, what, kit_id, why)


class KitSecurity(_Audited):
    """The kit's end: seals its frames to the centre, opens the centre's frames to it."""

    def __init__(
        self,
        kit_id: int,
        pair: KeyPair,
        centre_public: bytes,
        state: SecurityState,
        sequence_path: Path | None = None,
    ) -> None:
        self.kit_id = kit_id
        self.sequence_path = sequence_path  # the kit's message sequences, kept with its key
        self.profile = pair.profile
        self.profile.check_public(centre_public)
        bound = context(pair.profile, kit_id, pair.public, centre_public)
        self._keys = pair.profile.directional(pair.private, centre_public, bound)
        self.ip_keys = pair.profile.directional(pair.private, centre_public, bound + IP_CONTEXT)
        self.tls_seeds = pair.profile.directional(pair.private, centre_public, bound + TLS_CONTEXT)
        self._peer = fingerprint(centre_public)
        self.state = state
        self.refused = Counter()

    @classmethod
    def load(
        cls, kit_id: int, keys_dir: Path, centre_public_text: str, state_path: Path
    ) -> KitSecurity:
        pair = read_private(keys_dir / KIT_KEY)
        prof, centre_public = parse_public(centre_public_text)
        if prof is not pair.profile:
            raise BadKey(
                f"中心公钥属于 {prof.name} 配置，本机密钥属于 {pair.profile.name}",
                f"the centre's key is for profile {prof.name}, this kit's for {pair.profile.name}",
            )
        return cls(kit_id, pair, centre_public, SecurityState(state_path), keys_dir / KIT_SEQUENCE)

    def seal(self, frame: Frame, header: bytes) -> bytes:
        if frame.downlink or frame.kit_id != self.kit_id:
            raise BadFrame(
                f"套件 {self.kit_id} 只封装自己的上行帧",
                f"kit {self.kit_id} seals only its own kit→centre frames",
            )
        return self.profile.seal(self._keys.up, nonce(frame), header, frame.payload)

    def open(self, frame: Frame, header: bytes) -> bytes:
        if not frame.downlink:
            raise Refusal("wrong-direction", "不是中心发来的帧", "not a centre→kit frame")
        if frame.kit_id != self.kit_id:
            raise Refusal(
                "wrong-kit",
                f"发给套件 {frame.kit_id} 的帧",
                f"a frame for kit {frame.kit_id}, not this one",
            )
        try:
            return self.profile.open(self._keys.down, nonce(frame), header, frame.payload)
        except Unauthentic:
            raise _forged() from None

    def fresh(self, frame: Frame) -> Refusal | None:
        """None the first time an authentic downlink (sequence, fragment) is seen."""
        why = self.state.accept(0, self._peer, frame.msg_seq, frame.index)
        return None if why is None else _stale(why, frame)


def _stale(why: str, frame: Frame) -> Refusal:
    if why == "replay":
        return Refusal(
            "replay",
            f"重放的帧：消息 {frame.msg_seq} 分片 {frame.index} 已收到过",
            f"replayed frame: message {frame.msg_seq} fragment {frame.index} already taken",
        )
    return Refusal(
        "stale",
        f"过旧的帧：消息 {frame.msg_seq} 在重放窗口之外",
        f"stale frame: message {frame.msg_seq} is older than the replay window",
    )


@dataclass(frozen=True, slots=True)
class Enrolled:
    """One enrolled kit as the centre knows it."""

    profile: Profile
    public: bytes


@dataclass(frozen=True, slots=True)
class _Session:
    profile: Profile
    keys: Directional
    ip: Directional  # the IP links' request keys (security.ipauth)
    tls: Directional  # seeds of the pair's TLS identities (security.tlsid)
    peer: bytes  # fingerprint of the kit's public key: a re-provisioned kit starts afresh


class CentreSecurity(_Audited):
    """The centre's end, shared by every gateway: one session per enrolled kit."""

    def __init__(
        self,
        centre_keys: Mapping[str, KeyPair],
        kits: Mapping[int, Enrolled],
        state: SecurityState,
    ) -> None:
        self._centre = dict(centre_keys)
        self._kits = dict(kits)
        self._sessions: dict[int, _Session] = {}
        self.state = state
        self.refused = Counter()

    @classmethod
    def load(cls, keys_dir: Path, kits: Mapping[int, Enrolled], state_path: Path) -> CentreSecurity:
        """The centre's keys from ``keys_dir`` (made on first start for each profile in use)."""
        state = SecurityState(state_path)
        pairs: dict[str, KeyPair] = {}
        for name in sorted({k.profile.name for k in kits.values()}):
            path = keys_dir / f"centre-{name}.key"
            try:
                pairs[name] = read_private(path)
            except KeyFileError:
                if path.exists():
                    raise
                try:
                    pairs[name] = provision(keys_dir, name, path.name)
                except KeyFileError:  # another worker of this centre made it just now
                    pairs[name] = read_private(path)
                    continue
                state.audit("key-created", None, name, pairs[name].public_text)
                log.info("centre key for profile %s made: %s", name, pairs[name].public_text)
        return cls(pairs, kits, state)

    def close(self) -> None:
        self.state.close()

    def _session(self, kit_id: int) -> _Session:
        if self.state.revoked(kit_id):
            raise Refusal("revoked", f"套件 {kit_id} 已被吊销", f"kit {kit_id} is revoked")
        session = self._sessions.get(kit_id)
        if session is not None:
            return session
        kit = self._kits.get(kit_id)
        centre = None if kit is None else self._centre.get(kit.profile.name)
        if kit is None or centre is None:
            raise Refusal(
                "unknown-kit",
                f"套件 {kit_id} 未登记公钥",
                f"kit {kit_id} is not enrolled (no public key)",
            )
        bound = context(kit.profile, kit_id, kit.public, centre.public)
        try:
            keys = kit.profile.directional(centre.private, kit.public, bound)
            ip = kit.profile.directional(centre.private, kit.public, bound + IP_CONTEXT)
            tls = kit.profile.directional(centre.private, kit.public, bound + TLS_CONTEXT)
        except BadKey as err:  # e.g. a small-order X25519 key in the enrolment
            raise Refusal("bad-key", err.zh, err.en) from None
        # The kit derives (up, down) from its side; the same context gives the same pair.
        session = _Session(kit.profile, keys, ip, tls, fingerprint(kit.public))
        self._sessions[kit_id] = session
        return session

    def enrolled(self, kit_id: int) -> bool:
        """True if ``kit_id`` is enrolled with a public key (revoked or not)."""
        return kit_id in self._kits

    def session(self, kit_id: int) -> _Session:
        """The kit's keys; :class:`Refusal` if it is revoked or not enrolled with a key."""
        return self._session(kit_id)

    def seal(self, frame: Frame, header: bytes) -> bytes:
        session = self._session(frame.kit_id)
        return session.profile.seal(session.keys.down, nonce(frame), header, frame.payload)

    def open(self, frame: Frame, header: bytes) -> bytes:
        if frame.downlink:
            raise Refusal("wrong-direction", "不是套件发来的帧", "not a kit→centre frame")
        session = self._session(frame.kit_id)
        try:
            return session.profile.open(session.keys.up, nonce(frame), header, frame.payload)
        except Unauthentic:
            raise _forged() from None

    def fresh(self, frame: Frame) -> Refusal | None:
        """None the first time an authentic uplink (sequence, fragment) of a kit is seen."""
        peer = self._session(frame.kit_id).peer
        why = self.state.accept(frame.kit_id, peer, frame.msg_seq, frame.index)
        return None if why is None else _stale(why, frame)
