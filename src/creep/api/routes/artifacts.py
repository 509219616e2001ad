"""Task artifacts (seed 004's task_assets): upload, list per task, read, download."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Coroutine, Iterator
from email.utils import formatdate
from typing import Annotated, Any, BinaryIO
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from creep.api.audit import audited
from creep.api.auth import Authenticated, Writer
from creep.api.problems import Problem, problem_response
from creep.api.responses import json_response
from creep.api.schemas import UuidParam
from creep.api.schemas_workers import ArtifactKindName, ArtifactOut, ArtifactPage, artifact_json
from creep.api.services import Services, services
from creep.api.tenancy import read_scope
from creep.domain.artifacts import Artifact, ArtifactTooLarge
from creep.domain.audit import AuditAction, ResourceType
from creep.domain.errors import ValidationError
from creep.domain.text import may_hold_wide_int
from creep.engine.artifacts import ArtifactService
from creep.storage.blob_store import BlobStore

Svc = Annotated[Services, Depends(services)]
_lock = threading.Lock()
#: Room for the multipart envelope and the other form fields around the file itself.
_ENVELOPE = 256 * 1024


def artifact_service(request: Request) -> ArtifactService:
    """FastAPI dependency: the app's ArtifactService (made on first use)."""
    state = request.app.state
    svc: Services = state.services
    with _lock:
        service: ArtifactService | None = getattr(state, "artifacts", None)
        if service is None or service.store is not svc.store:
            service = ArtifactService(
                svc.store, BlobStore(svc.settings.artifact_dir), svc.clock,
                svc.settings.artifact_max_bytes,
            )
            state.artifacts = service
    return service


Artifacts = Annotated[ArtifactService, Depends(artifact_service)]


def _metadata(text: str) -> Any:
    """The metadata form field's JSON, read as a request body is: an integer beyond 64 bits
    (which orjson reads as a float) or NaN, Infinity and 1e400 (which orjson refuses) are
    read by the standard library, and the domain's check then names them."""
    if not may_hold_wide_int(text.encode("utf-8", "surrogatepass")):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep
        raise ValidationError.single("metadata", "must be a JSON object") from None


def _too_large(limit: int) -> Problem:
    return Problem(413, "Payload too large", f"an artifact may be at most {limit} bytes",
                   type_="payload-too-large", limit=limit)


class _BodyTooLarge(HTTPException):
    """Raised from the body stream (FastAPI passes HTTPException through its form parsing)."""


class _LimitedBodyRoute(APIRoute):
    """Stops reading a request body once it exceeds the artifact limit plus the multipart
    envelope: FastAPI parses (spools to disk) the whole multipart form before the route runs,
    so an upload without Content-Length (chunked) was read to its end before its 413."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Any]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Any:
            max_bytes = artifact_service(request).max_bytes
            receive, seen = request.receive, 0

            async def counted() -> Any:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > max_bytes + _ENVELOPE:
                        raise _BodyTooLarge(413)
                return message

            try:
                return await handler(Request(request.scope, counted))
            except _BodyTooLarge:
                raise _too_large(max_bytes) from None
            except RequestValidationError as exc:
                raise _named_file_errors(exc) from None

        return limited


def _named_file_errors(exc: RequestValidationError) -> RequestValidationError:
    """A `file` part sent without a file name (`filename=""`) is a plain text field to
    Starlette, which FastAPI refuses as "Value error, Expected UploadFile, received: <class
    'str'>": say what is wrong instead."""
    errors = [
        {**err, "msg": "must be a file upload with a file name"}
        if tuple(err.get("loc", ())) == ("body", "file") and err.get("type") == "value_error"
        else err
        for err in exc.errors()
    ]
    return RequestValidationError(errors, body=exc.body)


router = APIRouter(tags=["artifacts"], route_class=_LimitedBodyRoute)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): `*`, or any listed tag equal by weak comparison."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


class _Download(Response):
    """The bytes of a file the route opened (a file removed after that is still sent whole;
    Starlette's FileResponse opens its path only after the answer's headers are chosen, so a
    file removed in between was a 500). ETag is the sha256: If-None-Match with it is a 304.
    One `Range: bytes=` (with If-Range) is a 206; several ranges get the whole content. Range
    errors (400, 416) are problem documents like every other error."""

    chunk_size = 64 * 1024

    def __init__(self, file: BinaryIO, artifact: Artifact) -> None:
        self.file = file
        st = os.fstat(file.fileno())
        self.size = st.st_size
        self.etag = f'"{artifact.checksum}"'
        name = quote(artifact.file_name)
        disposition = (f'attachment; filename="{name}"' if name == artifact.file_name
                       else f"attachment; filename*=utf-8''{name}")
        super().__init__(media_type=artifact.mime_type, headers={
            "Content-Length": str(self.size), "ETag": self.etag, "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Content-Disposition": disposition, "X-Content-Type-Options": "nosniff",
        })

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._answer(scope)(scope, receive, send)
        finally:
            self.file.close()

    def _answer(self, scope: Scope) -> Response:
        request = Headers(scope=scope)
        if _etag_matches(request.get("if-none-match", ""), self.etag):
            return Response(status_code=304, headers={"ETag": self.etag})
        headers = MutableHeaders(raw=list(self.raw_headers))
        start, end, status = 0, self.size, 200
        asked, if_range = request.get("range"), request.get("if-range")
        if asked is not None and if_range in (None, self.etag, headers["last-modified"]):
            try:
                span = _byte_range(asked, self.size)
            except _RangeError as exc:
                return problem_response(exc.problem)
            if span is not None:
                (start, end), status = span, 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{self.size}"
                headers["Content-Length"] = str(end - start)
        if scope["method"] == "HEAD":
            return Response(status_code=status, headers=headers)
        return StreamingResponse(self._chunks(start, end), status, headers)

    def _chunks(self, start: int, end: int) -> Iterator[bytes]:
        self.file.seek(start)
        while start < end and (chunk := self.file.read(min(self.chunk_size, end - start))):
            start += len(chunk)
            yield chunk


