"""The centre's S3 media store against moto's S3 server on loopback: PUT and read-back rates.

moto is a Python server, so these figures are a floor for the centre's own overhead
(MD5 + SHA-256 over the file, boto3, one thread per call), not what MinIO or Ceph give.
Prints progress on stderr and one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from centre.config import MediaSection
from centre.mediastore import S3Store

BUCKET = "bench-media"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {log.read_text()}") from None
            time.sleep(0.1)


async def measure(store: S3Store, folder: Path, mb: int, smalls: int) -> dict[str, Any]:
    big = folder / "big.bin"
    big.write_bytes(os.urandom(mb * 1024**2))
    say(f"PUT of one {mb} MB file …")
    t0 = time.perf_counter()
    await store.put_file(big, "bench/big.bin")
    put_s = time.perf_counter() - t0
    say("reading it back as the dashboard does …")
    t0 = time.perf_counter()
    got = 0
    async for block in store.stream("bench/big.bin"):
        got += len(block)
    read_s = time.perf_counter() - t0
    assert got == mb * 1024**2
    say(f"{smalls} PUTs of a 5 KB inline thumbnail …")
    times = []
    for i in range(smalls):
        t0 = time.perf_counter()
        await store.put_bytes(f"bench/thumb-{i}.jpg", os.urandom(5000))
        times.append(time.perf_counter() - t0)
    return {
        "s3_put_mb_per_s": round(mb / put_s, 1),
        "s3_read_mb_per_s": round(mb / read_s, 1),
        "s3_put_5kb_median_ms": round(statistics.median(times) * 1000, 1),
    }


async def main(mb: int, smalls: int) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "mediastore", "server": "moto (loopback)", "file_mb": mb}
    with tempfile.TemporaryDirectory(prefix="kit-bench-s3-") as tmp:
        folder = Path(tmp)
        port = free_port()
        proc = start_moto(port, folder / "moto.log")
        try:
            import boto3

            admin = boto3.session.Session().client(
                "s3",
                endpoint_url=f"http://127.0.0.1:{port}",
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            admin.create_bucket(Bucket=BUCKET)
            admin.close()
            section = MediaSection(
                store="s3",
                endpoint=f"http://127.0.0.1:{port}",
                bucket=BUCKET,
                access_key="bench",
                secret_key_file=Path("unused"),
            )
            store = S3Store(section, "bench")
            try:
                result.update(await measure(store, folder, mb, smalls))
            finally:
                store.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=int, default=32, help="size of the large file, MB")
    ap.add_argument("--smalls", type=int, default=50, help="small files to put")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.mb, args.smalls)), ensure_ascii=False))
