"""Media in an S3-compatible bucket: moto's S3 server runs as a real process on loopback;
the centre puts finished uploads and inline files there, serves them to the dashboard
through itself, refuses to acknowledge a file S3 did not take, and says precisely why it
cannot start with a wrong secret or a missing bucket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from aiohttp.test_utils import make_mocked_request
from centre_helpers import KITS, LAB, RunningCentre, answer, batch, photo
from hygiene import nothing_left_open, run  # noqa: F401
from hypothesis import given
from hypothesis import strategies as st
from tusclient import client

from centre.config import CentreConfig, MediaSection, build_config
from centre.errors import BadCentreConfig
from centre.mediastore import FolderStore, MediaMissing, byte_range, open_media
from config.web.auth import Users
from edge.item import Item, Kind, MediaRef, new_item

BUCKET = "centre-media"
PREFIX = "kits/"
ACCESS = "AKIACENTRE"
PASSWORD = "correct horse battery"
TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server in its own process on a loopback port; ``stop`` and ``start`` again
    keep the port (moto keeps nothing across a restart: the bucket is made again)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            finally:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def client(self, service: str, key: str = ACCESS, secret: str = "x") -> Any:
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def make_bucket(self) -> None:
        s3 = self.client("s3")
        try:
            s3.create_bucket(Bucket=BUCKET)
        finally:
            s3.close()

    def enforce_keys(self) -> tuple[str, str]:
        """An IAM user allowed S3, then signatures checked from now on: (key id, secret)."""
        iam = self.client("iam")
        try:
            iam.create_user(UserName="centre")
            iam.put_user_policy(
                UserName="centre",
                PolicyName="media",
                PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",'
                ' "Action": "s3:*", "Resource": "*"}]}',
            )
            key = iam.create_access_key(UserName="centre")["AccessKey"]
        finally:
            iam.close()
        reset = requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10)
        assert reset.status_code == 200, reset.text
        return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(name="s3", scope="module")
def s3_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, str, str]]:
    """One S3 server for the module that checks signatures: (server, key id, secret)."""
    server = S3Server(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        server.make_bucket()
        key, secret = server.enforce_keys()
        yield server, key, secret
    finally:
        server.stop()


def s3_config(root: Path, url: str, key: str, secret: str, bucket: str = BUCKET) -> CentreConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "s3.secret").write_text(secret + "\n", encoding="utf-8")
    (root / "s3.secret").chmod(0o600)
    media = MediaSection(
        store="s3",
        endpoint=url,
        bucket=bucket,
        access_key=key,
        secret_key_file=Path("s3.secret"),
        prefix=PREFIX,
        timeout_s=5.0,
    )
    return CentreConfig(
        listen="127.0.0.1:0",
        data_dir=root,
        max_upload_bytes=8 * 1024**2,
        kits=KITS,
        media=media,
    )


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def new_upload(centre: RunningCentre, content: bytes, seq: int) -> str:
    resp = centre.http.post(
        f"{centre.url}/v1/media",
        headers={
            **TUS,
            "Upload-Length": str(len(content)),
            "Upload-Metadata": metadata(kit=str(LAB), seq=str(seq), filename="a.jpg"),
        },
    )
    assert resp.status_code == 201, resp.text
    return centre.url + resp.headers["Location"]


def patch(url: str, offset: int, data: bytes) -> requests.Response:
    with requests.patch(url, data=data, headers={**CHUNK, "Upload-Offset": str(offset)}) as r:
        return r


def offset_of(url: str) -> int:
    with requests.head(url, headers=TUS) as resp:
        assert resp.status_code == 200
        return int(resp.headers["Upload-Offset"])


def thumbnail(data: bytes) -> Item:
    ref = MediaRef("thumbs/a.jpg", len(data), hashlib.sha256(data).hexdigest(), "image/jpeg")
    return new_item(Kind.THUMBNAIL, source="web", media=ref, created_ms=1_750_000_000_000)


def objects(s3: Any) -> dict[str, bytes]:
    """Every object of the bucket: {key: content}."""
    found = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in found}


def media_path(centre: RunningCentre, seq: int) -> str | None:
    stored = centre.call(centre.store.item(LAB, seq))
    assert stored is not None
    return stored.media_path


def log_in(centre: RunningCentre, http: requests.Session) -> None:
    resp = http.post(
        f"{centre.url}/dashboard/login",
        data={"user": "zhang", "password": PASSWORD},
        headers={"Origin": centre.url},
        allow_redirects=False,
        timeout=30,
    )
    assert resp.status_code == 303, resp.text


def test_uploads_and_inline_files_become_objects_the_dashboard_serves_byte_exact(
    s3: tuple[S3Server, str, str], tmp_path: Path
) -> None:
    server, key, secret = s3
    config = s3_config(tmp_path / "centre", server.url, key, secret)
    Users(config.data_dir / "dashboard" / "operators.json").set("zhang", PASSWORD)
    content, thumb = os.urandom(300_000), os.urandom(5_000)
    source = tmp_path / "ruin.jpg"
    source.write_bytes(content)
    centre = RunningCentre(config)
    bucket = server.client("s3", key, secret)
    try:
        answer(centre.post_items(LAB, batch([(1, photo(content))])))
        tus = client.TusClient(f"{centre.url}/v1/media")
        meta = {"kit": str(LAB), "seq": "1", "filename": "ruin.jpg"}
        tus.uploader(file_path=str(source), chunk_size=128 * 1024, metadata=meta).upload()
        stored = centre.call(
            centre.store.ingest(LAB, [(2, thumbnail(thumb))], link="beidou", blobs={2: thumb})
        )
        assert stored.stored == (2,)
        assert centre.acks(LAB) == [[1, 2]]

        photo_key, thumb_key = media_path(centre, 1), media_path(centre, 2)
        assert photo_key is not None and thumb_key is not None
        held = objects(bucket)
        assert set(held) == {PREFIX + photo_key, PREFIX + thumb_key}
        assert hashlib.sha256(held[PREFIX + photo_key]).digest() == hashlib.sha256(content).digest()
        assert held[PREFIX + thumb_key] == thumb
        head = bucket.head_object(Bucket=BUCKET, Key=PREFIX + photo_key)
        assert head["Metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
        left = [p for p in config.media_dir.rglob("*") if p.is_file()]
        assert left == []  # no local final copy, no partial file

        with requests.Session() as http:
            assert http.get(f"{centre.url}/dashboard/media/{LAB}/1").status_code == 401
            log_in(centre, http)
            whole = http.get(f"{centre.url}/dashboard/media/{LAB}/1", timeout=30)
            assert whole.status_code == 200
            assert whole.headers["Content-Type"] == "image/jpeg"
            assert whole.headers["Accept-Ranges"] == "bytes"
            assert whole.content == content
            part = http.get(
                f"{centre.url}/dashboard/media/{LAB}/1", headers={"Range": "bytes=1000-1999"}
            )
            assert part.status_code == 206
            assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(content)}"
            assert part.content == content[1000:2000]
            tail = http.get(f"{centre.url}/dashboard/media/{LAB}/1", headers={"Range": "bytes=-10"})
            assert tail.status_code == 206 and tail.content == content[-10:]
            beyond = http.get(
                f"{centre.url}/dashboard/media/{LAB}/1", headers={"Range": f"bytes={len(content)}-"}
            )
            assert beyond.status_code == 416
            assert beyond.headers["Content-Range"] == f"bytes */{len(content)}"
            small = http.get(f"{centre.url}/dashboard/media/{LAB}/2", timeout=30)
            assert small.status_code == 200 and small.content == thumb
            assert http.get(f"{centre.url}/dashboard/media/{LAB}/3").status_code == 404
    finally:
        bucket.close()
        centre.stop()


def test_s3_down_at_the_finish_acknowledges_nothing_and_the_retry_stores_it_once(
    tmp_path: Path,
) -> None:
    server = S3Server(tmp_path)
    server.start()
    centre: RunningCentre | None = None
    try:
        server.make_bucket()
        centre = RunningCentre(s3_config(tmp_path / "centre", server.url, ACCESS, "any"))
        content, thumb = os.urandom(200_000), os.urandom(3_000)
        small = thumbnail(thumb)
        answer(centre.post_items(LAB, batch([(1, photo(content))])))
        url = new_upload(centre, content, 1)
        assert patch(url, 0, content[:120_000]).status_code == 204

        server.stop()
        finish = patch(url, 120_000, content[120_000:])
        assert finish.status_code == 503, finish.text
        assert "媒体存储暂不可用" in finish.text and "media store is unavailable" in finish.text
        assert offset_of(url) == 120_000  # the kit sends the last chunk again
        inline = centre.call(
            centre.store.ingest(LAB, [(2, small)], link="beidou", blobs={2: thumb})
        )
        assert inline.waiting == (2,)  # the record is kept; the file is owed
        assert centre.acks(LAB) == []
        assert media_path(centre, 1) is None and media_path(centre, 2) is None

        server.start()
        server.make_bucket()  # moto forgot everything
        assert patch(url, 120_000, content[120_000:]).status_code == 204
        again = centre.call(centre.store.ingest(LAB, [(2, small)], link="beidou", blobs={2: thumb}))
        assert again.duplicates == (2,)
        assert centre.acks(LAB) == [[1, 2]]
        bucket = server.client("s3")
        try:
            held = objects(bucket)
        finally:
            bucket.close()
        photo_key, thumb_key = media_path(centre, 1), media_path(centre, 2)
        assert set(held) == {PREFIX + str(photo_key), PREFIX + str(thumb_key)}
        assert held[PREFIX + str(photo_key)] == content and held[PREFIX + str(thumb_key)] == thumb
        assert list((centre.config.media_dir / ".partial").iterdir()) == []
        files = centre.call(_rows(centre, "SELECT kit_id, seq FROM media_files"))
        assert sorted(files) == [(LAB, 1), (LAB, 2)]
    finally:
        if centre is not None:
            centre.stop()
        server.stop()


async def _rows(centre: RunningCentre, sql: str) -> list[tuple[Any, ...]]:
    async with centre.store.reading() as db, db.execute(sql) as cur:
        return [tuple(row) for row in await cur.fetchall()]


def test_restart_puts_a_file_recorded_but_not_yet_in_the_bucket(
    s3: tuple[S3Server, str, str], tmp_path: Path
) -> None:
    server, key, secret = s3
    config = s3_config(tmp_path / "centre", server.url, key, secret)
    centre = RunningCentre(config)
    content = os.urandom(4000)
    try:
        answer(centre.post_items(LAB, batch([(1, photo(content))])))
        url = new_upload(centre, content, 1)
        assert patch(url, 0, content).status_code == 204
        stored_key = PREFIX + str(media_path(centre, 1))
    finally:
        centre.stop()
    # As if the centre had recorded the file, then died before it reached the bucket.
    bucket = server.client("s3", key, secret)
    try:
        bucket.delete_object(Bucket=BUCKET, Key=stored_key)
        partial = config.media_dir / ".partial" / urlsplit(url).path[-32:]
        partial.write_bytes(content)
        again = RunningCentre(config)
        try:
            body = bucket.get_object(Bucket=BUCKET, Key=stored_key)["Body"].read()
            assert body == content
            assert list(partial.parent.iterdir()) == []
        finally:
            again.stop()
    finally:
        bucket.delete_object(Bucket=BUCKET, Key=stored_key)
        bucket.close()


def test_a_wrong_secret_stops_the_centre_with_a_precise_error(
    s3: tuple[S3Server, str, str], tmp_path: Path
) -> None:
    server, key, _ = s3
    root = tmp_path / "centre"
    s3_config(root, server.url, key, "not-the-secret")
    config = root / "centre.toml"
    config.write_text(
        f'data_dir = "{root}"\nlisten = "127.0.0.1:0"\n[media]\nstore = "s3"\n'
        f'endpoint = "{server.url}"\nbucket = "{BUCKET}"\naccess_key = "{key}"\n'
        'secret_key_file = "s3.secret"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from centre.app import main; sys.exit(main())",
         "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"[media] S3 拒绝了签名：secret_key_file {root / 's3.secret'} 中的密钥与 access_key "
        f"'{key}' 不符 / [media] S3 refused the signature: the secret in secret_key_file "
        f"{root / 's3.secret'} does not belong to access_key '{key}' (SignatureDoesNotMatch)"
    )


def test_a_missing_bucket_or_an_unknown_key_is_a_precise_error(
    s3: tuple[S3Server, str, str], tmp_path: Path
) -> None:
    server, key, secret = s3
    missing = s3_config(tmp_path / "a", server.url, key, secret, bucket="no-such-bucket")
    with pytest.raises(BadCentreConfig) as err:
        asyncio.run(open_media(missing))
    assert str(err.value) == (
        f"[media] 存储桶 'no-such-bucket' 在 {server.url} 上不存在：请先创建它，或改正 [media] "
        f"bucket / [media] bucket 'no-such-bucket' does not exist on {server.url}: create it "
        "first, or correct [media] bucket"
    )
    unknown = s3_config(tmp_path / "b", server.url, "AKIANOBODY", secret)
    with pytest.raises(BadCentreConfig) as err:
        asyncio.run(open_media(unknown))
    assert str(err.value) == (
        "[media] S3 不认识 access_key 'AKIANOBODY' / [media] S3 does not know access_key "
        "'AKIANOBODY' (InvalidAccessKeyId)"
    )
    (tmp_path / "b" / "s3.secret").unlink()
    with pytest.raises(BadCentreConfig) as err:
        asyncio.run(open_media(unknown))
    assert str(err.value) == (
        f"[media] 无法读取 S3 密钥文件 {tmp_path / 'b' / 's3.secret'}：No such file or directory"
        f" / [media] cannot read the S3 secret key file {tmp_path / 'b' / 's3.secret'}: No such"
        " file or directory"
    )


def test_an_unreachable_s3_lets_the_centre_start_and_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = s3_config(tmp_path, f"http://127.0.0.1:{free_port()}", ACCESS, "any")

    async def opened() -> None:
        store = await open_media(config)
        store.close()

    with caplog.at_level(logging.WARNING, logger="centre.mediastore"):
        asyncio.run(opened())
    assert "media is refused with 503 until it answers" in caplog.text


def test_the_s3_settings_are_checked_all_at_once(tmp_path: Path) -> None:
    raw = {
        "data_dir": str(tmp_path),
        "media": {"store": "s3", "endpoint": "s3.local", "bucket": "Media_1", "prefix": "/x"},
    }
    with pytest.raises(BadCentreConfig) as err:
        build_config(raw, "centre.toml")
    assert err.value.en == (
        'bad config in centre.toml: media: Value error, store = "s3": endpoint 应为 '
        "http(s)://主机[:端口] / endpoint must be http(s)://host[:port]；bucket 'Media_1' 不是"
        "有效的存储桶名（3-63 位小写字母、数字、. 和 -） / bucket 'Media_1' is not a valid bucket "
        "name (3-63 lower-case letters, digits, . and -)；需要 access_key / access_key is "
        "required；需要 secret_key_file（存放密钥的文件） / secret_key_file (the file holding the "
        "secret) is required；prefix '/x' 应为空或以 / 结尾的路径 / prefix '/x' must be empty or "
        "a path ending in /"
    )
    assert build_config({"data_dir": str(tmp_path)}, "x").media.store == "folder"


@given(
    data=st.binary(max_size=64),
    first=st.one_of(st.none(), st.integers(0, 80)),
    last=st.one_of(st.none(), st.integers(0, 80)),
)
def test_a_range_serves_what_slicing_the_file_gives(
    data: bytes, first: int | None, last: int | None
) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    request = make_mocked_request("GET", "/", headers={"Range": header})
    try:
        rng = request.http_range
    except ValueError:  # refused by aiohttp's parser: a 416 for file and S3 alike
        assert (first is None and last is None) or (
            first is not None and last is not None and first > last
        )
        return
    got = byte_range(rng, len(data))
    suffix = first is None
    if not data or (not suffix and rng.start >= len(data)):
        assert got is None
        return
    assert got is not None
    start, count = got
    assert data[start : start + count] == data[rng]
    assert count >= 1


def test_the_folder_store_keeps_files_where_the_media_folder_always_had_them(
    tmp_path: Path,
) -> None:
    files = FolderStore(tmp_path / "media")
    src = tmp_path / "upload"
    src.write_bytes(b"0123456789")

    async def use() -> list[object]:
        await files.put_file(src, "11/1-abc.jpg")
        await files.put_bytes("11/2-inline.jpg", b"thumb")
        part = b"".join([b async for b in files.stream("11/1-abc.jpg", 2, 5)])
        sizes = [await files.size("11/1-abc.jpg"), await files.size("11/nothing")]
        await files.delete("11/2-inline.jpg")
        with pytest.raises(MediaMissing):
            files.path("../outside")
        return [part, sizes]

    assert run(use()) == [b"23456", [10, None]]
    assert src.read_bytes() == b"0123456789"  # kept until its row is committed
    assert (tmp_path / "media" / "11" / "1-abc.jpg").read_bytes() == b"0123456789"
    assert sorted(p.name for p in (tmp_path / "media" / "11").iterdir()) == ["1-abc.jpg"]