class _RangeError(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


_RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII)


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """[start, end) of a `bytes=<first>-[<last>]` or `bytes=-<suffix>` Range; None for
    several ranges (answered whole, as RFC 9110 allows)."""
    unit, _, ranges = value.partition("=")
    parts = [p for p in ranges.split(",") if p.strip()]
    match = _RANGE.fullmatch(parts[0]) if len(parts) == 1 else None
    if unit.strip().lower() != "bytes" or not parts or (len(parts) == 1 and (
            match is None or match.groups() == ("", ""))):
        raise _RangeError(Problem(
            400, "Bad request", "the Range header is malformed (bytes=<first>-<last> expected)"))
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            raise _RangeError(Problem(400, "Bad request", "the Range ends before it starts"))
    else:  # the last <suffix> bytes; none at all is not satisfiable
        start, end = (size - min(int(last), size) if int(last) else size), size
    if start >= size:
        raise _RangeError(Problem(
            416, "Range not satisfiable", "the requested range is past the end of the content",
            headers={"Content-Range": f"bytes */{size}"}))
    return start, end


@router.post(
    "/tasks/{task_id}/artifacts", status_code=201, response_model=ArtifactOut,
    responses={404: {"description": "no such task (or not this tenant's)"},
               413: {"description": "the file is larger than the configured limit"},
               422: {"description": "validation failed; `errors` names each field"}},
)
def upload_artifact(
    task_id: UuidParam, request: Request, principal: Writer, artifacts: Artifacts,
    file: Annotated[UploadFile, File(description="the content")],
    kind: Annotated[ArtifactKindName, Form()],
    file_name: Annotated[str | None, Form(max_length=255)] = None,
    mime_type: Annotated[str | None, Form(max_length=255)] = None,
    metadata: Annotated[str | None, Form(max_length=70_000, description="a JSON object")] = None,
) -> Any:
    """Upload a file of a task (multipart/form-data). Content is stored once per sha256;
    images (PNG, JPEG, GIF) get width and height."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > artifacts.max_bytes + _ENVELOPE:
        raise _too_large(artifacts.max_bytes)
    meta = None if metadata is None else _metadata(metadata)
    name = file_name or file.filename or "upload"
    try:
        staged = artifacts.stage(
            task_id, file.file, kind=kind, file_name=name, tenant_id=read_scope(principal),
            mime_type=mime_type, metadata=meta,
        )
    except ArtifactTooLarge as exc:
        raise _too_large(exc.limit) from None
    with audited(request, principal, AuditAction.UPLOADED, ResourceType.ARTIFACT,
                 staged.artifact_id, new=artifact_json(staged), tenant_id=staged.tenant_id,
                 resource_data={"task_id": staged.task_id}):
        artifact = artifacts.store.artifact_create(staged)
    return json_response(artifact_json(artifact), 201,
                         {"Location": f"/v1/artifacts/{artifact.artifact_id}"})


@router.get(
    "/tasks/{task_id}/artifacts", response_model=ArtifactPage,
    responses={404: {"description": "no such task (or not this tenant's)"}},
)
def list_artifacts(
    task_id: UuidParam, principal: Authenticated, artifacts: Artifacts,
    kind: Annotated[ArtifactKindName | None, Query()] = None,
) -> Any:
    """A task's artifacts, oldest first."""
    items = artifacts.list_for_task(task_id, read_scope(principal), kind)
    return json_response({"items": [artifact_json(a) for a in items]})


@router.get(
    "/artifacts/{artifact_id}", response_model=ArtifactOut,
    responses={404: {"description": "no such artifact (or not this tenant's)"}},
)
def get_artifact(artifact_id: UuidParam, principal: Authenticated, artifacts: Artifacts) -> Any:
    return json_response(artifact_json(artifacts.get(artifact_id, read_scope(principal))))


@router.get(
    "/artifacts/{artifact_id}/content",
    response_class=FileResponse,
    responses={200: {"description": "the bytes, with the artifact's mime type",
                     "content": {"application/octet-stream": {}}},
               206: {"description": "the requested byte range (Range, If-Range)"},
               304: {"description": "If-None-Match names the ETag: unchanged"},
               404: {"description": "no such artifact, or its content is missing"},
               416: {"description": "the Range is past the end of the content"}},
)
def download_artifact(
    artifact_id: UuidParam, principal: Authenticated, artifacts: Artifacts
) -> Response:
    """The content, with its content type; ETag is the sha256 (If-None-Match: 304), and a
    Range (with If-Range) gets a 206."""
    artifact = artifacts.get(artifact_id, read_scope(principal))
    return _Download(artifacts.open_content(artifact), artifact)


@router.head(
    "/artifacts/{artifact_id}/content",
    response_class=Response,
    responses={200: {"description": "the download's headers (Content-Length, ETag, "
                                    "Content-Type, Content-Disposition), no content"},
               206: {"description": "the headers of the requested byte range"},
               304: {"description": "If-None-Match names the ETag: unchanged"},
               404: {"description": "no such artifact, or its content is missing"},
               416: {"description": "the Range is past the end of the content"}},
)
def download_artifact_headers(
    artifact_id: UuidParam, principal: Authenticated, artifacts: Artifacts
) -> Response:
    """The headers a download of the content would have, without the content."""
    return download_artifact(artifact_id, principal, artifacts)
