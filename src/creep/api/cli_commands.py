"""`creep server` and `creep keys create`, registered on the main CLI."""

from __future__ import annotations

from typing import Annotated

import typer

keys_app = typer.Typer(help="API keys (works on the database directly).", no_args_is_help=True)


def server(
    host: Annotated[str | None, typer.Option(help="Interface to bind [CREEP_HOST, 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [CREEP_PORT, 8000]")] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="sqlite:///PATH or postgresql://... [CREEP_DATABASE_URL]"),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn processes [CREEP_WORKERS, 1]")] = None,
    log_level: Annotated[str | None, typer.Option(help="[CREEP_LOG_LEVEL, INFO]")] = None,
) -> None:
    """Serve the REST API (all CREEP_* settings apply; flags win)."""
    from creep.api.server import check, prepare_database, serve

    settings = check(host=host, port=port, database_url=database_url, workers=workers,
                     log_level=log_level)
    prepare_database(settings)
    serve(settings)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name for the key (shown in the audit log).")],
    admin: Annotated[bool, typer.Option("--admin", help="An admin key (all tenants).")] = False,
    tenant: Annotated[str | None, typer.Option(help="The tenant of a tenant key.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only")] = False,
    database_url: Annotated[
        str | None, typer.Option("--database-url", envvar="CREEP_DATABASE_URL")
    ] = None,
) -> None:
    """Create an API key and print it once (it is stored only as a hash)."""
    from datetime import UTC, datetime

    from creep.domain.errors import CreepError
    from creep.domain.tenancy import ApiKey, PrincipalType, Role, hash_key, new_key_secret
    from creep.ports_api import ApiStore
    from creep.storage import open_store

    if admin == (tenant is not None):
        typer.echo("error: give exactly one of --admin or --tenant TENANT", err=True)
        raise typer.Exit(2)
    if not name.strip():
        typer.echo("error: --name must not be empty", err=True)
        raise typer.Exit(2)
    import uuid
    from typing import cast

    try:
        store = cast(ApiStore, open_store(database_url, migrate=True))
    except CreepError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        if tenant is not None:
            store.tenant_get(tenant)
        secret = new_key_secret()
        key = ApiKey(
            key_id=str(uuid.uuid4()), name=name, role=Role.ADMIN if admin else Role.TENANT,
            tenant_id=tenant, read_only=read_only, principal_type=PrincipalType.USER,
            key_hint=secret[:8], created_at=datetime.now(UTC), revoked_at=None,
        )
        store.key_create(key, hash_key(secret))
    except CreepError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        store.close()
    typer.echo(f"key_id: {key.key_id}", err=True)
    typer.echo("the key (shown once; store it now):", err=True)
    typer.echo(secret)


def register_api_commands(app: typer.Typer) -> None:
    app.command("server")(server)
    app.add_typer(keys_app, name="keys")
