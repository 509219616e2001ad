"""Artifacts over HTTP against a real server: multipart upload, metadata, image sizes,
download with the right content type, per-task lists, the size limit (413), tenant isolation,
and `creep artifacts reconcile` as a subprocess (exit codes)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import Server, start_server, stop_server
from tests.unit.test_image_header import png

LIMIT = 200_000


@pytest.fixture(scope="module")
def srv(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("artifacts") / "server.log"
    server = start_server(database, log, CREEP_ARTIFACT_MAX_BYTES=str(LIMIT))
    yield server
    stop_server(server)


def _blobs(srv: Server) -> Path:
    return srv.log_path.parent / "artifacts"


def _task(c: httpx.Client) -> str:
    r = c.post("/v1/tasks", json={"task_type": "RENDER"})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def test_upload_list_read_download(srv: Server) -> None:
    _, key = srv.tenant()
    image = png(320, 200) + b"\x00" * 50
    with srv.client(key) as c:
        task_id = _task(c)
        r = c.post(f"/v1/tasks/{task_id}/artifacts",
                   files={"file": ("in.png", image, "application/octet-stream")},
                   data={"kind": "input", "metadata": json.dumps({"step": "crop"})})
        assert r.status_code == 201, r.text
        a = r.json()
        assert r.headers["location"] == f"/v1/artifacts/{a['artifact_id']}"
        assert (a["kind"], a["file_name"], a["mime_type"]) == ("input", "in.png", "image/png")
        assert (a["width"], a["height"], a["size_bytes"]) == (320, 200, len(image))
        assert a["checksum"] == hashlib.sha256(image).hexdigest()
        assert a["metadata"] == {"step": "crop"} and a["task_id"] == task_id
        log = c.post(f"/v1/tasks/{task_id}/artifacts",
                     files={"file": ("run.log", b"hello\n")},
                     data={"kind": "log", "file_name": "worker.log"}).json()
        assert (log["file_name"], log["mime_type"]) == ("worker.log", "text/plain")

        listed = c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"]
        assert {x["artifact_id"] for x in listed} == {a["artifact_id"], log["artifact_id"]}
        only = c.get(f"/v1/tasks/{task_id}/artifacts", params={"kind": "log"}).json()["items"]
        assert [x["artifact_id"] for x in only] == [log["artifact_id"]]
        assert c.get(f"/v1/artifacts/{a['artifact_id']}").json() == a

        got = c.get(a["url"])
        assert got.status_code == 200 and got.content == image
        assert got.headers["content-type"] == "image/png"
        assert got.headers["etag"] == f'"{a["checksum"]}"'
        assert "attachment" in got.headers["content-disposition"]
        text = c.get(log["url"])
        assert text.content == b"hello\n" and text.headers["content-type"].startswith("text/plain")
    assert (_blobs(srv) / a["object_key"]).read_bytes() == image


def test_size_limit_and_validation(srv: Server) -> None:
    _, key = srv.tenant()
    with srv.client(key) as c:
        task_id = _task(c)
        big = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("b", b"x" * (LIMIT + 1))},
                     data={"kind": "output"})
        assert big.status_code == 413, big.text
        assert big.headers["content-type"] == "application/problem+json"
        assert big.json()["status"] == 413 and big.json()["limit"] == LIMIT
        # Far over the limit: refused from Content-Length before the body is read.
        huge = c.post(f"/v1/tasks/{task_id}/artifacts",
                      files={"file": ("b", b"x" * (LIMIT + 300_000))}, data={"kind": "output"})
        assert huge.status_code == 413
        exact = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("b", b"y" * LIMIT)},
                       data={"kind": "output"})
        assert exact.status_code == 201, exact.text
        bad = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("a/b", b"x")},
                     data={"kind": "thumbnail", "metadata": "[1]"})
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"kind"}
        bad = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("x", b"x")},
                     data={"kind": "log", "metadata": "[1]", "file_name": "../x"})
        assert bad.status_code == 422
        assert {e["field"] for e in bad.json()["errors"]} == {"file_name", "metadata"}
        assert c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"][0]["size_bytes"] == LIMIT
        assert len(c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"]) == 1


def test_tenant_isolation(srv: Server) -> None:
    _, key_a = srv.tenant()
    tenant_b, key_b = srv.tenant()
    ro = srv.key(tenant_b, read_only=True)["key"]
    with srv.client(key_a) as a, srv.client(key_b) as b, srv.client(ro) as b_ro:
        task_a = _task(a)
        art = a.post(f"/v1/tasks/{task_a}/artifacts", files={"file": ("s.txt", b"secret")},
                     data={"kind": "output"}).json()
        for path in (f"/v1/tasks/{task_a}/artifacts", f"/v1/artifacts/{art['artifact_id']}",
                     art["url"]):
            r = b.get(path)
            assert r.status_code == 404 and "secret" not in r.text, path
        r = b.post(f"/v1/tasks/{task_a}/artifacts", files={"file": ("x", b"x")},
                   data={"kind": "input"})
        assert r.status_code == 404
        task_b = _task(b)
        assert b_ro.get(f"/v1/tasks/{task_b}/artifacts").status_code == 200
        r = b_ro.post(f"/v1/tasks/{task_b}/artifacts", files={"file": ("x", b"x")},
                      data={"kind": "input"})
        assert r.status_code == 403
    with srv.admin() as admin:
        assert admin.get(art["url"]).content == b"secret"
        audit = admin.get("/v1/audit", params={"resource_type": "artifact"}).json()["items"]
        assert art["artifact_id"] in {x["resource"]["identifier"] for x in audit}
        assert all(x["action"] == "uploaded" for x in audit)


def _reconcile(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CREEP_DATABASE_URL": srv.database_url,
           "CREEP_ARTIFACT_DIR": str(_blobs(srv))}
    return subprocess.run(
        [sys.executable, "-m", "creep.cli", "artifacts", "reconcile", "--json", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


def test_reconcile_cli_exit_codes(srv: Server) -> None:
    _, key = srv.tenant()
    with srv.client(key) as c:
        task_id = _task(c)
        art = c.post(f"/v1/tasks/{task_id}/artifacts", files={"file": ("v.txt", b"vanishing")},
                     data={"kind": "output"}).json()
    first = _reconcile(srv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(first.stdout)["clean"] is True
    (_blobs(srv) / art["object_key"]).unlink()
    found = _reconcile(srv)
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert report["counts"] == {"missing_file": 1}
    assert report["drift"][0]["artifact_ids"] == [art["artifact_id"]]
    fixed = _reconcile(srv, "--repair")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert _reconcile(srv).returncode == 0
    with srv.client(key) as c:
        assert c.get(art["url"]).status_code == 404
        assert c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"] == []
        events = c.get(f"/v1/tasks/{task_id}/events").json()["items"]
        assert events[-1]["event_type"] == "artifact_removed"
    bad = subprocess.run(
        [sys.executable, "-m", "creep.cli", "artifacts", "reconcile",
         "--database-url", "mysql://nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "database_url" in bad.stderr


def test_chunked_upload_over_the_limit_is_refused_before_its_end(srv: Server) -> None:
    """Without Content-Length the whole multipart body was read (spooled to disk) before the
    413, however large: the server must answer once the body is past the limit, without
    waiting for the rest (here the client stops sending after 2 MB and waits)."""
    _, key = srv.tenant()
    with srv.client(key) as c:
        task_id = _task(c)
    host, port = srv.url.removeprefix("http://").split(":")
    head = (f"POST /v1/tasks/{task_id}/artifacts HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=B\r\n\r\n").encode()
    part = (b'--B\r\nContent-Disposition: form-data; name="kind"\r\n\r\noutput\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n')
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        chunk = b"z" * 65536
        for _ in range(32):  # 2 MiB, ten times the limit; the body never ends
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except TimeoutError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200] or "no answer within 10 s"
    assert b"application/problem+json" in answer
    with srv.client(key) as c:
        assert c.get(f"/v1/tasks/{task_id}/artifacts").json()["items"] == []
