"""Artifact content on local disk, addressed by sha256.

A file lives at `<root>/sha256/<first two hex>/<sha256>`. Writes go to `<root>/tmp/` first and
are renamed into place after an fsync, so a reader never sees half a file and a crash leaves
at most a temp file (which `creep artifacts reconcile` cleans up). Equal content is stored once.

Every write renames its own fresh file into place, also when equal content is already there:
the object then has a new inode and a new mtime, which is how reconcile (in another process,
with no lock shared with uploads) tells that an upload reused a file it is about to delete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from creep.domain.artifacts import ArtifactTooLarge, is_sha256
from creep.domain.errors import ValidationError

#: Bytes kept from the start of each upload to read an image header from.
HEAD_BYTES = 256 * 1024
_CHUNK = 1024 * 1024


@dataclass(slots=True, frozen=True)
class StoredBlob:
    checksum: str
    size_bytes: int
    object_key: str
    #: The first HEAD_BYTES of the content (for sniffing the type and image size).
    head: bytes
    #: False when identical content was already stored (deduplicated).
    created: bool


@dataclass(slots=True, frozen=True)
class BlobFile:
    checksum: str
    path: Path
    mtime: float
    #: The file's inode when listed: a write since then (same content) has another one.
    inode: int = 0


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValidationError.single("artifact_dir", f"{self.root} is not a directory")
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        #: Where reconcile moves a file it is about to delete or set aside, to check it first.
        self.holding = self.root / "holding"

    @staticmethod
    def object_key(checksum: str) -> str:
        return f"sha256/{checksum[:2]}/{checksum}"

    def path(self, checksum: str) -> Path:
        if not is_sha256(checksum):
            raise ValidationError.single("checksum", "must be 64 lowercase hex digits (sha256)")
        return self.root / self.object_key(checksum)

    def exists(self, checksum: str) -> bool:
        return self.path(checksum).is_file()

    def open(self, checksum: str) -> BinaryIO:
        return self.path(checksum).open("rb")

    # -- writing -------------------------------------------------------------------------------

    def write(self, source: BinaryIO | Iterable[bytes] | bytes, max_bytes: int) -> StoredBlob:
        """Store content read from `source`; raises ArtifactTooLarge past max_bytes (and keeps
        nothing of it)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        temp = self.tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        head = bytearray()
        try:
            with temp.open("wb") as out:
                for chunk in _chunks(source):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ArtifactTooLarge(max_bytes)
                    digest.update(chunk)
                    if len(head) < HEAD_BYTES:
                        head += chunk[: HEAD_BYTES - len(head)]
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            checksum = digest.hexdigest()
            final = self.path(checksum)
            created = not final.is_file()
            final.parent.mkdir(parents=True, exist_ok=True)
            # Always these bytes, also over equal content: a damaged file there (even of the
            # right size) is replaced, and reconcile sees a new file (inode, mtime) rather than
            # an old orphan it may delete before this upload's row is written. Atomic; a
            # concurrent writer of the same content replaces it with equal bytes.
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredBlob(checksum, size, self.object_key(checksum), bytes(head), created)

    # -- scanning and repair (reconcile) -------------------------------------------------------

    def files(self) -> Iterator[BlobFile]:
        """Every stored object, named by the checksum it claims to have."""
        if not self.objects.is_dir():
            return
        for folder in sorted(self.objects.iterdir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    st = path.stat()
                    yield BlobFile(path.name, path, st.st_mtime, st.st_ino)

    def temp_files(self) -> Iterator[BlobFile]:
        if self.tmp.is_dir():
            for path in sorted(self.tmp.iterdir()):
                if path.is_file():
                    yield BlobFile(path.name, path, path.stat().st_mtime)

    @staticmethod
    def hash_file(path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def misplaced(self, blob: BlobFile) -> bool:
        """A file whose name is not a checksum or that sits in the wrong folder."""
        return not is_sha256(blob.checksum) or blob.path.parent.name != blob.checksum[:2]

    def quarantine(self, path: Path) -> Path:
        """Move a bad file aside (kept for inspection, never served)."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{path.name}.{uuid.uuid4().hex[:8]}"
        shutil.move(str(path), target)
        return target

    def hold(self, blob: BlobFile) -> Path | None:
        """Move a listed object out of the way (nothing serves it from there) and return where
        it went; None, with the file left in place, when it is gone or is no longer the file
        that was listed (an upload wrote it again since: a new inode)."""
        self.holding.mkdir(parents=True, exist_ok=True)
        held = self.holding / f"{blob.path.name}.{uuid.uuid4().hex[:8]}"
        try:
            os.replace(blob.path, held)
        except FileNotFoundError:
            return None
        if held.stat().st_ino != blob.inode:
            os.replace(held, blob.path)  # an upload's bytes: put them back
            return None
        return held

    def release(self, held: Path, checksum: str) -> None:
        """Put a held file back where `checksum` lives (its bytes hash to it)."""
        final = self.path(checksum)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(held, final)

    def held_files(self) -> Iterator[Path]:
        """Files a reconcile run moved aside and did not finish with (it stopped)."""
        if self.holding.is_dir():
            yield from (p for p in sorted(self.holding.iterdir()) if p.is_file())

    def adopt(self, path: Path, checksum: str) -> bool:
        """Move a file whose content hashes to `checksum` to where that checksum lives;
        False (and the file left alone) when that place is already taken."""
        final = self.path(checksum)
        if final.is_file():
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, final)
        return True


def _chunks(source: BinaryIO | Iterable[bytes] | bytes) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        for start in range(0, len(data), _CHUNK):
            yield data[start:start + _CHUNK]
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(_CHUNK):
            yield chunk
        return
    yield from source


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
