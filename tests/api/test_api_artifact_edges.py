"""Task artifact uploads against a real `creep server` (SQLite and PostgreSQL): image
headers past the format's limits, metadata no database stores, and a damaged stored file."""

from __future__ import annotations

import asyncio
import json
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from creep.api.app import create_app
from creep.api.settings import Settings
from creep.domain.artifacts import Artifact
from creep.engine.artifacts import ArtifactService
from tests.api.conftest import Server, _pg_schema, require_postgres, start_server, stop_server

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a database of its own: the session's shared one would hand these
    artifacts (and a damaged file) to other modules' reconcile checks."""
    folder = tmp_path_factory.mktemp("artifacts")
    drop = None
    if request.param == "sqlite":
        database = f"sqlite:///{folder}/creep.db"
    else:
        require_postgres()
        database, drop = _pg_schema()
    server = start_server(database, folder / "server.log", CREEP_METRICS_CACHE_SECONDS="0")
    yield server
    stop_server(server)
    if drop is not None:
        drop()


def _task(c: httpx.Client, task_type: str = "RENDER") -> str:
    r = c.post("/v1/tasks", json={"task_type": task_type})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_png_with_out_of_range_dimension_is_not_a_server_error(srv: Server) -> None:
    """A file that starts like a PNG whose IHDR width is >= 2**31 (invalid per the PNG spec,
    whose dimensions are at most 2**31 - 1) makes the upload fail with a 500 on PostgreSQL
    (width is an `integer` column) while SQLite stores it: any user bytes must be storable."""
    _, key = srv.tenant()
    content = _png_header(2**31, 10) + b"\x00" * 16
    with srv.client(key) as c:
        task_id = _task(c)
        r = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("x.png", content)},
                   data={"kind": "input"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["size_bytes"] == len(content)
        assert c.get(body["url"]).content == content


def test_metadata_with_nul_is_a_validation_error_on_every_backend(srv: Server) -> None:
    """Artifact metadata is not checked for text no backend can store (README: "text no
    backend can store (a NUL character ...) is refused the same way on both"): on PostgreSQL
    a NUL in metadata is a 500 (jsonb refuses \\u0000) where it should be a 422 naming
    `metadata`, as the task routes answer."""
    _, key = srv.tenant()
    with srv.client(key) as c:
        task_id = _task(c)
        r = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("n.txt", b"nul")},
                   data={"kind": "log", "metadata": json.dumps({"note": "a\x00b"})})
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["metadata.note"]


@pytest.mark.parametrize(("raw", "rule"), [
    ("NaN", "finite"), ("-Infinity", "finite"), ("1e400", "finite"),
    ("18446744073709551616", "64 bits"), ("-9223372036854775809", "64 bits")])
def test_metadata_numbers_json_cannot_carry_are_a_422_naming_them(
    srv: Server, raw: str, rule: str
) -> None:
    """Artifact metadata holding an integer beyond 64 bits was stored as a float (orjson
    reads it so), and NaN, Infinity or 1e400 answered 'metadata: must be a JSON object';
    each is now a 422 naming the value, as in any other body, and nothing is stored."""
    _, key = srv.tenant()
    with srv.client(key) as c:
        task_id = _task(c)
        r = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("n.txt", b"num")},
                   data={"kind": "log", "metadata": '{"a": 1, "x": [' + raw + ']}'})
        assert r.status_code == 422, r.text
        assert [(e["field"], rule in e["rule"]) for e in r.json()["errors"]] == [
            ("metadata.x[0]", True)], r.text
        assert c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"] == []
        fits = '{"x": [18446744073709551615, -9223372036854775808, 1.5e300]}'
        r = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("n.txt", b"num")},
                   data={"kind": "log", "metadata": fits})
        assert r.status_code == 201, r.text
        assert r.json()["metadata"] == json.loads(fits)


def test_sdk_metadata_with_nan_is_refused_not_sent_as_null(srv: Server) -> None:
    """Client.upload_artifact wrote metadata with orjson, which writes NaN and infinities
    as null: {"x": nan} was stored as {"x": null}. It now raises ValueError, as the SDK's
    JSON bodies do (httpx refuses NaN), and nothing is uploaded."""
    from creep.client import AsyncClient, Client

    _, key = srv.tenant()
    with Client(srv.url, key) as c:
        task_id = c.create_task(task_type="RENDER").task_id
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="JSON"):
                c.upload_artifact(task_id, b"x", kind="log", file_name="x.txt",
                                  metadata={"x": value})

        async def upload() -> None:
            async with AsyncClient(srv.url, key) as ac:
                await ac.upload_artifact(task_id, b"x", kind="log", file_name="x.txt",
                                         metadata={"x": float("nan")})

        with pytest.raises(ValueError, match="JSON"):
            asyncio.run(upload())
        assert c.list_artifacts(task_id) == []
        art = c.upload_artifact(task_id, b"x", kind="log", file_name="x.txt",
                                metadata={"x": None, "é": [1.5, "ü"]})
    with srv.client(key) as http:
        stored = http.get(f"/v1/artifacts/{art.artifact_id}").json()["metadata"]
        assert stored == {"x": None, "é": [1.5, "ü"]}


