"""The REST API v1 (FastAPI). See README.md in this folder for how to extend it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creep.api.app import create_app
    from creep.api.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "create_app", "load_settings"]

# Imported on first use (PEP 562): every `creep` command imports this package, and FastAPI
# alone costs about a second of start-up that only `creep server` needs.
_LAZY = {"create_app": "creep.api.app", "Settings": "creep.api.settings",
         "SettingsError": "creep.api.settings", "load_settings": "creep.api.settings"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'creep.api' has no attribute {name!r}")
