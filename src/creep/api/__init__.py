"""The REST API v1 (FastAPI). See README.md in this folder for how to extend it."""

from creep.api.app import create_app
from creep.api.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "create_app", "load_settings"]
