"""Commands and wiring: `kit provision`, `kit wipe-keys`, `kit centre keys|revoke|audit`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import KitError
from security.channel import CentreSecurity, Enrolled, KitSecurity
from security.keys import KIT_KEY, parse_public, provision, read_private, wipe
from security.profiles import PROFILES, profile
from security.state import SecurityState

if TYPE_CHECKING:
    from centre.config import CentreConfig
    from config.schema import KitConfig

log = logging.getLogger("security")

CENTRE_COMMANDS = frozenset({"keys", "revoke", "reinstate", "audit"})
KIT_STATE = "uplink/security.sqlite3"  # under the kit's data folder


def centre_security(config: CentreConfig) -> CentreSecurity:
    """The centre's keys and every kit enrolled with a public key in ``config``."""
    kits: dict[int, Enrolled] = {}
    for kit in config.kits:
        if kit.public_key:
            prof, public = parse_public(kit.public_key)
            kits[kit.kit_id] = Enrolled(prof, public)
    return CentreSecurity.load(config.keys_dir, kits, config.security_db)


def keys_wiped(config: KitConfig) -> bool:
    """The kit's key is gone because it was wiped (its last key change in the audit), not
    because the kit was never provisioned."""
    if (config.keys_dir / KIT_KEY).exists():
        return False
    state = SecurityState(config.paths.data_dir / KIT_STATE)
    try:
        return state.last_event("key-created", "key-wiped") == "key-wiped"
    finally:
        state.close()


def kit_security(config: KitConfig) -> KitSecurity | None:
    """The kit's sealing keys, or None (frames go unsealed) without a centre public key."""
    if not config.security.centre_public_key:
        log.warning(
            "未配置中心公钥，窄带帧不加密，中心将拒收 / no centre public key in [security]: "
            "narrow frames go unsealed and the centre will refuse them"
        )
        return None
    return KitSecurity.load(
        config.kit.id,
        config.keys_dir,
        config.security.centre_public_key,
        config.paths.data_dir / KIT_STATE,
    )


# -- the kit's commands -------------------------------------------------------------------


def provision_main(config: KitConfig, profile_name: str | None) -> int:
    """Make the kit's key pair; print its public key and the centre's [[kits]] entry."""
    name = profile_name or config.security.profile
    try:
        pair = provision(config.keys_dir, name, KIT_KEY)
    except KitError as err:
        print(err, file=sys.stderr)
        return 1
    state = SecurityState(config.paths.data_dir / KIT_STATE)
    try:
        state.audit("key-created", config.kit.id, name, pair.public_text)
    finally:
        state.close()
    print(pair.public_text)
    print(
        f"# 在中心配置中登记 / enrol at the centre:\n[[kits]]\nkit_id = {config.kit.id}\n"
        f'name = "{config.kit.name}"\nprofile = "{name}"\npublic_key = "{pair.public_text}"',
        file=sys.stderr,
    )
    return 0


def wipe_main(config: KitConfig, yes: bool) -> int:
    """Destroy the kit's private keys (a kit about to be abandoned)."""
    if not yes:
        print(
            "将销毁本机密钥，之后须重新生成并登记；确认请加 --yes / this destroys the kit's keys "
            "(it must be provisioned and enrolled again): add --yes to confirm",
            file=sys.stderr,
        )
        return 2
    wiped = wipe_kit_keys(config, "command line")
    print(f"已销毁 {len(wiped)} 个密钥文件 / wiped {len(wiped)} key files")
    return 0


def wipe_kit_keys(config: KitConfig, how: str) -> list[Path]:
    """Destroy the kit's keys and audit who did it (``how``: the command line, the web
    page's user, the GPIO button). The outbox's data key goes first: once it is gone the
    stored report bodies are unreadable (the edge daemon notices at its next read and
    refuses bodies and new items) and the uplink stops, letting go of the keys it derived
    (uplink/process.py). Freed memory is not overwritten: power the kit off after a wipe."""
    from edge.atrest import wipe_key

    wiped = [*wipe_key(config.keys_dir), *wipe(config.keys_dir)]
    state = SecurityState(config.paths.data_dir / KIT_STATE)
    try:
        state.audit("key-wiped", config.kit.id, "wipe", ", ".join(p.name for p in wiped), how)
    finally:
        state.close()
    log.warning(
        "已销毁 %d 个密钥文件（%s）/ wiped %d key files (%s)", len(wiped), how, len(wiped), how
    )
    return wiped


# -- the centre's commands ----------------------------------------------------------------


def _centre_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kit centre", description="指挥中心密钥与设备登记 / the centre's keys and kits"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("keys", help="生成并显示中心公钥 / make and show the centre's public keys")
    p.add_argument("--profile", choices=sorted(PROFILES), help="only this profile")
    for name, text in (("revoke", "吊销设备 / revoke a kit"), ("reinstate", "恢复设备 / undo")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--kit", type=int, required=True, help="kit id 1-65535")
        p.add_argument("--reason", default="", help="why (kept in the audit log)")
    p = sub.add_parser("audit", help="审计日志 / show the audit log and check its chain")
    p.add_argument("--json", action="store_true")
    p.add_argument("--kit", type=int, help="该套件镜像到中心的审计日志 / a kit's mirrored log")
    for p in sub.choices.values():
        p.add_argument("--config", type=Path, required=True, help="the centre's TOML config")
    return parser


def centre_command(argv: list[str]) -> int:
    from centre.config import load_config

    args = _centre_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except KitError as err:
        print(err, file=sys.stderr)
        return 2
    if args.command == "keys":
        for name in [args.profile] if args.profile else sorted(PROFILES):
            path = config.keys_dir / f"centre-{name}.key"
            pair = (
                read_private(path) if path.exists() else provision(config.keys_dir, name, path.name)
            )
            print(pair.public_text)
        return 0
    if args.command == "audit" and args.kit is not None:
        from security.mirror import audit_main

        return audit_main(config, args.kit, as_json=args.json)
    state = SecurityState(config.security_db)
    try:
        if args.command == "audit":
            rows = state.audit_rows()
            broken = state.verify_chain()
            if args.json:
                print(json.dumps({"rows": rows, "broken_at": broken}, ensure_ascii=False))
            else:
                for kit_id, reason, detail, link in rows:
                    print(f"{kit_id or '-'}\t{reason}\t{link or '-'}\t{detail}")
                print("链完整 / chain intact" if broken is None else f"链断于 / broken at {broken}")
            return 0 if broken is None else 1
        if not 1 <= args.kit <= 65535:
            print("kit id 必须在 1–65535 / kit id must be 1-65535", file=sys.stderr)
            return 2
        if args.command == "revoke":
            done = state.revoke(args.kit, args.reason)
            print(
                f"已吊销 / revoked kit {args.kit}" if done else f"kit {args.kit}: already revoked"
            )
        else:
            done = state.reinstate(args.kit, args.reason)
            print(f"已恢复 / reinstated kit {args.kit}" if done else f"kit {args.kit}: not revoked")
        return 0
    finally:
        state.close()


__all__ = ["centre_command", "centre_security", "kit_security", "profile"]
