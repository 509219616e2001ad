"""Task artifacts through the Python API on every backend: storage by checksum, dedup,
metadata, image sizes, tenant scoping, the size limit, and reconcile (report and repair)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from creep import Creep, FrozenClock, NotFound, ValidationError
from creep.domain.artifacts import ArtifactTooLarge
from tests.unit.test_image_header import jpeg, png


@pytest.fixture
def app(db_url: str, tmp_path: Path, clock: FrozenClock) -> Iterator[Creep]:
    creep_app = Creep(db_url, clock=clock, artifact_dir=tmp_path / "blobs",
                      artifact_max_bytes=1_000_000)
    yield creep_app
    creep_app.close()


def _task(app: Creep, tenant: str = "t1") -> str:
    return app.submit(tenant_id=tenant, task_type="RENDER").task_id


def test_put_get_list_and_dedup(app: Creep, tmp_path: Path, clock: FrozenClock) -> None:
    task_id = _task(app)
    image = png(640, 480) + b"\x00" * 100
    a = app.put_artifact(task_id, image, kind="input", file_name="in.png",
                         metadata={"step": "crop", "box": [1, 2, 3, 4]})
    assert a.kind == "input" and a.mime_type == "image/png"
    assert (a.width, a.height) == (640, 480) and a.size_bytes == len(image)
    assert a.checksum == hashlib.sha256(image).hexdigest()
    assert a.object_key == f"sha256/{a.checksum[:2]}/{a.checksum}"
    stored = tmp_path / "blobs" / a.object_key
    assert stored.read_bytes() == image

    # The same bytes under another name and kind: a second row, one file.
    clock.advance(1)
    b = app.put_artifact(task_id, image, kind="output", file_name="copy.png")
    assert b.artifact_id != a.artifact_id and b.checksum == a.checksum
    assert len(list((tmp_path / "blobs" / "sha256").rglob("*"))) == 2  # one folder, one file
    assert not list((tmp_path / "blobs" / "tmp").iterdir())  # no temp file left behind

    clock.advance(1)
    log = app.put_artifact(task_id, b"line 1\nline 2\n", kind="log", file_name="run.log")
    assert log.mime_type == "text/plain" and log.width is None
    clock.advance(1)
    photo = app.put_artifact(task_id, jpeg(30, 20), kind="preview", file_name="p.bin",
                             mime_type="image/jpeg")
    assert (photo.width, photo.height, photo.mime_type) == (30, 20, "image/jpeg")

    got = app.get_artifact(a.artifact_id)
    assert got == a and got.metadata == {"step": "crop", "box": [1, 2, 3, 4]}
    assert [x.artifact_id for x in app.list_artifacts(task_id)] == [
        a.artifact_id, b.artifact_id, log.artifact_id, photo.artifact_id]
    assert [x.artifact_id for x in app.list_artifacts(task_id, kind="log")] == [log.artifact_id]
    assert app.read_artifact(log.artifact_id) == (log, b"line 1\nline 2\n")


def test_tenant_scoping(app: Creep) -> None:
    mine, theirs = _task(app, "t1"), _task(app, "t2")
    a = app.put_artifact(mine, b"x", kind="output", file_name="x.txt", tenant_id="t1")
    with pytest.raises(NotFound):
        app.put_artifact(theirs, b"x", kind="output", file_name="x.txt", tenant_id="t1")
    with pytest.raises(NotFound):
        app.get_artifact(a.artifact_id, tenant_id="t2")
    with pytest.raises(NotFound):
        app.list_artifacts(mine, tenant_id="t2")
    with pytest.raises(NotFound):
        app.list_artifacts("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        app.get_artifact("not-an-id")
    assert app.list_artifacts(theirs, tenant_id="t2") == []


def test_validation_and_size_limit(app: Creep, tmp_path: Path) -> None:
    task_id = _task(app)
    with pytest.raises(ValidationError) as info:
        app.put_artifact(task_id, b"x", kind="thumbnail", file_name="../etc/passwd",
                         mime_type="not a mime", metadata=[1])  # type: ignore[arg-type]
    assert [f for f, _ in info.value.errors] == ["kind", "file_name", "mime_type", "metadata"]
    with pytest.raises(ArtifactTooLarge):
        app.put_artifact(task_id, iter([b"a" * 600_000, b"b" * 600_000]), kind="output",
                         file_name="big.bin")
    # Nothing of the refused upload is kept.
    assert not list((tmp_path / "blobs" / "tmp").iterdir())
    assert app.list_artifacts(task_id) == []
    exactly = app.put_artifact(task_id, b"z" * 1_000_000, kind="output", file_name="max.bin")
    assert exactly.size_bytes == 1_000_000


def test_reconcile_reports_then_repairs(app: Creep, tmp_path: Path, clock: FrozenClock) -> None:
    blobs = tmp_path / "blobs"
    task_id = _task(app)
    ok = app.put_artifact(task_id, b"fine", kind="output", file_name="ok.txt")
    gone = app.put_artifact(task_id, b"will vanish", kind="output", file_name="gone.txt")
    twice = [app.put_artifact(task_id, b"rotten", kind="output", file_name=f"r{i}.txt")
             for i in range(2)]
    (blobs / gone.object_key).unlink()
    (blobs / twice[0].object_key).write_bytes(b"bit rot")
    orphan = hashlib.sha256(b"orphan").hexdigest()
    (blobs / "sha256" / orphan[:2]).mkdir(exist_ok=True)
    (blobs / "sha256" / orphan[:2] / orphan).write_bytes(b"orphan")
    (blobs / "tmp" / "dead.part").write_bytes(b"half an upload")
    old = clock.now().timestamp() - 7200
    for path in (blobs / "sha256" / orphan[:2] / orphan, blobs / "tmp" / "dead.part"):
        os.utime(path, (old, old))

    report = app.reconcile_artifacts()
    assert not report.clean and report.rows == 4
    assert report.counts() == {"checksum_mismatch": 1, "orphan_file": 1, "stale_temp": 1,
                               "missing_file": 1}
    rows = {d.kind: (d.checksum, sorted(d.artifact_ids)) for d in report.drift}
    assert rows["missing_file"] == (gone.checksum, [gone.artifact_id])
    assert rows["checksum_mismatch"] == (twice[0].checksum, sorted(a.artifact_id for a in twice))
    assert rows["orphan_file"] == (orphan, [])
    assert not any(d.repaired for d in report.drift)
    assert len(app.list_artifacts(task_id)) == 4  # reporting changes nothing

    repaired = app.reconcile_artifacts(repair=True)
    assert repaired.clean and all(d.repaired for d in repaired.drift)
    # The rows of the corrupt file lost their content with it, and are removed too.
    assert repaired.counts()["missing_file"] == 2
    assert [a.artifact_id for a in app.list_artifacts(task_id)] == [ok.artifact_id]
    assert not (blobs / "sha256" / orphan[:2] / orphan).exists()
    assert not (blobs / "tmp" / "dead.part").exists()
    # The corrupt bytes are kept aside under the checksum they really have.
    assert (blobs / "sha256" / hashlib.sha256(b"bit rot").hexdigest()[:2]).is_dir()
    removed = [e for e in app.task_events(task_id) if e.event_type == "artifact_removed"]
    assert sorted(e.payload["artifact_id"] for e in removed) == sorted(
        [gone.artifact_id, *(a.artifact_id for a in twice)])
    # The moved bit-rot file has no row: an orphan now, younger than the grace period.
    after = app.reconcile_artifacts()
    assert after.counts() == {"orphan_file": 1}
    clock.set(datetime.now(UTC) + timedelta(seconds=5))  # the file was moved in real time
    assert app.reconcile_artifacts(repair=True, orphan_grace=0).clean
    assert app.reconcile_artifacts().clean and app.read_artifact(ok.artifact_id)[1] == b"fine"


def test_young_orphans_and_temp_files_are_left_alone(
    app: Creep, tmp_path: Path, clock: FrozenClock
) -> None:
    blobs = tmp_path / "blobs"
    (blobs / "tmp").mkdir(parents=True)
    (blobs / "tmp" / "inflight.part").write_bytes(b"uploading")
    orphan = hashlib.sha256(b"new").hexdigest()
    (blobs / "sha256" / orphan[:2]).mkdir(parents=True)
    (blobs / "sha256" / orphan[:2] / orphan).write_bytes(b"new")
    # "Now" is when the files were written: both are younger than the grace period.
    clock.set(datetime.fromtimestamp(os.path.getmtime(blobs / "tmp" / "inflight.part"), UTC))
    report = app.reconcile_artifacts(repair=True)
    assert report.counts() == {"orphan_file": 1} and not report.clean
    assert (blobs / "tmp" / "inflight.part").exists()
    assert (blobs / "sha256" / orphan[:2] / orphan).exists()
