"""Task artifacts (seed 004's task_assets): a task's input, output, preview and log files."""

from __future__ import annotations

import mimetypes
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from creep.domain.errors import CreepError, ValidationError
from creep.domain.text import find_bad_json


class ArtifactKind(StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    PREVIEW = "preview"
    LOG = "log"


#: Largest upload by default (CREEP_ARTIFACT_MAX_BYTES overrides it).
DEFAULT_MAX_ARTIFACT_BYTES = 100 * 1024 * 1024
#: What TaskDeleted says a task in the recycle bin cannot be until restored (an artifact
#: of a deleted task is still read, listed and downloaded).
ARTIFACT_ADDED = "given an artifact"
MAX_METADATA_BYTES = 64 * 1024
_COMMON_TYPES = {
    "txt": "text/plain", "log": "text/plain", "csv": "text/csv", "json": "application/json",
    "html": "text/html", "pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg",
    "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "zip": "application/zip",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MIME = re.compile(r"^[a-zA-Z0-9][\w.+-]*/[a-zA-Z0-9][\w.+-]*$")


class ArtifactTooLarge(CreepError):
    """The artifact is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"artifact exceeds the size limit of {limit} bytes")


@dataclass(slots=True)
class Artifact:
    artifact_id: str
    task_id: str
    tenant_id: str
    kind: ArtifactKind
    file_name: str
    mime_type: str
    size_bytes: int
    width: int | None
    height: int | None
    checksum: str
    object_key: str
    metadata: dict[str, Any]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class ArtifactUpload:
    """The caller-supplied part of an artifact, validated."""

    kind: ArtifactKind
    file_name: str
    mime_type: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def validate_upload(
    kind: Any, file_name: Any, mime_type: Any = None, metadata: Any = None
) -> ArtifactUpload:
    """Check the fields of an upload; every problem is reported with its field and rule."""
    errors: list[tuple[str, str]] = []
    kinds = [k.value for k in ArtifactKind]
    if kind not in kinds:
        errors.append(("kind", f"must be one of {kinds}"))
    if not isinstance(file_name, str) or not 1 <= len(file_name) <= 255:
        errors.append(("file_name", "must be a string of 1 to 255 characters"))
    elif "/" in file_name or "\\" in file_name or "\x00" in file_name or file_name in (".", ".."):
        errors.append(("file_name", "must be a plain file name (no path separators)"))
    if mime_type is not None and (
        not isinstance(mime_type, str) or len(mime_type) > 255 or not _MIME.fullmatch(mime_type)
    ):
        errors.append(("mime_type", "must look like type/subtype"))
    meta: dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors.append(("metadata", "must be a JSON object"))
        else:
            bad = find_bad_json(metadata, "metadata")
            try:
                size = len(orjson.dumps(metadata))
            except TypeError:
                errors.append(bad or ("metadata", "must be JSON-serialisable"))
            else:
                if bad is not None:  # NUL or a lone surrogate: storable on no backend
                    errors.append(bad)
                elif size > MAX_METADATA_BYTES:
                    errors.append(("metadata", f"must be at most {MAX_METADATA_BYTES} bytes"))
                meta = metadata
    if errors:
        raise ValidationError(errors)
    return ArtifactUpload(ArtifactKind(kind), file_name, mime_type, meta)


def guess_mime_type(file_name: str, sniffed: str | None) -> str:
    """The content's own signature wins over the file name; octet-stream when neither tells."""
    if sniffed:
        return sniffed
    suffix = file_name.rpartition(".")[2].lower() if "." in file_name else ""
    if suffix in _COMMON_TYPES:  # the system's mime.types is not always installed
        return _COMMON_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(file_name, strict=False)
    return guessed or "application/octet-stream"


def is_sha256(value: str) -> bool:
    return bool(_SHA256.fullmatch(value))
