"""Task artifacts through the Python API on every backend: storage by checksum, dedup,
metadata, image sizes, tenant scoping, the size limit, and reconcile (report and repair)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from creep import Creep, FrozenClock, NotFound, TaskDeleted, ValidationError
from creep.domain.artifacts import Artifact, ArtifactTooLarge
from creep.engine.artifact_reconcile import reconcile
from creep.storage.blob_store import BlobStore
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


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_a_deleted_task_takes_no_artifacts_until_restored(app: Creep, tmp_path: Path) -> None:
    """A task in the recycle bin keeps its artifacts (read, listed, downloaded) but takes no
    new one: TaskDeleted, no row and no file; once restored it takes them again."""
    task_id = _task(app)
    kept = app.put_artifact(task_id, b"kept", kind="output", file_name="kept.txt")
    app.cancel(task_id)
    # Staged (content on disk) before the delete, indexed after it: refused all the same.
    staged = app.artifacts.stage(task_id, b"late", kind="log", file_name="late.log")
    app.delete_task(task_id)
    files = _files(tmp_path / "blobs")
    with pytest.raises(TaskDeleted) as refused:
        app.put_artifact(task_id, b"new", kind="output", file_name="new.txt")
    assert refused.value.task_id == task_id and "restore" in refused.value.message
    with pytest.raises(TaskDeleted):
        app.store.artifact_create(staged)
    assert _files(tmp_path / "blobs") == files  # the refused put wrote no content
    assert app.list_artifacts(task_id) == [kept]
    assert app.get_artifact(kept.artifact_id) == kept
    assert app.read_artifact(kept.artifact_id) == (kept, b"kept")

    app.restore_task(task_id)
    again = app.put_artifact(task_id, b"new", kind="output", file_name="new.txt")
    assert {a.artifact_id for a in app.list_artifacts(task_id)} == {
        kept.artifact_id, again.artifact_id}


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


def _aged_orphan(app: Creep, tmp_path: Path, clock: FrozenClock, content: bytes) -> Path:
    """Content whose only artifact went with its task (retention): an old file, no row."""
    task_id = _task(app)
    a = app.put_artifact(task_id, content, kind="input", file_name="in.bin")
    path = tmp_path / "blobs" / a.object_key
    app.store.artifact_remove([a.artifact_id], "gone with its task", clock.now())
    old = clock.now().timestamp() - 7200
    os.utime(path, (old, old))
    return path


def test_repair_keeps_a_blob_an_upload_of_the_same_content_reuses(
    app: Creep, tmp_path: Path, clock: FrozenClock
) -> None:
    """An upload of content already on disk as an old orphan (its rows gone, e.g. with
    retention) reused the file as it was: `reconcile --repair` running between the upload's
    file write and its row insert (the API's stage, then artifact_create) deleted the file as
    an orphan past the grace period, and the committed row named a missing file."""
    content = b"shared input " * 100
    path = _aged_orphan(app, tmp_path, clock, content)
    svc = app.artifacts
    staged = svc.stage(_task(app), content, kind="input", file_name="again.bin")
    report = app.reconcile_artifacts(repair=True)
    app.store.artifact_create(staged)
    assert path.is_file(), report.drift
    assert app.read_artifact(staged.artifact_id)[1] == content
    assert app.reconcile_artifacts().clean


@pytest.mark.parametrize("commit", ["during", "after"])
def test_repair_keeps_an_orphan_rewritten_while_it_runs(
    app: Creep, tmp_path: Path, clock: FrozenClock, commit: str
) -> None:
    """The upload lands after reconcile listed the files (it saw an old orphan) and before it
    deletes: the row committed during the run ("during") or after it ("after") must find
    its file."""
    content = b"racing upload " * 100
    path = _aged_orphan(app, tmp_path, clock, content)
    svc = app.artifacts
    task_id = _task(app)
    staged: list[Artifact] = []

    def upload_now(n: int) -> None:  # reconcile has listed the files, decided nothing yet
        staged.append(svc.stage(task_id, content, kind="output", file_name="out.bin"))
        if commit == "during":
            app.store.artifact_create(staged[0])

    reconcile(app.store, BlobStore(tmp_path / "blobs"), clock, repair=True,
              on_progress=upload_now)
    if commit == "after":
        app.store.artifact_create(staged[0])
    assert path.is_file()
    assert app.read_artifact(staged[0].artifact_id)[1] == content
    assert app.reconcile_artifacts().clean


def test_repair_with_no_grace_keeps_an_orphan_whose_row_commits_while_it_runs(
    app: Creep, tmp_path: Path, clock: FrozenClock
) -> None:
    """orphan_grace=0: a fresh upload's file is an orphan until its row commits; a row
    committed after the file listing but before the delete keeps the file."""
    content = b"fresh upload " * 100
    svc = app.artifacts
    staged = svc.stage(_task(app), content, kind="output", file_name="out.bin")
    clock.set(datetime.now(UTC) + timedelta(seconds=5))
    reconcile(app.store, BlobStore(tmp_path / "blobs"), clock, repair=True, orphan_grace=0,
              on_progress=lambda n: app.store.artifact_create(staged))
    assert app.read_artifact(staged.artifact_id)[1] == content
    assert app.reconcile_artifacts().clean


def test_repair_does_not_set_aside_good_bytes_an_upload_wrote_after_the_hash(
    app: Creep, tmp_path: Path, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged file is hashed (mismatch), then an upload of the right bytes replaces it
    before repair moves it aside: the good file must stay, and the rows with it."""
    content = b"good bytes " * 100
    task_id = _task(app)
    first = app.put_artifact(task_id, content, kind="output", file_name="a.bin")
    path = tmp_path / "blobs" / first.object_key
    path.write_bytes(b"bit rot")
    hash_file = BlobStore.hash_file
    uploads: list[Artifact] = []

    def hash_then_upload(p: Path) -> str:
        actual = hash_file(p)
        if p == path and not uploads:
            uploads.append(app.put_artifact(task_id, content, kind="output", file_name="b.bin"))
        return actual

    monkeypatch.setattr(BlobStore, "hash_file", staticmethod(hash_then_upload))
    app.reconcile_artifacts(repair=True)
    assert path.read_bytes() == content
    assert app.read_artifact(uploads[0].artifact_id)[1] == content
    assert app.read_artifact(first.artifact_id)[1] == content


def test_reupload_over_a_same_size_damaged_file_keeps_the_new_bytes(
    app: Creep, tmp_path: Path
) -> None:
    """Deduplication trusted a file of the right size: damage that keeps the size (bit rot)
    was served for the new upload too, under a checksum it does not have."""
    content = b"0123456789" * 50
    first = app.put_artifact(_task(app), content, kind="output", file_name="a.bin")
    (tmp_path / "blobs" / first.object_key).write_bytes(b"X" * len(content))
    again = app.put_artifact(_task(app), content, kind="output", file_name="a.bin")
    assert app.read_artifact(again.artifact_id)[1] == content


def test_a_file_left_in_holding_by_a_stopped_run_goes_back(
    app: Creep, tmp_path: Path
) -> None:
    """A repair that stopped between moving a file aside and deciding leaves it in
    `holding/`: the next run puts it back where its content belongs."""
    a = app.put_artifact(_task(app), b"held", kind="output", file_name="h.bin")
    holding = tmp_path / "blobs" / "holding"
    holding.mkdir()
    os.replace(tmp_path / "blobs" / a.object_key, holding / f"{a.checksum}.0123abcd")
    assert app.reconcile_artifacts().clean
    assert app.read_artifact(a.artifact_id)[1] == b"held" and not list(holding.iterdir())


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_repair_against_a_directory_with_no_store_removes_no_rows(
    app: Creep, db_url: str, tmp_path: Path, clock: FrozenClock, where: str
) -> None:
    """`creep artifacts reconcile --repair` run with the wrong --artifact-dir (or, with the
    default ./creep-artifacts, from another working directory, as a cron job easily is)
    found every row's file missing and removed every artifact row of the database."""
    a = app.put_artifact(_task(app), b"kept", kind="output", file_name="o.txt")
    elsewhere = tmp_path / "elsewhere"
    if where == "empty":
        elsewhere.mkdir()
    other = Creep(db_url, clock=clock, artifact_dir=elsewhere)
    try:
        with pytest.raises(ValidationError) as caught:
            other.reconcile_artifacts(repair=True)
    finally:
        other.close()
    assert [field for field, _ in caught.value.errors] == ["artifact_dir"]
    assert "no artifact store" in str(caught.value)
    assert app.read_artifact(a.artifact_id)[1] == b"kept"
    # Content really lost: the operator says so by creating the folder, and repair goes on.
    (elsewhere / "sha256").mkdir(parents=True)
    other = Creep(db_url, clock=clock, artifact_dir=elsewhere)
    try:
        report = other.reconcile_artifacts(repair=True)
    finally:
        other.close()
    assert report.counts() == {"missing_file": 1} and report.clean


def test_files_of_artifacts_retention_deleted_are_reclaimed_by_repair(
    app: Creep, tmp_path: Path, clock: FrozenClock
) -> None:
    """What the README says of disk space: task retention deletes a task's artifact rows
    with the task (no artifact_removed event: its events go too); the files stay until
    reconcile --repair deletes them as orphans past the grace period."""
    task_id = _task(app)
    a = app.put_artifact(task_id, b"old output", kind="output", file_name="o.txt")
    shared = app.put_artifact(_task(app), b"shared", kind="output", file_name="s.txt")
    app.put_artifact(task_id, b"shared", kind="output", file_name="s.txt")
    app.cancel(task_id)
    scheduler = app.scheduler(holder_id="R")
    scheduler.run_once()  # installs the built-in schedules
    clock.advance(days=31)
    scheduler.run_once()  # creep.retention.tasks: 30 days
    with pytest.raises(NotFound):
        app.get_artifact(a.artifact_id)
    path = tmp_path / "blobs" / a.object_key
    assert path.read_bytes() == b"old output"  # retention left the file
    old = clock.now().timestamp() - 7200
    os.utime(path, (old, old))
    report = app.reconcile_artifacts(repair=True)
    assert report.counts() == {"orphan_file": 1} and report.clean
    assert not path.exists()
    assert app.read_artifact(shared.artifact_id)[1] == b"shared"  # still named by a row
