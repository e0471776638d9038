"""Media over tus 1.0.0 (core, creation, checksum, concatenation), and linking to items."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from centre_helpers import LAB, RunningCentre, answer, batch, photo
from centre_helpers import centre_fixture as centre_fixture  # pytest fixtures, found by name
from centre_helpers import config_fixture as config_fixture
from pg_helpers import pg_server_fixture as pg_server_fixture
from tusclient import client

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(centre: RunningCentre, length: int, **headers: str) -> requests.Response:
    return centre.http.post(
        f"{centre.url}/v1/media", headers={**TUS, "Upload-Length": str(length), **headers}
    )


def new_upload(centre: RunningCentre, content: bytes, seq: int, **meta: str) -> str:
    resp = create(
        centre, len(content), **{"Upload-Metadata": metadata(kit=str(LAB), seq=str(seq), **meta)}
    )
    assert resp.status_code == 201, resp.text
    return centre.url + resp.headers["Location"]


def patch(url: str, offset: int, data: bytes, **headers: str) -> requests.Response:
    return requests.patch(
        url, data=data, headers={**CHUNK, "Upload-Offset": str(offset), **headers}
    )


def offset_of(url: str) -> int:
    resp = requests.head(url, headers=TUS)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    return int(resp.headers["Upload-Offset"])


def media_file(centre: RunningCentre, seq: int) -> bytes:
    stored = centre.call(centre.store.item(LAB, seq))
    assert stored is not None and stored.media_path is not None
    return (centre.config.media_dir / stored.media_path).read_bytes()


def test_options_advertise_the_protocol(centre: RunningCentre) -> None:
    resp = centre.http.options(f"{centre.url}/v1/media")
    assert resp.status_code == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {
        "creation",
        "checksum",
        "concatenation",
    }
    assert resp.headers["Tus-Max-Size"] == str(8 * 1024**2)
    assert resp.headers["Tus-Checksum-Algorithm"].split(",") == ["sha1", "sha256"]


def test_stock_tus_client_uploads_and_resumes_after_an_interruption(
    centre: RunningCentre, tmp_path: Path
) -> None:
    content = os.urandom(1_500_000)  # the rest goes in one PATCH, beyond the items' body limit
    path = tmp_path / "ruin.jpg"
    path.write_bytes(content)
    answer(centre.post_items(LAB, batch([(1, photo(content))])))
    tus = client.TusClient(f"{centre.url}/v1/media")
    meta = {"kit": str(LAB), "seq": "1", "filename": "ruin.jpg"}
    first = tus.uploader(
        file_path=str(path), chunk_size=64 * 1024, metadata=meta, upload_checksum=True
    )
    first.upload(stop_at=128 * 1024)  # the link goes down here
    assert centre.acks(LAB) == []
    resumed = tus.uploader(file_path=str(path), url=first.url)
    assert resumed.offset == 128 * 1024  # from the centre's HEAD
    resumed.upload()
    assert hashlib.sha256(media_file(centre, 1)).digest() == hashlib.sha256(content).digest()
    assert centre.acks(LAB) == [[1, 1]]
    stored = centre.call(centre.store.item(LAB, 1))
    assert stored is not None and stored.media_path is not None
    assert stored.media_path.startswith(f"{LAB}/1-") and stored.media_path.endswith(".jpg")


@pytest.mark.parametrize("checked", [False, True])
def test_link_cut_mid_chunk_and_the_stock_client_resumes(
    centre: RunningCentre, tmp_path: Path, checked: bool
) -> None:
    content = os.urandom(100_000)
    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    url = new_upload(centre, content, 3)
    answer(centre.post_items(LAB, batch([(3, photo(content))])))
    head = (
        f"PATCH {urlsplit(url).path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(content)}\r\n"
    )
    if checked:
        digest = base64.b64encode(hashlib.sha1(content).digest()).decode()
        head += f"Upload-Checksum: sha1 {digest}\r\n"
    with socket.create_connection(("127.0.0.1", urlsplit(url).port or 80)) as sock:
        sock.sendall(head.encode() + b"\r\n" + content[:30_000])
        time.sleep(0.2)
    # Unchecked bytes that arrived are kept (tus: store as much as possible); a
    # checksummed chunk cannot be verified, so it is dropped.
    expected = 0 if checked else 30_000
    deadline = time.monotonic() + 5
    while offset_of(url) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert offset_of(url) == expected
    tus = client.TusClient(f"{centre.url}/v1/media")
    tus.uploader(file_path=str(path), url=url, chunk_size=32 * 1024).upload()
    assert media_file(centre, 3) == content
    assert centre.acks(LAB) == [[3, 3]]


def test_patch_at_the_wrong_offset_is_409(centre: RunningCentre) -> None:
    url = new_upload(centre, b"x" * 2000, 1)
    assert patch(url, 0, b"x" * 1000).status_code == 204
    resp = patch(url, 500, b"x" * 1000)
    assert resp.status_code == 409
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert "offset mismatch: upload is at 1000, request says 500" in resp.text
    assert offset_of(url) == 1000


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_bad_chunk_checksum_is_460_and_the_chunk_discarded(
    centre: RunningCentre, algorithm: str
) -> None:
    chunk = os.urandom(1000)
    url = new_upload(centre, chunk * 2, 1)
    assert patch(url, 0, chunk).status_code == 204

    def checksum(data: bytes) -> str:
        return f"{algorithm} " + base64.b64encode(hashlib.new(algorithm, data).digest()).decode()

    resp = patch(url, 1000, chunk, **{"Upload-Checksum": checksum(b"something else")})
    assert resp.status_code == 460
    assert f"chunk {algorithm} checksum mismatch" in resp.text
    assert offset_of(url) == 1000
    assert patch(url, 1000, chunk, **{"Upload-Checksum": checksum(chunk)}).status_code == 204
    assert offset_of(url) == 2000


def test_protocol_errors_have_their_status_and_reason(centre: RunningCentre) -> None:
    url = new_upload(centre, b"x" * 100, 1)
    cases = [
        (requests.patch(url, headers={"Upload-Offset": "0"}), 412, "Tus-Resumable: 1.0.0 is"),
        (requests.head(url, headers={"Tus-Resumable": "0.2.2"}), 412, ""),
        (requests.head(f"{centre.url}/v1/media/{'0' * 32}", headers=TUS), 404, ""),
        (patch(f"{centre.url}/v1/media/nope", 0, b"x"), 404, "no upload nope"),
        (create(centre, 8 * 1024**2 + 1), 413, "exceeds the limit of 8388608"),
        (patch(url, 0, b"x" * 101), 413, "runs past the upload's length of 100 bytes"),
        (patch(url, 0, b"x", **{"Content-Type": "text/plain"}), 415, "offset+octet-stream"),
        (patch(url, 0, b"x", **{"Upload-Checksum": "md5 AAAA"}), 400, "unsupported checksum"),
        (create(centre, 10, **{"Upload-Metadata": metadata(kit="99", seq="1")}), 403, "kit 99"),
        (create(centre, 10, **{"Upload-Metadata": metadata(kit=str(LAB))}), 400, "metadata seq"),
        (create(centre, 10, **{"Upload-Metadata": "kit !!!"}), 400, "not base64"),
        (centre.http.post(f"{centre.url}/v1/media", headers=TUS), 400, "Upload-Length"),
    ]
    for resp, status, reason in cases:
        assert resp.status_code == status, (resp.status_code, resp.text)
        assert reason in resp.text
        assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert requests.head(url, headers={"Tus-Resumable": "0.2.2"}).headers["Tus-Version"] == "1.0.0"
    assert offset_of(url) == 0


@pytest.mark.parametrize("record_first", [True, False])
def test_media_item_is_acknowledged_only_when_record_and_file_both_arrived(
    centre: RunningCentre, record_first: bool
) -> None:
    content = os.urandom(5000)
    item = photo(content)
    if record_first:
        assert answer(centre.post_items(LAB, batch([(4, item)])))["acks"] == []
    url = new_upload(centre, content, 4, sha256=hashlib.sha256(content).hexdigest())
    assert patch(url, 0, content).status_code == 204
    if not record_first:
        assert centre.acks(LAB) == []
        assert answer(centre.post_items(LAB, batch([(4, item)])))["acks"] == [[4, 4]]
    assert centre.acks(LAB) == [[4, 4]]
    assert media_file(centre, 4) == content


def test_empty_file_is_complete_on_creation(centre: RunningCentre) -> None:
    answer(centre.post_items(LAB, batch([(5, photo(b""))])))
    url = new_upload(centre, b"", 5)
    assert offset_of(url) == 0
    assert media_file(centre, 5) == b""
    assert centre.acks(LAB) == [[5, 5]]


def test_concurrent_patches_to_one_upload_are_serialised(centre: RunningCentre) -> None:
    bodies = [os.urandom(400_000), os.urandom(400_000)]
    url = new_upload(centre, bodies[0], 1)
    with ThreadPoolExecutor(2) as pool:  # the same chunk offered over two links
        statuses = list(pool.map(lambda b: patch(url, 0, b).status_code, bodies))
    assert sorted(statuses) == [204, 409]
    winner = bodies[statuses.index(204)]
    answer(centre.post_items(LAB, batch([(1, photo(winner))])))
    assert media_file(centre, 1) == winner
    assert centre.acks(LAB) == [[1, 1]]


def test_whole_file_sha256_mismatch_restarts_the_upload(centre: RunningCentre) -> None:
    content = os.urandom(3000)
    url = new_upload(centre, content, 1, sha256=hashlib.sha256(b"other").hexdigest())
    assert patch(url, 0, content[:1000]).status_code == 204
    resp = patch(url, 1000, content[1000:])
    assert resp.status_code == 460
    assert "the upload restarts at offset 0" in resp.text
    assert offset_of(url) == 0


def test_file_contradicting_its_record_is_not_linked(centre: RunningCentre) -> None:
    right, wrong = os.urandom(2000), os.urandom(2000)
    early = new_upload(centre, wrong, 1)  # the file comes first, without a sha256
    assert patch(early, 0, wrong).status_code == 204
    assert answer(centre.post_items(LAB, batch([(1, photo(right))])))["acks"] == []
    # Dropped with its upload, so the kit's next HEAD says to start afresh.
    assert requests.head(early, headers=TUS).status_code == 404
    assert list((centre.config.media_dir / str(LAB)).iterdir()) == []
    late = new_upload(centre, wrong, 1)  # the record is here now: checked on arrival
    assert patch(late, 0, wrong).status_code == 460
    fresh = new_upload(centre, right, 1)
    assert patch(fresh, 0, right).status_code == 204
    assert centre.acks(LAB) == [[1, 1]]


def test_concatenation_bonds_partial_uploads_sent_over_two_links(centre: RunningCentre) -> None:
    content = os.urandom(200_000)
    halves = [content[:120_000], content[120_000:]]
    urls = []
    for half in halves:
        resp = create(centre, len(half), **{"Upload-Concat": "partial"})
        assert resp.status_code == 201
        urls.append(centre.url + resp.headers["Location"])
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(patch, urls, [0, 0], halves))
    assert [r.status_code for r in responses] == [204, 204]
    answer(centre.post_items(LAB, batch([(6, photo(content))])))
    resp = centre.http.post(
        f"{centre.url}/v1/media",
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(urlsplit(u).path for u in urls),
            "Upload-Metadata": metadata(kit=str(LAB), seq="6"),
        },
    )
    assert resp.status_code == 201, resp.text
    final = centre.url + resp.headers["Location"]
    head = requests.head(final, headers=TUS)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "200000"
    assert head.headers["Upload-Concat"].startswith("final;")
    assert media_file(centre, 6) == content
    assert centre.acks(LAB) == [[6, 6]]
    assert [requests.head(u, headers=TUS).status_code for u in urls] == [404, 404]


def test_final_upload_needs_finished_partial_uploads(centre: RunningCentre) -> None:
    resp = create(centre, 100, **{"Upload-Concat": "partial"})
    part = resp.headers["Location"]
    resp = centre.http.post(
        f"{centre.url}/v1/media",
        headers={
            **TUS,
            "Upload-Concat": f"final;{part}",
            "Upload-Metadata": metadata(kit=str(LAB), seq="1"),
        },
    )
    assert resp.status_code == 400
    assert "not finished partial uploads" in resp.text


def test_upload_resumes_after_the_centre_restarts(centre: RunningCentre, tmp_path: Path) -> None:
    content = os.urandom(90_000)
    url = new_upload(centre, content, 2)
    assert patch(url, 0, content[:40_000]).status_code == 204
    path = urlsplit(url).path
    centre.stop()
    again = RunningCentre(centre.config)
    try:
        url = again.url + path
        assert offset_of(url) == 40_000
        source = tmp_path / "v.bin"
        source.write_bytes(content)
        client.TusClient(f"{again.url}/v1/media").uploader(file_path=str(source), url=url).upload()
        answer(again.post_items(LAB, batch([(2, photo(content))])))
        assert again.acks(LAB) == [[2, 2]]
        assert media_file(again, 2) == content
    finally:
        again.stop()


def test_restart_finishes_a_move_that_a_crash_interrupted(centre: RunningCentre) -> None:
    content = os.urandom(1000)
    answer(centre.post_items(LAB, batch([(1, photo(content))])))
    url = new_upload(centre, content, 1)
    assert patch(url, 0, content).status_code == 204
    stored = centre.call(centre.store.item(LAB, 1))
    assert stored is not None and stored.media_path is not None
    centre.stop()
    # As if the process died after the commit, before the rename; plus a stray file.
    partial = centre.config.media_dir / ".partial"
    os.replace(centre.config.media_dir / stored.media_path, partial / urlsplit(url).path[-32:])
    (partial / ("f" * 32)).write_bytes(b"left over")
    again = RunningCentre(centre.config)
    try:
        assert media_file(again, 1) == content
        assert list(partial.iterdir()) == []
    finally:
        again.stop()
