// Column definitions the pages share.
import { badge, h, link, time } from "../dom.js";

export const TASK_STATUSES = ["PENDING", "QUEUED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED",
  "TIMEOUT", "DEAD_LETTER"];

// Whole ids: UUIDv7 prefixes are timestamps, so a shortened id would not tell tasks apart.
const idText = (id) => h("code", { class: "id" }, String(id));

export const taskLink = (id) => (id ? link(`#/tasks/${encodeURIComponent(id)}`, idText(id)) : "");
export const assetLink = (id) => (id ? link(`#/assets/${encodeURIComponent(id)}`, idText(id)) : "");
export const batchLink = (id) => (id ? link(`#/batches/${encodeURIComponent(id)}`, idText(id)) : "");

export const tags = (list) => (list && list.length
  ? h("span", { class: "tags" }, list.map((t) => h("span", { class: "tag" }, t))) : "");

export const TASK_COLUMNS = [
  { label: "Task", get: (t) => taskLink(t.task_id) },
  { label: "Type", get: (t) => t.task_type },
  { label: "Status", get: (t) => badge(t.status) },
  { label: "Tenant", get: (t) => t.tenant_id },
  { label: "Priority", get: (t) => String(t.priority) },
  { label: "Tags", get: (t) => tags(t.tags) },
  { label: "Progress", get: (t) => `${t.progress}%` },
  { label: "Created", get: (t) => time(t.created_at) },
  { label: "Updated", get: (t) => time(t.updated_at) },
];

export const LEASE_COLUMNS = [
  { label: "Lease", get: (l) => idText(l.lease_id) },
  { label: "Status", get: (l) => badge(l.status) },
  { label: "Task", get: (l) => taskLink(l.task_id) },
  { label: "Asset", get: (l) => assetLink(l.asset_id) },
  { label: "Cost", get: (l) => (l.cost === null ? "" : `${l.cost} ${l.currency || ""}`) },
  { label: "Acquired", get: (l) => time(l.acquired_at) },
  { label: "Expires", get: (l) => time(l.expires_at) },
  { label: "Released", get: (l) => time(l.released_at) },
];

export const LEDGER_COLUMNS = [
  { label: "When", get: (e) => time(e.occurred_at) },
  { label: "Type", get: (e) => badge(e.entry_type) },
  { label: "Amount", get: (e) => `${e.amount} ${e.currency}` },
  { label: "Tenant", get: (e) => e.tenant_id },
  { label: "Project", get: (e) => e.project_id || "" },
  { label: "Task", get: (e) => taskLink(e.task_id) },
  { label: "Asset", get: (e) => assetLink(e.asset_id) },
  { label: "Description", get: (e) => e.description || "" },
];

export function tenantFilter(ctx) {
  return ctx.me.role === "admin" ? [{ name: "tenant_id", label: "Tenant" }] : [];
}
