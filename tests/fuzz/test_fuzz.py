"""Every fuzz target in tests/fuzz/targets.py runs under libFuzzer (atheris) for a bounded
number of runs; a crash leaves its input in the test's folder and fails the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TARGETS = ["nmea", "beidou", "at", "sms", "frame", "mesh-text"]
SCRIPT = Path(__file__).with_name("targets.py")
RUNS = 20_000  # per target: a few seconds each on a 2-core machine

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("target", TARGETS)
def test_parser_survives_the_fuzzer(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris wheels exist for x86_64 Linux only")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), target, f"-runs={RUNS}", "-max_total_time=30"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, done.stderr[-3000:]
