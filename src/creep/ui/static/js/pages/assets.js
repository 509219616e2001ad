// Assets: filters and status; one asset with its events and leases (newest first, paged);
// Ban / Unban.
import { api } from "../api.js";
import { badge, duration, fields, h, json, replace, section, time } from "../dom.js";
import { actionButton, actionNotes, filterForm, latest, pagedList, pick } from "../ui.js";
import { assetLink, LEASE_COLUMNS, taskLink, tenantFilter } from "./common.js";

const STATUSES = ["NEW", "READY", "IN_USE", "COOLING", "BANNED", "SOLD", "ARCHIVED"];

export async function render(main, ctx) {
  const filters = [
    { name: "status", label: "Status", options: STATUSES },
    { name: "sku_category", label: "SKU category" },
    { name: "sku_code", label: "SKU code" },
    { name: "project_id", label: "Project" },
    ...tenantFilter(ctx),
  ];
  replace(main, h("h1", null, "Assets"), filterForm(ctx, filters), pagedList(ctx, {
    path: "/assets", query: pick(ctx.params, filters.map((f) => f.name)), empty: "No assets match.",
    columns: [
      { label: "Asset", get: (a) => assetLink(a.asset_id) },
      { label: "Status", get: (a) => badge(a.status) },
      { label: "SKU", get: (a) => `${a.sku_category} / ${a.sku_code}` },
      { label: "Tenant", get: (a) => a.tenant_id },
      { label: "In use", get: (a) => `${a.current_concurrency} / ${a.max_concurrency}` },
      { label: "Health", get: (a) => String(a.health_score) },
      { label: "Cost/lease", get: (a) => `${a.cost_per_lease} ${a.currency}` },
      { label: "Updated", get: (a) => time(a.updated_at) },
    ],
  }));
}

export async function renderDetail(main, ctx, assetId) {
  const id = encodeURIComponent(assetId);
  const head = h("div");
  const notes = actionNotes();
  const fresh = latest();
  const load = async () => {
    const mine = fresh();
    const a = await api(`/assets/${id}`, { signal: ctx.signal });
    if (!mine()) return;
    const canWrite = !ctx.me.read_only;
    replace(head,
      h("h1", null, "Asset ", h("code", null, a.asset_id), " ", badge(a.status)),
      h("div", { class: "actions" },
        canWrite && !["BANNED", "SOLD", "ARCHIVED"].includes(a.status)
          ? actionButton("Ban", () => api(`/assets/${id}/ban`, { method: "POST", body: { reason: "banned from the dashboard" } }),
            load, { danger: true, notes, confirmText: "Ban this asset? Its active leases are revoked." }) : null,
        canWrite && a.status === "BANNED"
          ? actionButton("Unban", () => api(`/assets/${id}/unban`, { method: "POST", body: {} }), load, { notes }) : null),
      h("div", { class: "card" }, fields([
        ["SKU", `${a.sku_category} / ${a.sku_code}`], ["Tenant", a.tenant_id],
        ["Project", a.project_id], ["Env", a.env],
        ["In use", `${a.current_concurrency} / ${a.max_concurrency}`],
        ["Health", String(a.health_score)], ["Cooldown", duration(a.cooldown_seconds * 1000)],
        ["Cooling until", time(a.cooldown_until)],
        ["Cost per lease", `${a.cost_per_lease} ${a.currency}`], ["Version", String(a.version)],
        ["Created", time(a.created_at)], ["Updated", time(a.updated_at)],
      ]), h("h3", null, "Attributes"), json(a.attributes)));
  };
  replace(main, head, notes);
  await load();
  ctx.every(load, 5000, head, { later: true });
  // The newest first, each list paged with a cursor of its own.
  main.append(section("Events", pagedList(ctx, {
    path: "/events", query: { asset_id: assetId, order: "newest" }, cursorParam: "events_cursor",
    empty: "No events.",
    columns: [
      { label: "When", get: (e) => time(e.occurred_at) },
      { label: "Event", get: (e) => e.event_type },
      { label: "Severity", get: (e) => e.severity || "" },
      { label: "Status", get: (e) => (e.new_status ? [badge(e.old_status), " → ", badge(e.new_status)] : "") },
      { label: "Task", get: (e) => taskLink(e.task_id) },
      { label: "Message", get: (e) => e.message || e.error_message || "" },
    ],
  })), section("Leases", pagedList(ctx, {
    path: "/leases", query: { asset_id: assetId, order: "newest" }, cursorParam: "leases_cursor",
    columns: LEASE_COLUMNS, empty: "No leases.",
  })));
}
