"""An I/O error on fsync: the edge daemon gives no acknowledgement for what may not be on
disk, keeps running, and takes the same items again (stored once) when the disk recovers.

The error is real as far as the daemon can tell: an LD_PRELOAD shim (compiled by the test)
makes fsync and fdatasync fail with EIO while a flag file exists.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import endpoint, stop, wait_ready

from edge.client import EdgeClient, EdgeRefused
from edge.item import Item, new_item

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("FSYNC_FAIL_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"""


@pytest.fixture
def shim(tmp_path: Path) -> Path:
    source = tmp_path / "fsync_eio.c"
    source.write_text(SHIM)
    library = tmp_path / "fsync_eio.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True
    )
    return library


def report(n: int) -> Item:
    return new_item("situation", source="web", text=f"报告 {n}")


def start(config: Path, library: Path, flag: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LD_PRELOAD": str(library), "FSYNC_FAIL_FLAG": str(flag)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "edge", "--config", str(config)],
        stderr=subprocess.PIPE,
        env=env,
    )
    wait_ready(config, proc)
    return proc


def test_no_acknowledgement_without_fsync_and_the_items_come_again_once(
    kit_config: Path,
    shim: Path,
    tmp_path: Path,
) -> None:
    flag = tmp_path / "disk-failing"
    proc = start(kit_config, shim, flag)
    acked: dict[bytes, int] = {}
    refused: list[Item] = []
    try:
        with EdgeClient(endpoint(kit_config), timeout_s=5.0, retries=0) as client:
            for n in range(5):
                item = report(n)
                acked[item.uid.bytes] = client.accept(item)["seq"]
            flag.touch()  # the card starts failing
            for n in range(5, 15):
                item = report(n)
                with pytest.raises(EdgeRefused, match="store write failed"):
                    client.accept(item)
                refused.append(item)
            assert client.status()["kit"]["id"] == 7  # still answering
            flag.unlink()  # back (a re-seated card, a cooled-down controller)
            for item in refused:  # the clients retry the same items
                acked[item.uid.bytes] = client.accept(item)["seq"]
            for n in range(15, 20):
                item = report(n)
                acked[item.uid.bytes] = client.accept(item)["seq"]
    finally:
        stop(proc)
    db = sqlite3.connect(kit_config.parent / "data" / "outbox.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(db.execute("SELECT uid, seq FROM items"))
    finally:
        db.close()
    assert rows == acked  # every acknowledged item on disk, each exactly once