def test_reupload_over_a_damaged_blob_serves_the_new_uploads_bytes(srv: Server) -> None:
    """Deduplication trusts any file already at `sha256/<xx>/<sha256>`: when that file was
    damaged (here truncated), a new upload of the right bytes is acknowledged with that
    checksum but its bytes are thrown away, and its download serves the damaged file under
    an ETag naming a sha256 it does not have. The new upload's bytes should be kept."""
    _, key = srv.tenant()
    content = b"precious output " * 64
    blobs = srv.log_path.parent / "artifacts"
    with srv.client(key) as c:
        first = c.post(f"/v1/tasks/{_task(c)}/artifacts", files={"file": ("o.bin", content)},
                       data={"kind": "output"}).json()
        (blobs / first["object_key"]).write_bytes(content[:10])  # damaged on disk
        again = c.post(f"/v1/tasks/{_task(c)}/artifacts", files={"file": ("o.bin", content)},
                       data={"kind": "output"})
        assert again.status_code == 201, again.text
        got = c.get(again.json()["url"])
        assert got.status_code == 200
        assert got.content == content, f"served {len(got.content)} of {len(content)} bytes"



def test_download_conditional_and_range_errors(srv: Server) -> None:
    """The download's ETag (the sha256) was ignored on revalidation: If-None-Match with it
    sent the whole file again instead of a 304; a Range past the end (416) or a malformed
    one (400) answered text/plain instead of the RFC 7807 problem every other error is."""
    _, key = srv.tenant()
    content = bytes(range(100))
    with srv.client(key) as c:
        a = c.post(f"/v1/tasks/{_task(c)}/artifacts", files={"file": ("r.bin", content)},
                   data={"kind": "output"}).json()
        etag = f'"{a["checksum"]}"'
        head = c.head(a["url"])  # through uvicorn: its length, not the empty body's
        assert (head.status_code, head.headers["content-length"]) == (200, "100")
        assert head.headers["etag"] == etag
        part = c.get(a["url"], headers={"Range": "bytes=10-19"})
        assert (part.status_code, part.content) == (206, content[10:20])
        assert part.headers["content-range"] == "bytes 10-19/100"
        for sent in (etag, f'"other", {etag}', "*", f"W/{etag}"):
            same = c.get(a["url"], headers={"If-None-Match": sent})
            assert (same.status_code, same.content) == (304, b""), sent
            assert same.headers["etag"] == etag
        assert c.get(a["url"], headers={"If-None-Match": '"other"'}).content == content
        past = c.get(a["url"], headers={"Range": "bytes=500-600"})
        assert past.status_code == 416
        assert past.headers["content-type"] == "application/problem+json"
        assert past.json()["status"] == 416 and past.headers["content-range"] == "bytes */100"
        bad = c.get(a["url"], headers={"Range": "lines=1-2"})
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["status"] == 400


# -- in process (a seam to patch), both backends -------------------------------------------------

