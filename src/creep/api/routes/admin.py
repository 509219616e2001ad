"""Runtime operations for admin keys: the log level of this API process."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from creep.api.audit import audited
from creep.api.auth import Admin, AdminWriter
from creep.api.responses import json_response
from creep.api.schemas import LogLevelIn, LogLevelOut
from creep.api.services import Services, services
from creep.domain.audit import AuditAction, ResourceType

router = APIRouter(prefix="/admin", tags=["operations"])
Svc = Annotated[Services, Depends(services)]


def _level(logger: str) -> str:
    return logging.getLevelName(logging.getLogger(logger or None).getEffectiveLevel())


@router.get("/log-level", response_model=LogLevelOut)
def get_log_level(principal: Admin, logger: str = "") -> Any:
    return json_response({"logger": logger, "level": _level(logger)})


@router.put("/log-level", response_model=LogLevelOut)
def set_log_level(body: LogLevelIn, request: Request, principal: AdminWriter, svc: Svc) -> Any:
    """Change a logger's level in this process now (not persisted; other nodes unchanged)."""
    old = {"logger": body.logger, "level": _level(body.logger)}
    new = {"logger": body.logger, "level": body.level}
    with audited(request, principal, AuditAction.LOG_LEVEL_CHANGED, ResourceType.INSTANCE,
                 body.logger or "root", old=old, new=new, tenant_id=None):
        svc.store.commit_pending()
    logging.getLogger(body.logger or None).setLevel(body.level)
    return json_response(new)
