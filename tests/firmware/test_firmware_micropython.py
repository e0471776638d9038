"""The companion's logic and board glue run under a real MicroPython (WebAssembly port, Node).

The port comes from the npm registry (``@micropython/micropython-webassembly-pyscript``,
pinned), installed into a cache folder by ``./bootstrap.sh test``; Node and npm come with
the system packages. The same logic checks run under CPython too, so both interpreters agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
PORT = "@micropython/micropython-webassembly-pyscript@1.27.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fieldkit" / "mp-1.27.0"
RUNNER = FIRMWARE / "tests" / "run_micropython.mjs"


@pytest.fixture(scope="module")
def port() -> Path:
    entry = CACHE / "node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs"
    assert entry.exists(), (
        f"没有 MicroPython：请运行 ./bootstrap.sh test / no MicroPython at {entry}: "
        "./bootstrap.sh test installs it (npm)"
    )
    return CACHE


def micropython(port: Path, code: str, *files: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node 未安装 / node is missing: ./bootstrap.sh installs nodejs"
    return subprocess.run(
        [node, str(RUNNER), str(port), str(FIRMWARE), code, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_is_really_micropython(port: Path) -> None:
    result = micropython(port, "import sys\nprint(sys.implementation.name)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython"


def test_logic_checks_pass_under_micropython(port: Path) -> None:
    result = micropython(
        port,
        "import logic_checks\nassert logic_checks.main() == 0",
        "kitlink.py",
        "supervisor.py",
        "tests/logic_checks.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 passed, 0 failed" in result.stdout


def test_a_failing_check_fails_the_micropython_run(port: Path) -> None:
    result = micropython(
        port,
        "import logic_checks\n"
        "def check_zz_broken():\n    assert False\n"
        "logic_checks.check_zz_broken = check_zz_broken\n"
        "assert logic_checks.main() == 0",
        "kitlink.py",
        "supervisor.py",
        "tests/logic_checks.py",
    )
    assert result.returncode == 1
    assert "FAIL check_zz_broken" in result.stdout


def test_board_glue_answers_over_the_uart_under_micropython(port: Path) -> None:
    result = micropython(
        port,
        "import board_checks\nassert board_checks.main() == 0",
        "kitlink.py",
        "supervisor.py",
        "main.py",
        "tests/board_checks.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "board checks: 1 passed, 0 failed" in result.stdout


def test_logic_checks_pass_under_cpython() -> None:
    result = subprocess.run(
        [sys.executable, str(FIRMWARE / "tests" / "logic_checks.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(FIRMWARE)},
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20 passed, 0 failed" in result.stdout
