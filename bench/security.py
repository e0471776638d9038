"""Security benchmark: sealed-frame overhead, seal/open rates and the SOS size, per profile.

Also the one-off costs: key agreement per (kit, centre) pair (SM2 in Python, once per
process) and key generation. Prints progress to stderr and one JSON object as the last
line of stdout.
    .venv/bin/python bench/security.py [--frames 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a file: import the kit's packages, not this folder.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from security import simkeys
from security.channel import CentreSecurity, Enrolled, KitSecurity
from security.ipauth import HEADER, RequestSigner, RequestVerifier
from security.profiles import PROFILES, profile
from security.state import SecurityState
from security.tlsid import Identities
from uplink import compact
from uplink.frames import MTU_BEIDOU, TAG_BYTES, decode_frame, fragment

KIT = 7


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def rate(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def per_op_ms(fn: Callable[[], object], n: int) -> float:
    return round(1000.0 / rate(fn, n), 3)


def measure(name: str, frames: int, tmp: Path) -> dict[str, Any]:
    prof = profile(name)
    n = max(frames // 20, 100)  # frames accepted with a durable replay row each
    kit = KitSecurity(
        KIT,
        simkeys.kit_pair(KIT, name),
        simkeys.centre_pair(name).public,
        SecurityState(tmp / f"kit-{name}.sqlite3"),
    )
    centre = CentreSecurity(
        {name: simkeys.centre_pair(name)},
        {KIT: Enrolled(prof, simkeys.kit_pair(KIT, name).public)},
        SecurityState(tmp / f"centre-{name}.sqlite3"),
    )
    try:
        sos = compact.pack_items([(compact.SOS_SEQ, compact.sos_example())])
        (sealed_sos,) = fragment(KIT, 0xFFFF_FFFF, sos, MTU_BEIDOU, sealer=kit)
        report = os.urandom(40)  # a typical small report
        sealed = fragment(KIT, 1, report, MTU_BEIDOU, sealer=kit)[0]
        seal_rate = rate(lambda: fragment(KIT, 1, report, MTU_BEIDOU, sealer=kit), frames)
        open_rate = rate(lambda: decode_frame(sealed, sealer=centre), frames)
        private = prof.generate()
        peer = simkeys.centre_pair(name).public
        # An IP request: a 4 KB batch signed at the kit, verified (and its number taken in
        # the replay window, a SQLite row) at the centre.
        signer = RequestSigner(kit, tmp / f"ip-{name}.seq")
        verifier = RequestVerifier(centre)
        body = os.urandom(4096)
        headers = {"Kit-Link": "vsat"}

        def request() -> None:
            _, auth = signer.sign("POST", "/v1/items", headers, body)
            verifier.verify(KIT, "POST", "/v1/items", {**headers, HEADER: auth}, body)

        ip_rate = rate(request, max(frames // 10, 100))
        # The centre's accept path: open, then take the frame in the replay window (a
        # SQLite row, durable before the frame is acknowledged).
        fresh = [fragment(KIT, 1000 + i, report, MTU_BEIDOU, sealer=kit)[0] for i in range(n)]
        taken = iter(fresh)
        accept_rate = rate(lambda: centre.fresh(decode_frame(next(taken), sealer=centre)), n)
        session = centre.session(KIT)
        return {
            "frame_overhead_bytes": len(sealed) - len(report),
            "seal_per_s": round(seal_rate),
            "open_per_s": round(open_rate),
            "accept_per_s": round(accept_rate),
            "sos_beidou_bytes": len(sealed_sos) + 1,  # + the A4 marker byte of mixed mode
            "agree_ms": per_op_ms(lambda: prof.directional(private, peer, b"bench"), 20),
            "keygen_ms": per_op_ms(lambda: prof.public(prof.generate()), 20),
            "ip_request_sign_verify_per_s": round(ip_rate),
            "tls_identities_ms": per_op_ms(lambda: Identities(KIT, session.tls), 20),
        }
    finally:
        kit.state.close()
        centre.close()


def main(frames: int) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "security", "tag_bytes": TAG_BYTES}
    with tempfile.TemporaryDirectory(prefix="kit-bench-security-") as tmp:
        for name in PROFILES:
            say(f"{name}: sealing and opening {frames} frames …")
            result[name] = measure(name, frames, Path(tmp))
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=20000)
    args = ap.parse_args()
    print(json.dumps(main(args.frames), ensure_ascii=False))
