"""Provisioning, enrolment, revocation and wiping, through the `kit` command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from centre.config import build_config
from centre.errors import BadCentreConfig
from security.keys import KeyFileError, parse_public, read_private
from security.profiles import BadKey
from security.state import SecurityState


def kit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=60
    )


def kit_config(folder: Path, kit_id: int, profile: str = "default") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kit.toml"
    path.write_text(
        f'[kit]\nid = {kit_id}\nname = "套件 {kit_id}"\n'
        '[paths]\ndata_dir = "data"\nruntime_dir = "run"\n'
        f'[security]\nprofile = "{profile}"\n'
    )
    return path


def shares_a_run(a: bytes, b: bytes, n: int = 4) -> bool:
    runs = {a[i : i + n] for i in range(len(a) - n + 1)}
    return any(b[i : i + n] in runs for i in range(len(b) - n + 1))


@pytest.mark.parametrize("profile", ["default", "national"])
def test_provision_makes_a_private_key_only_the_owner_can_read_and_prints_the_public_key(
    tmp_path: Path, profile: str
) -> None:
    done = kit("provision", "--config", str(kit_config(tmp_path, 7, profile)))
    assert done.returncode == 0, done.stderr
    public = done.stdout.strip()
    assert public.startswith(f"{profile}:")
    assert f'public_key = "{public}"' in done.stderr and "kit_id = 7" in done.stderr
    keys = tmp_path / "data" / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "kit.key").stat().st_mode) == 0o600
    pair = read_private(keys / "kit.key")
    assert pair.public_text == public == (keys / "kit.pub").read_text().strip()
    again = kit("provision", "--config", str(kit_config(tmp_path, 7, profile)))
    assert again.returncode == 1 and "a key already exists" in again.stderr
    assert read_private(keys / "kit.key") == pair  # nothing replaced


def test_two_provisioned_kits_share_no_key_bytes(tmp_path: Path) -> None:
    pairs = []
    for kit_id in (1, 2):
        done = kit("provision", "--config", str(kit_config(tmp_path / str(kit_id), kit_id)))
        assert done.returncode == 0, done.stderr
        pairs.append(read_private(tmp_path / str(kit_id) / "data" / "keys" / "kit.key"))
    a, b = pairs
    assert not shares_a_run(a.private, b.private)
    assert not shares_a_run(a.public, b.public)
    assert not shares_a_run(a.private, b.public) and not shares_a_run(b.private, a.public)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    assert kit("provision", "--config", str(kit_config(tmp_path, 3))).returncode == 0
    key = tmp_path / "data" / "keys" / "kit.key"
    os.chmod(key, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        read_private(key)


def test_wipe_keys_destroys_the_key_and_is_audited(tmp_path: Path) -> None:
    config = kit_config(tmp_path, 4)
    assert kit("provision", "--config", str(config)).returncode == 0
    refused = kit("wipe-keys", "--config", str(config))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (tmp_path / "data" / "keys" / "kit.key").exists()
    done = kit("wipe-keys", "--yes", "--config", str(config))
    assert done.returncode == 0 and "wiped 2 key files" in done.stdout
    assert list((tmp_path / "data" / "keys").iterdir()) == []
    state = SecurityState(tmp_path / "data" / "uplink" / "security.sqlite3")
    try:
        events = [r[1] for r in state.audit_rows()]
        assert events == ["default", "wipe"] and state.verify_chain() is None
    finally:
        state.close()
    assert kit("provision", "--config", str(config)).returncode == 0  # a new identity


def test_public_keys_are_checked_at_enrolment(tmp_path: Path) -> None:
    good = kit("provision", "--config", str(kit_config(tmp_path, 5, "national"))).stdout.strip()
    prof, public = parse_public(good)
    assert prof.name == "national" and len(public) == 128
    for text, reason in (
        ("national", "a public key reads <profile>:<base64>"),
        ("rsa:AAAA", "unknown profile 'rsa'"),
        ("default:AAAA", "a default public key is 64 bytes, not 3"),
        ("national:" + good.split(":")[1][:-8] + "AAAAAAA=", "not a point on the curve"),
    ):
        with pytest.raises(BadKey, match=reason):
            parse_public(text)
    base = {"data_dir": str(tmp_path / "c")}
    kits = [{"kit_id": 5, "name": "五", "public_key": good}]  # profile left at default
    with pytest.raises(BadCentreConfig, match="public_key is a national key but profile is"):
        build_config({**base, "kits": kits}, "test")
    kits[0]["profile"] = "national"
    assert build_config({**base, "kits": kits}, "test").kits[0].public_key == good


def test_centre_keys_revoke_and_audit_commands(tmp_path: Path) -> None:
    config = tmp_path / "centre.toml"
    config.write_text(f'data_dir = "{tmp_path / "c"}"\n')
    keys = kit("centre", "keys", "--config", str(config))
    assert keys.returncode == 0, keys.stderr
    lines = keys.stdout.split()
    assert [line.split(":")[0] for line in lines] == ["default", "national"]
    assert kit("centre", "keys", "--config", str(config)).stdout.split() == lines  # kept
    assert stat.S_IMODE((tmp_path / "c" / "keys" / "centre-default.key").stat().st_mode) == 0o600
    revoke = kit("centre", "revoke", "--kit", "9", "--reason", "丢失", "--config", str(config))
    assert revoke.returncode == 0 and "revoked kit 9" in revoke.stdout
    again = kit("centre", "revoke", "--kit", "9", "--config", str(config))
    assert "already revoked" in again.stdout
    audit = kit("centre", "audit", "--config", str(config))
    assert audit.returncode == 0 and "9\trevoked\t-\t丢失" in audit.stdout
    assert "chain intact" in audit.stdout
    state = SecurityState(tmp_path / "c" / "security.sqlite3")
    try:
        assert state.revoked(9)
        state._db.execute("UPDATE audit SET detail = 'found' WHERE kit_id = 9")
        assert state.verify_chain() == 1
    finally:
        state.close()
    tampered = kit("centre", "audit", "--config", str(config))
    assert tampered.returncode == 1 and "broken at 1" in tampered.stdout


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.from_regex(r"(default|national):[A-Za-z0-9+/=]{0,180}"))
def test_any_public_key_text_parses_or_raises_bad_key(text: str) -> None:
    try:
        prof, public = parse_public(text)
    except BadKey:
        return
    assert len(public) == prof.public_bytes
