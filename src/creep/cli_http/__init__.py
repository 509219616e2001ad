"""Resource commands over the REST API (built on creep.client), registered on `creep`."""

from __future__ import annotations

import typer

from creep.cli_http.admin import audit_app, export_app, keys_issue, keys_revoke, tenants_app
from creep.cli_http.assets import asset_app, lease_app
from creep.cli_http.ban_policies import ban_policy_app
from creep.cli_http.common import api_errors
from creep.cli_http.ledger import ledger_app  # also adds `export ledger`
from creep.cli_http.schedules import schedule_app
from creep.cli_http.tasks import batch_app, task_app


def register_http_commands(app: typer.Typer, keys_app: typer.Typer) -> None:
    app.add_typer(task_app, name="task")
    app.add_typer(batch_app, name="batch")
    app.add_typer(tenants_app, name="tenants")
    asset_app.add_typer(ban_policy_app, name="ban-policy")
    app.add_typer(asset_app, name="asset")
    app.add_typer(lease_app, name="lease")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(audit_app, name="audit")
    app.add_typer(export_app, name="export")
    keys_app.command("issue")(api_errors(keys_issue))
    keys_app.command("revoke")(api_errors(keys_revoke))
