"""A throwaway PostgreSQL server in a temporary folder, for the tests and benchmarks of the
scale-out store: started as the ``postgres`` user when run as root (PostgreSQL refuses
root), listening only on a unix socket in its folder; removed with everything in it."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from itertools import count
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("KIT_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # the system user the server runs as when the tests run as root


class PgServer:
    """One PostgreSQL cluster in a temporary folder; :meth:`stop` and :meth:`start` it at
    will (a database outage), :meth:`remove` at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kit-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._names = count(1)
        try:
            self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                     "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(PG_BIN / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log}")

    def start(self, *, fsync: bool = False) -> None:
        """Start (again); without ``fsync`` (tests) a crash of the machine may lose data."""
        options = (
            f"-k {self.root} -c listen_addresses='' -c fsync={'on' if fsync else 'off'}"
            " -c max_connections=300"
        )
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def new_database(self) -> str:
        """A new empty database's URL."""
        name = f"centre_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def remove(self) -> None:
        # It may not be running (a test stopped it and failed before starting it again).
        with contextlib.suppress(RuntimeError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
