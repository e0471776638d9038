"""Benchmark: a whole day of `kit sim` at high speed, every kit process watched for growth.

Plays ``day`` (sim/scenarios/day.toml: 24 scenario hours, ×60 by default, ≈ 24 minutes)
with the whole system and samples, every ``--sample-s`` real seconds, the resident memory
and the open file descriptors of each kit process (`kit run` and its edge, uplink,
drivers, mesh, media) and of the centre (``sim.soak``). It prints, per process: RSS at
the end of the warm-up (the first quarter), at the end and its peak (MB), the file
descriptors at the same moments and their growth, and how often its pid changed
(restarts); per class, items filed and delivered. The last line is one JSON object.

    .venv/bin/python -m bench.soak                                # the whole day, ≈ 24 min
    .venv/bin/python -m bench.soak --duration 7200 --speed 120    # two hours in one minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import zmq.asyncio

from sim.scenario import find_scenario, load_scenario
from sim.soak import soak


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scenario = load_scenario(find_scenario(args.scenario))
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-soak-"))
    print(
        f"浸泡测试 / soak: {args.scenario}, 运行中 / running in {root} …",
        file=sys.stderr,
        flush=True,
    )
    result = await soak(
        scenario, root, speed=args.speed, duration=args.duration, sample_s=args.sample_s
    )
    result["machine"] = (
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="day", help="name or file (default: day)")
    parser.add_argument("--speed", type=float, help="override the scenario's speed")
    parser.add_argument("--duration", type=float, help="scenario seconds to play")
    parser.add_argument("--sample-s", type=float, default=1.0, help="real seconds between samples")
    parser.add_argument("--dir", help="folder for the run (default: a new temporary one)")
    out = asyncio.run(main(parser.parse_args()))
    with contextlib.suppress(Exception):
        zmq.asyncio.Context.instance().term()
    print(json.dumps(out, ensure_ascii=False))
