// The audit log (admin keys): who did what to which resource, newest first.
import { fields, h, json, replace, time } from "../dom.js";
import { filterForm, pagedList, pick } from "../ui.js";

// The API's enums (domain/audit.py): a value outside them is a 422, so they are choices.
const RESOURCE_TYPES = [
  "user", "role", "instance", "scheduledTask", "tenant", "apiKey", "task", "batch", "artifact",
  "asset", "lease", "assetEvent", "ledgerEntry", "banPolicy", "worker",
];
const ACTIONS = [
  "created", "updated", "deleted", "read", "enabled", "disabled", "bypassed", "forcePush",
  "login", "logout", "granted", "revoked", "cancelled", "retried", "restored", "triggered",
  "banned", "unbanned", "archived", "released", "reported", "uploaded", "claimed", "completed",
  "failed", "logLevelChanged",
];

export async function render(main, ctx) {
  const filters = [
    { name: "resource_type", label: "Resource type", options: RESOURCE_TYPES },
    { name: "action", label: "Action", options: ACTIONS },
    { name: "resource_id", label: "Resource id", size: 20 },
    { name: "tenant_id", label: "Tenant" },
  ];
  replace(main, h("h1", null, "Audit log"), filterForm(ctx, filters), pagedList(ctx, {
    path: "/audit", query: pick(ctx.params, filters.map((f) => f.name)), live: false,
    empty: "No audit events match.",
    columns: [
      { label: "When", get: (a) => time(a.created_at) },
      { label: "Action", get: (a) => a.action },
      { label: "Resource", get: (a) => `${a.resource_type} ${a.resource && a.resource.identifier ? a.resource.identifier : ""}` },
      { label: "By", get: (a) => (a.user ? a.user.username || a.user.uid : "") },
      { label: "Tenant", get: (a) => a.tenant_id || "" },
      { label: "Request", get: (a) => fields([["method", a.request_method], ["ip", a.client_ip], ["id", a.request_id]]) },
      { label: "Change", get: (a) => (a.diff_object && Object.keys(a.diff_object).length
        ? h("details", null, h("summary", null, "diff"), json(a.diff_object)) : "") },
    ],
  }));
}
