"""Fixed key pairs for simulations and tests only (`sim/`): never for a real kit.

A simulated centre must list its kits' public keys before the kits have started, so
both ends compute the same pairs from a label. Anyone can: these keys protect nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from security import sm2
from security.keys import KIT_KEY, KeyPair, write_private
from security.profiles import profile


def sim_pair(label: str, profile_name: str) -> KeyPair:
    prof = profile(profile_name)
    seed = hashlib.sha512(f"fieldkit simulation key {profile_name} {label}".encode()).digest()
    if prof.name == "national":
        halves = [int.from_bytes(seed[i : i + 32], "big") % (sm2.N - 2) + 1 for i in (0, 32)]
        private = b"".join(h.to_bytes(32, "big") for h in halves)
    else:
        private = seed
    return KeyPair(prof, private, prof.public(private))


def centre_pair(profile_name: str) -> KeyPair:
    return sim_pair("centre", profile_name)


def kit_pair(kit_id: int, profile_name: str) -> KeyPair:
    return sim_pair(f"kit {kit_id}", profile_name)


def install_centre(keys_dir: Path, profile_name: str) -> KeyPair:
    pair = centre_pair(profile_name)
    path = keys_dir / f"centre-{profile_name}.key"
    if not path.exists():
        write_private(path, pair)
    return pair


def install_kit(keys_dir: Path, kit_id: int, profile_name: str) -> KeyPair:
    pair = kit_pair(kit_id, profile_name)
    path = keys_dir / KIT_KEY
    if path.exists():
        path.unlink()  # a harness re-using a folder for another kit id or profile
    write_private(path, pair)
    return pair


def enrol_lines(kit_id: int, profile_name: str = "default") -> list[str]:
    """The lines a simulated centre's ``[[kits]]`` table needs to enrol ``kit_id``."""
    return [
        f'profile = "{profile_name}"',
        f'public_key = "{kit_pair(kit_id, profile_name).public_text}"',
    ]


def kit_security_lines(kit_id: int, keys_dir: Path, profile_name: str = "default") -> list[str]:
    """A simulated kit's ``[security]`` table; installs its key pair in ``keys_dir``."""
    install_kit(keys_dir, kit_id, profile_name)
    return [
        "[security]",
        f'profile = "{profile_name}"',
        f'centre_public_key = "{centre_pair(profile_name).public_text}"',
    ]
