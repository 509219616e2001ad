"""What every route needs, built once per app: settings, the store, the clock, caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fastapi import Request

from creep.api.settings import Settings
from creep.domain.clock import Clock, SystemClock
from creep.domain.task_spec import Limits
from creep.ports_api import ApiStore


@dataclass(slots=True)
class Services:
    settings: Settings
    store: ApiStore
    clock: Clock = field(default_factory=SystemClock)
    limits: Limits = field(default_factory=Limits)


def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


async def services(request: Request) -> Services:
    """FastAPI dependency: the app's Services (async: a plain def would cost a thread hop)."""
    return cast(Services, request.app.state.services)
