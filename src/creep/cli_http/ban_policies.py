"""`creep asset ban-policy ...`: auto-ban policies per sku_category over the REST API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from creep.cli_http.common import (
    ApiKey,
    ApiUrl,
    Json,
    api_errors,
    client,
    out,
    print_json,
    show,
    table,
    take,
)
from creep.client import BanPolicy

ban_policy_app = typer.Typer(
    help="Auto-ban policies: K failure events on one asset of a sku_category within W "
         "seconds ban it.", no_args_is_help=True)

Category = Annotated[str, typer.Argument(help="sku_category")]
Tenant = Annotated[str | None, typer.Option(
    help="The policy's tenant (required with an admin key; a tenant key's own if omitted).")]


def _row(p: BanPolicy) -> tuple[Any, ...]:
    return (p.tenant_id, p.sku_category, p.max_failures, p.window_seconds,
            ", ".join(p.failure_event_types) or "*_FAIL, TASK_TIMEOUT", p.updated_at)


@ban_policy_app.command("set")
@api_errors
def ban_policy_set(
    category: Category,
    max_failures: Annotated[int, typer.Option(
        help="Failure events on one asset that ban it (1-10000).")],
    window_seconds: Annotated[int, typer.Option(
        "--window-seconds", "--window", help="Within this many seconds (1-10^7).")],
    failure_types: Annotated[list[str] | None, typer.Option(
        "--failure-type", help="An event type that counts as a failure, repeatable (default: "
                               "any type ending in _FAIL, and TASK_TIMEOUT).")] = None,
    tenant: Tenant = None, api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Create or replace the policy of a sku_category. It applies from an asset's next
    failure: no asset is banned (or unbanned) by setting it."""
    with client(api_url, api_key) as c:
        policy = c.set_ban_policy(category, max_failures=max_failures,
                                  window_seconds=window_seconds,
                                  failure_event_types=failure_types or None, tenant_id=tenant)
    if json:
        print_json(policy)
    else:
        out.print(f"{policy.sku_category}: ban after {policy.max_failures} failures within "
                  f"{policy.window_seconds}s (tenant {policy.tenant_id})", highlight=False)


@ban_policy_app.command("show")
@api_errors
def ban_policy_show(category: Category, tenant: Tenant = None, api_url: ApiUrl = None,
                    api_key: ApiKey = None, json: Json = False) -> None:
    """The policy of a sku_category (exit 1 when there is none)."""
    with client(api_url, api_key) as c:
        policy = c.get_ban_policy(category, tenant_id=tenant)
    show(policy, json, f"ban policy {policy.sku_category}")


@ban_policy_app.command("list")
@api_errors
def ban_policy_list(
    tenant: Annotated[str | None, typer.Option(
        help="Only this tenant's (an admin key sees every tenant's).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows at most (pages are followed).")] = 100,
    api_url: ApiUrl = None, api_key: ApiKey = None, json: Json = False,
) -> None:
    """Policies by tenant and sku_category."""
    with client(api_url, api_key) as c:
        policies = take(c.iter_ban_policies(tenant_id=tenant, page_size=min(limit, 1000)),
                        limit)
    if json:
        print_json(policies)
    else:
        table(f"{len(policies)} ban policies", ("tenant", "category", "max failures",
                                                "window (s)", "failure types", "updated"),
              (_row(p) for p in policies))


@ban_policy_app.command("delete")
@api_errors
def ban_policy_delete(category: Category, tenant: Tenant = None, api_url: ApiUrl = None,
                      api_key: ApiKey = None) -> None:
    """Stop auto-banning assets of a sku_category (assets it banned stay BANNED)."""
    with client(api_url, api_key) as c:
        c.delete_ban_policy(category, tenant_id=tenant)
    out.print(f"deleted the ban policy of {category}", highlight=False)
