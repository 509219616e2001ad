"""Storage backends behind one Store interface, chosen from the database URL."""

from __future__ import annotations

import os

from creep.ports import Store

DEFAULT_DATABASE_URL = "sqlite:///./creep.db"


def database_url(explicit: str | None = None) -> str:
    """The URL to use: an explicit argument, else CREEP_DATABASE_URL, else the embedded default."""
    return explicit or os.environ.get("CREEP_DATABASE_URL") or DEFAULT_DATABASE_URL


def open_store(url: str | None = None, *, migrate: bool = False) -> Store:
    """Open the backend the URL names; with migrate=True bring its schema up to date."""
    from creep.domain.errors import ValidationError

    resolved = database_url(url)
    store: Store
    if resolved.startswith("sqlite:"):
        from creep.storage.sqlite_store import SqliteStore

        store = SqliteStore(resolved)
    elif resolved.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        from creep.storage.postgres_store import PostgresStore

        store = PostgresStore(resolved)
    else:
        raise ValidationError.single(
            "database_url",
            f"unsupported scheme in {resolved!r}: use sqlite:///PATH or postgresql://HOST/DB",
        )
    if migrate:
        store.migrate()
    return store


def require_current_schema(store: Store) -> None:
    """Refuse a schema this creep was not written for (SchemaOutOfDate: older, run `creep
    migrate`; SchemaTooNew: a newer creep migrated it). One query, for a process that does
    not migrate, before its first use of the store; it is not checked again after."""
    from creep.storage.common import schema_mismatch

    problem = schema_mismatch(store.schema_version(), store.dialect)
    if problem is not None:
        raise problem
