// Leases of pooled assets, by status, task or asset: the newest first, in pages.
import { h, replace } from "../dom.js";
import { filterForm, pagedList, pick } from "../ui.js";
import { LEASE_COLUMNS, tenantFilter } from "./common.js";

export async function render(main, ctx) {
  const filters = [
    { name: "status", label: "Status", options: ["ACTIVE", "RELEASED", "EXPIRED", "REVOKED"] },
    { name: "task_id", label: "Task", size: 20 },
    { name: "asset_id", label: "Asset" },
    ...tenantFilter(ctx),
  ];
  replace(main, h("h1", null, "Leases"), filterForm(ctx, filters), pagedList(ctx, {
    path: "/leases", query: { ...pick(ctx.params, filters.map((f) => f.name)), order: "newest" },
    columns: LEASE_COLUMNS, empty: "No leases match.",
  }));
}