KEY = "artifact-edges-admin-key-" + "x" * 24


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """An in-process app whose errors come back as responses (a 500 too), with a tenant."""
    settings = Settings(database_url=db_url, admin_key=KEY, maintenance_interval_seconds=0,
                        artifact_dir=str(tmp_path / "artifacts"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        admin = {"Authorization": f"Bearer {KEY}"}
        r = client.post("/v1/tenants", json={"tenant_id": "acme"}, headers=admin)
        assert r.status_code == 201, r.text
        r = client.post("/v1/keys", json={"tenant_id": "acme", "name": "k"}, headers=admin)
        assert r.status_code == 201, r.text
        client.headers["Authorization"] = f"Bearer {r.json()['key']}"
        yield client


def _upload(c: TestClient, content: bytes, name: str = "o.bin") -> dict[str, Any]:
    r = c.post("/v1/tasks", json={"task_type": "RENDER"})
    assert r.status_code == 201, r.text
    r = c.post(f"/v1/tasks/{r.json()['task_id']}/artifacts", files={"file": (name, content)},
               data={"kind": "output"})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_download_of_a_file_removed_after_the_check_is_a_404_not_a_500(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route checked that the file exists, and Starlette opened the path later: a file
    removed in between (reconcile --repair holding an orphan, an operator) was a 500
    (RuntimeError "File at path ... does not exist") instead of the 404 problem of missing
    content. Once the download has the file open, removing it does not matter."""
    a = _upload(api, b"soon gone " * 100)
    found = ArtifactService.content_path

    def found_then_removed(self: ArtifactService, artifact: Artifact) -> Path:
        path = found(self, artifact)
        path.unlink()
        return path

    monkeypatch.setattr(ArtifactService, "content_path", found_then_removed)
    r = api.get(a["url"])
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == f"artifact content {a['artifact_id']} not found"

    monkeypatch.undo()
    b = _upload(api, b"kept open " * 100)
    opened = ArtifactService.open_content

    def opened_then_removed(self: ArtifactService, artifact: Artifact) -> BinaryIO:
        f = opened(self, artifact)
        self.content_path(artifact).unlink()
        return f

    monkeypatch.setattr(ArtifactService, "open_content", opened_then_removed)
    r = api.get(b["url"])
    assert (r.status_code, r.content) == (200, b"kept open " * 100)


def test_download_ranges(api: TestClient) -> None:
    """The download streams from the open file: each kind of Range still answers as before."""
    content = bytes(range(100))
    a = _upload(api, content)
    etag = f'"{a["checksum"]}"'

    def get(**headers: str) -> httpx.Response:
        return api.get(a["url"], headers=headers)

    for asked, part in (("bytes=10-19", content[10:20]), ("bytes=90-", content[90:]),
                        ("bytes=-5", content[95:]), ("bytes=-500", content),
                        ("bytes=98-1000", content[98:]), ("BYTES = 1 - 2", content[1:3])):
        r = get(Range=asked)
        assert (r.status_code, r.content) == (206, part), asked
        assert r.headers["content-length"] == str(len(part))
        assert r.headers["content-range"] == f"bytes {content.index(part[0])}-" \
            f"{content.index(part[-1])}/100"
    for whole in (get(Range="bytes=0-1, 5-6"), get(Range="bytes=0-1", **{"If-Range": '"x"'}),
                  get()):
        assert (whole.status_code, whole.content) == (200, content)
        assert whole.headers["content-length"] == "100" and whole.headers["etag"] == etag
    assert get(Range="bytes=0-1", **{"If-Range": etag}).status_code == 206
    for bad, status in (("bytes=100-", 416), ("bytes=-0", 416), ("bytes=5-2", 400),
                        ("bytes=", 400), ("bytes=-", 400), ("bytes=x-1", 400),
                        ("lines=1-2", 400)):
        r = get(Range=bad)
        assert r.status_code == status, bad
        assert r.headers["content-type"] == "application/problem+json"


def test_head_of_a_download_answers_its_headers(api: TestClient) -> None:
    """HEAD /v1/artifacts/{id}/content answered 405: a client could not read the size or
    the ETag without downloading the content."""
    content = b"headers only " * 50
    a = _upload(api, content, "r\u00e9sum\u00e9.txt")
    got = api.get(a["url"])
    head = api.head(a["url"])
    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-length", "etag", "content-type", "content-disposition",
                 "accept-ranges", "x-content-type-options"):
        assert head.headers[name] == got.headers[name], name
    assert head.headers["content-length"] == str(len(content))
    part = api.head(a["url"], headers={"Range": "bytes=0-9"})
    assert (part.status_code, part.content) == (206, b"")
    assert part.headers["content-range"] == f"bytes 0-9/{len(content)}"
    assert part.headers["content-length"] == "10"
    same = api.head(a["url"], headers={"If-None-Match": got.headers["etag"]})
    assert same.status_code == 304
    assert api.head("/v1/artifacts/nope/content").status_code == 404


def test_a_file_part_without_a_file_name_is_a_clear_validation_error(api: TestClient) -> None:
    """A `file` part with an empty filename (Starlette reads it as a plain text field) was a
    422 saying "Value error, Expected UploadFile, received: <class 'str'>"."""
    r = api.post("/v1/tasks", json={"task_type": "RENDER"})
    url = f"/v1/tasks/{r.json()['task_id']}/artifacts"
    for sent in ({"files": {"file": ("", b"bytes")}, "data": {"kind": "log"}},
                 {"data": {"kind": "log", "file": "just text"}}):
        r = api.post(url, **sent)  # type: ignore[arg-type]
        assert r.status_code == 422, r.text
        errors = r.json()["errors"]
        assert [e["field"] for e in errors] == ["file"], errors
        assert errors[0]["rule"] == "must be a file upload with a file name", errors
