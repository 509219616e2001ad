"""Storing a task's artifacts: content to the blob store, then the index row."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from creep.domain.artifacts import (
    ARTIFACT_ADDED,
    DEFAULT_MAX_ARTIFACT_BYTES,
    Artifact,
    guess_mime_type,
    validate_upload,
)
from creep.domain.clock import Clock
from creep.domain.errors import NotFound, TaskDeleted, ValidationError
from creep.domain.ids import canonical_uuid
from creep.domain.image_header import sniff_image
from creep.ports import Store
from creep.storage.blob_store import BlobStore

DEFAULT_ARTIFACT_DIR = "./creep-artifacts"


def artifact_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """An explicit directory, else CREEP_ARTIFACT_DIR, else ./creep-artifacts."""
    return Path(explicit or os.environ.get("CREEP_ARTIFACT_DIR") or DEFAULT_ARTIFACT_DIR)


def max_artifact_bytes(explicit: int | None = None) -> int:
    """An explicit limit, else CREEP_ARTIFACT_MAX_BYTES, else 100 MiB."""
    if explicit is not None:
        value: Any = explicit
        field = "artifact_max_bytes"
    else:
        value = os.environ.get("CREEP_ARTIFACT_MAX_BYTES", DEFAULT_MAX_ARTIFACT_BYTES)
        field = "CREEP_ARTIFACT_MAX_BYTES"  # name what the user set
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ValidationError.single(field, "must be an integer") from None
    if limit < 1:
        raise ValidationError.single(field, "must be >= 1")
    return limit


class ArtifactService:
    def __init__(self, store: Store, blobs: BlobStore, clock: Clock, max_bytes: int) -> None:
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.max_bytes = max_bytes

    def put(
        self, task_id: str, content: BinaryIO | Iterable[bytes] | bytes, *, kind: str,
        file_name: str, tenant_id: str | None = None, mime_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Artifact:
        """Store one artifact of a task. With tenant_id, a task of another tenant is NotFound.
        The content goes to disk first: a crash before the row is written leaves an orphan
        file for reconcile, never a row without content."""
        artifact = self.stage(task_id, content, kind=kind, file_name=file_name,
                              tenant_id=tenant_id, mime_type=mime_type, metadata=metadata)
        return self.store.artifact_create(artifact)

    def stage(
        self, task_id: str, content: BinaryIO | Iterable[bytes] | bytes, *, kind: str,
        file_name: str, tenant_id: str | None = None, mime_type: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Artifact:
        """Validate and write the content; the returned artifact is not indexed yet (pass it
        to store.artifact_create, e.g. inside an audited block)."""
        upload = validate_upload(kind, file_name, mime_type, metadata)
        task = self.store.task_get(canonical_uuid(task_id), tenant_id)
        if task.deleted_at is not None:  # refused before its content is written
            raise TaskDeleted(task.task_id, ARTIFACT_ADDED)
        blob = self.blobs.write(content, self.max_bytes)
        image = sniff_image(blob.head)
        return Artifact(
            artifact_id=str(uuid.uuid4()), task_id=task.task_id, tenant_id=task.tenant_id,
            kind=upload.kind, file_name=upload.file_name,
            mime_type=upload.mime_type or guess_mime_type(
                upload.file_name, image.mime_type if image else None
            ),
            size_bytes=blob.size_bytes, width=image.width if image else None,
            height=image.height if image else None, checksum=blob.checksum,
            object_key=blob.object_key, metadata=upload.metadata, created_at=self.clock.now(),
        )

    def get(self, artifact_id: str, tenant_id: str | None = None) -> Artifact:
        return self.store.artifact_get(canonical_uuid(artifact_id), tenant_id)

    def list_for_task(
        self, task_id: str, tenant_id: str | None = None, kind: str | None = None
    ) -> list[Artifact]:
        if kind is not None:
            validate_upload(kind, "x")
        return self.store.artifact_list(canonical_uuid(task_id), tenant_id, kind)

    def content_path(self, artifact: Artifact) -> Path:
        """Where the artifact's bytes are; NotFound when they are gone (index drift)."""
        path = self.blobs.path(artifact.checksum)
        if not path.is_file():
            raise NotFound("artifact content", artifact.artifact_id)
        return path

    def open_content(self, artifact: Artifact) -> BinaryIO:
        """The artifact's bytes, open for reading: a file removed after it is open stays
        readable to the end; one removed before (even after content_path found it) is
        NotFound."""
        try:
            return self.content_path(artifact).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound("artifact content", artifact.artifact_id) from None

    def read(self, artifact_id: str, tenant_id: str | None = None) -> tuple[Artifact, bytes]:
        artifact = self.get(artifact_id, tenant_id)
        with self.open_content(artifact) as f:
            return artifact, f.read()
