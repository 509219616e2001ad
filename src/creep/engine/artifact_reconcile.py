"""Artifact index drift (seed 002): compare the index rows with the files on disk.

Finds rows whose file is missing, files whose bytes no longer match their checksum, files no
row points at (orphans, e.g. a crash between writing the file and the row) and leftover temp
files. `repair` fixes what can be fixed: a file with the wrong bytes is moved to quarantine
(or to the checksum it really has, when nothing is stored there), orphans and stale temp files
older than a grace period are deleted (a younger one may belong to an upload in flight), and
rows whose content is gone are removed, each leaving an `artifact_removed` task event.

Uploads run meanwhile, in other processes, with no lock shared with reconcile: an upload
writes its file (always a new one, even over equal content: see blob_store), then its row.
So a file is never deleted or set aside where it lies: it is first moved to `holding/`; a file
that is no longer the one listed (another inode: an upload wrote it since) goes back at once,
and an orphan goes back when a row for its checksum was committed since the rows were read
(read again after the move). A run that stops half way leaves files in `holding/`; the next
run puts them back (or sets them aside) before it looks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from creep.domain.artifacts import Artifact
from creep.domain.clock import Clock
from creep.domain.errors import ValidationError
from creep.ports import Store
from creep.storage.blob_store import BlobFile, BlobStore


@dataclass(slots=True)
class Drift:
    kind: str  # missing_file | checksum_mismatch | orphan_file | stale_temp | misplaced_file
    checksum: str
    detail: str
    artifact_ids: list[str] = field(default_factory=list)
    repaired: bool = False
    action: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    rows: int = 0
    files: int = 0
    drift: list[Drift] = field(default_factory=list)
    repair: bool = False

    @property
    def unresolved(self) -> list[Drift]:
        return [d for d in self.drift if not d.repaired]

    @property
    def clean(self) -> bool:
        """True when index and files agree (now, after any repair)."""
        return not self.unresolved

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.drift:
            out[d.kind] = out.get(d.kind, 0) + 1
        return out


def reconcile(
    store: Store, blobs: BlobStore, clock: Clock, *, repair: bool = False,
    orphan_grace: float = 3600.0, on_progress: Callable[[int], None] | None = None,
) -> ReconcileReport:
    report = ReconcileReport(repair=repair)
    now = clock.now()
    cutoff = (now - timedelta(seconds=orphan_grace)).timestamp()
    rows_by_sum: dict[str, list[Artifact]] = {}
    after: str | None = None
    while page := store.artifact_scan(after, 1000):
        for a in page:
            rows_by_sum.setdefault(a.checksum, []).append(a)
        report.rows += len(page)
        after = page[-1].artifact_id
    if report.rows and not blobs.objects.is_dir():
        # Every row's file would be missing (and repair would remove every row): far more
        # likely a wrong directory (a relative default, another working directory) than a lost
        # store. Content that really is lost is confirmed by creating the folder.
        raise ValidationError.single(
            "artifact_dir", f"{blobs.root} holds no artifact store (no {blobs.objects.name}/ "
            f"folder) for the {report.rows} artifact row(s) of this database: is it the "
            f"directory the server stores artifacts in? If their content really is lost, "
            f"create {blobs.objects} and run again")

    _recover_held(blobs, repair)
    seen: set[str] = set()
    doomed: list[tuple[Drift, BlobFile]] = []
    for blob in list(blobs.files()):
        report.files += 1
        if on_progress is not None:
            on_progress(report.files)
        if blobs.misplaced(blob):
            _misplaced(report, blobs, blob, repair)
            continue
        actual = blobs.hash_file(blob.path)
        if actual != blob.checksum:
            drift = Drift("checksum_mismatch", blob.checksum,
                          f"{blob.path} holds content with sha256 {actual}",
                          [a.artifact_id for a in rows_by_sum.get(blob.checksum, [])])
            report.drift.append(drift)
            if repair:
                _set_aside(drift, blobs, blob, actual)
            continue  # the rows for this checksum now count as missing content (below)
        seen.add(blob.checksum)
        if blob.checksum not in rows_by_sum:
            drift = Drift("orphan_file", blob.checksum, f"{blob.path} has no index row")
            report.drift.append(drift)
            if repair and blob.mtime <= cutoff:
                doomed.append((drift, blob))
            elif repair:
                drift.action = "kept: younger than the orphan grace period"
    if doomed:
        _delete_orphans(store, blobs, doomed)

    for blob in list(blobs.temp_files()):
        drift = Drift("stale_temp", "", f"{blob.path} is an unfinished upload")
        if blob.mtime > cutoff:
            continue  # probably an upload in flight: not drift (yet)
        report.drift.append(drift)
        if repair:
            blob.path.unlink(missing_ok=True)
            drift.repaired, drift.action = True, "deleted"

    lost = [a for checksum, rows in rows_by_sum.items() if checksum not in seen for a in rows]
    # A file adopted under its real checksum during this run may satisfy some of these rows.
    lost = [a for a in lost if not blobs.exists(a.checksum)]
    by_sum: dict[str, list[Artifact]] = {}
    for a in lost:
        by_sum.setdefault(a.checksum, []).append(a)
    drifts = {
        checksum: Drift("missing_file", checksum, f"no file for {len(rows)} index row(s)",
                        [a.artifact_id for a in rows])
        for checksum, rows in by_sum.items()
    }
    report.drift.extend(drifts.values())
    if repair and lost:
        removed = store.artifact_remove(
            [a.artifact_id for a in lost], "content missing (artifacts reconcile)", now
        )
        gone = {a.artifact_id for a in removed}
        for drift in drifts.values():
            if all(i in gone for i in drift.artifact_ids):
                drift.repaired, drift.action = True, "index rows removed"
    return report


_REWRITTEN = "kept: written again by an upload during the check"


def _all_checksums(store: Store) -> set[str]:
    out: set[str] = set()
    after: str | None = None
    while page := store.artifact_scan(after, 1000):
        out.update(a.checksum for a in page)
        after = page[-1].artifact_id
    return out


def _delete_orphans(store: Store, blobs: BlobStore, doomed: list[tuple[Drift, BlobFile]]) -> None:
    """Move each orphan aside, then read the rows again: an upload that reused the file or
    committed its row since the first read keeps it."""
    held: list[tuple[Drift, BlobFile, Path]] = []
    for drift, blob in doomed:
        path = blobs.hold(blob)
        if path is None:
            drift.action = _REWRITTEN
        else:
            held.append((drift, blob, path))
    if not held:
        return
    indexed = _all_checksums(store)
    for drift, blob, path in held:
        if blob.checksum in indexed:
            blobs.release(path, blob.checksum)
            drift.repaired, drift.action = True, "kept: an upload indexed it during the check"
        else:
            path.unlink(missing_ok=True)
            drift.repaired, drift.action = True, "deleted"


def _move_aside(blobs: BlobStore, path: Path, actual: str) -> str:
    if blobs.adopt(path, actual):
        return f"moved to its real checksum {actual}"
    target = blobs.quarantine(path)
    return f"quarantined as {target}"


def _set_aside(drift: Drift, blobs: BlobStore, blob: BlobFile, actual: str) -> None:
    held = blobs.hold(blob)
    if held is None:
        drift.action = _REWRITTEN
        return
    drift.action = _move_aside(blobs, held, actual)
    drift.repaired = True


def _recover_held(blobs: BlobStore, repair: bool) -> None:
    """Files an earlier run moved aside and did not finish with: back where their content
    belongs (an orphan is then judged again, a row finds its file), even when only reporting;
    with repair, bad content goes aside as usual."""
    for path in list(blobs.held_files()):
        name = path.name.partition(".")[0]
        actual = blobs.hash_file(path)
        if actual == name and blobs.exists(actual):
            path.unlink()  # the same bytes are back in place (an upload)
        elif actual == name:
            blobs.release(path, actual)
        elif repair:
            _move_aside(blobs, path, actual)


def _misplaced(report: ReconcileReport, blobs: BlobStore, blob: BlobFile, repair: bool) -> None:
    drift = Drift("misplaced_file", blob.checksum, f"{blob.path} is not where its name says")
    report.drift.append(drift)
    if repair:
        _set_aside(drift, blobs, blob, blobs.hash_file(blob.path))
