"""Several gateway workers on PostgreSQL behind one address, and a database outage."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cbor2
import pytest
import requests
from centre_helpers import KITS, RunningCentre, answer, batch, dump, report
from pg_helpers import pg_server_fixture as pg_server_fixture

from centre.app import main
from centre.config import CentreConfig
from centre.pgserver import PgServer

WORKERS = 4
FLEET = range(101, 141)  # 40 kits
SEQS = 50
WINDOWS = [range(start, min(start + 15, SEQS)) for start in range(0, SEQS, 5)]  # overlapping


def _config_toml(data: Path, database: str) -> str:
    kits = "".join(f'[[kits]]\nkit_id = {k}\nname = "队 {k}"\n' for k in FLEET)
    return f'data_dir = "{data}"\nlisten = "127.0.0.1:0"\ndatabase = "{database}"\n{kits}'


class Centre:
    """``kit centre --workers N`` as a process; its log (every worker's) in a file."""

    def __init__(self, tmp: Path, database: str, workers: int) -> None:
        config = tmp / "centre.toml"
        config.write_text(_config_toml(tmp / "data", database), encoding="utf-8")
        self.log_path = tmp / "centre.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from centre.app import main; sys.exit(main())",
                 "--config", str(config), "--workers", str(workers)],
                stderr=log,
            )  # fmt: skip
        port = self.wait_for(r"centre listening on 127\.0\.0\.1:(\d+) with")
        self.url = f"http://127.0.0.1:{port[1]}"
        for index in range(workers):  # every worker is serving before the test starts
            self.wait_for(rf"worker {index} centre\.app: centre listening on")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_for(self, pattern: str) -> re.Match[str]:
        for _ in range(600):
            found = re.search(pattern, self.log())
            if found:
                return found
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never logged:\n{self.log()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(name="database")
def database_fixture(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture(name="workers")
def workers_fixture(tmp_path: Path, database: str) -> Iterator[Centre]:
    centre = Centre(tmp_path, database, WORKERS)
    try:
        yield centre
    finally:
        if centre.proc.poll() is None:
            centre.proc.kill()
            centre.proc.wait()


def test_four_workers_store_each_item_once_count_copies_and_answer_every_post(
    workers: Centre, database: str, tmp_path: Path
) -> None:
    item = report()
    posts = [
        (kit, window, link) for window in WINDOWS for kit in FLEET for link in ("vsat", "bgan")
    ]

    def post(job: tuple[int, range, str]) -> tuple[int, list[list[int]]]:
        kit, window, link = job
        if not hasattr(local, "session"):
            local.session = requests.Session()
            sessions.append(local.session)
        resp = local.session.post(
            f"{workers.url}/v1/items",
            data=batch([(seq, item) for seq in window]),
            headers={"Kit-Id": str(kit), "Content-Type": "application/cbor", "Kit-Link": link},
            timeout=60,
        )
        return kit, answer(resp)["acks"]

    local = threading.local()  # a connection per thread: spread over the workers
    sessions: list[requests.Session] = []
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, posts))
    for session in sessions:
        session.close()
    assert len(answers) == len(posts)  # every post answered 200 (answer() checks)

    rows = dump(CentreConfig(data_dir=tmp_path / "data", database=database))
    items = {(r[0], r[1]): r for r in rows["items"]}
    assert len(rows["items"]) == len(items) == len(FLEET) * SEQS  # each (kit, seq) once
    sent = Counter((kit, seq) for kit, window, _ in posts for seq in window)
    assert {key: row[16] for key, row in items.items()} == dict(sent)  # every copy counted
    assert sorted(rows["acked"]) == [(kit, 0, SEQS - 1) for kit in FLEET]
    final = requests.get(f"{workers.url}/v1/acks", headers={"Kit-Id": "101"}, timeout=30)
    assert cbor2.loads(final.content)["acks"] == [[0, SEQS - 1]]
    # The load was shared: more than one worker stored items.
    served = set(re.findall(r"worker (\d) centre\.ingest: kit \d+ over", workers.log()))
    assert len(served) > 1, served

    assert workers.stop() == 0
    log = workers.log()
    assert f"centre stopped: {WORKERS} workers" in log and "killed" not in log
    assert log.count("centre stopping") == WORKERS


def test_several_workers_on_sqlite_are_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data", str(tmp_path), "--workers", "4"]) == 2
    err = capsys.readouterr().err
    assert "workers: Value error, 4 workers need a PostgreSQL database" in err
    assert not (tmp_path / "centre.sqlite3").exists()


def test_database_outage_is_refused_with_503_and_loses_or_doubles_nothing(
    pg_server: PgServer, database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = CentreConfig(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "centre",
        kits=KITS,
        database=database,
        database_wait_s=1.0,
    )
    item = report()
    centre = RunningCentre(config)
    try:
        answer(centre.post_items(7, batch([(s, item) for s in range(10)])))
        pg_server.stop()
        try:
            caplog.set_level(logging.WARNING, logger="centre")
            refused = centre.post_items(7, batch([(s, item) for s in range(5, 20)]))
            assert refused.status_code == 503
            assert refused.text.startswith("数据库暂不可用，请稍后重试")
            assert "the database is unavailable, try again later" in refused.text
            assert refused.headers["Retry-After"] == "5"
            acks = centre.http.get(f"{centre.url}/v1/acks", headers={"Kit-Id": "7"}, timeout=30)
            assert acks.status_code == 503
            assert "database unavailable" in caplog.text
            assert "refused POST /v1/items" in caplog.text
        finally:
            pg_server.start()
        # The kit sends the refused batch again until it is taken.
        for _ in range(60):
            again = centre.post_items(7, batch([(s, item) for s in range(5, 20)]))
            if again.status_code != 503:
                break
            time.sleep(0.5)
        assert answer(again)["acks"] == [[0, 19]]
    finally:
        centre.stop()
    copies = {row[1]: row[16] for row in dump(config)["items"]}
    assert copies == {s: 1 if s < 5 or s >= 10 else 2 for s in range(20)}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_killed_worker_is_started_again_and_ctrl_c_stops_them_all(
    tmp_path: Path, database: str
) -> None:
    centre = Centre(tmp_path, database, 2)
    try:
        before = _children(centre.proc.pid)
        assert len(before) == 2
        os.kill(before[1], signal.SIGKILL)
        centre.wait_for(r"worker \d exited \(-9\): starting it again")
        for _ in range(2):  # whichever worker answers, the item is stored once
            resp = requests.post(
                f"{centre.url}/v1/items",
                data=batch([(0, report())]),
                headers={"Kit-Id": str(FLEET[0]), "Content-Type": "application/cbor"},
                timeout=60,
            )
            assert answer(resp)["acks"] == [[0, 0]]
        after = _children(centre.proc.pid)
        assert len(after) == 2 and before[0] in after and before[1] not in after
        centre.proc.send_signal(signal.SIGINT)
        assert centre.proc.wait(timeout=60) == 0
        for pid in after:
            assert not Path(f"/proc/{pid}").exists()
        assert "centre stopped: 2 workers" in centre.log()
    finally:
        if centre.proc.poll() is None:
            centre.proc.kill()
            centre.proc.wait()
