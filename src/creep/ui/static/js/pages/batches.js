// Batches: the list and one batch (counts, progress, its tasks; Cancel).
import { api } from "../api.js";
import { badge, fields, h, json, progress, replace, section, time } from "../dom.js";
import { actionButton, actionNotes, latest, pagedList } from "../ui.js";
import { batchLink, TASK_COLUMNS } from "./common.js";

const counts = (b) => `${b.completed_count} done · ${b.failed_count} failed · ${b.cancelled_count} cancelled · ${b.running_count} running / ${b.total_count}`;

export async function render(main, ctx) {
  replace(main, h("h1", null, "Batches"), pagedList(ctx, {
    path: "/batches", empty: "No batches yet.",
    columns: [
      { label: "Batch", get: (b) => batchLink(b.batch_id) },
      { label: "Title", get: (b) => b.title || "" },
      { label: "Status", get: (b) => badge(b.status) },
      { label: "Tenant", get: (b) => b.tenant_id },
      { label: "Tasks", get: (b) => counts(b) },
      { label: "Progress", get: (b) => progress(b.progress) },
      { label: "Created", get: (b) => time(b.created_at) },
    ],
  }));
}

export async function renderDetail(main, ctx, batchId) {
  const id = encodeURIComponent(batchId);
  const head = h("div");
  const notes = actionNotes();
  const fresh = latest();
  let tenantId = null;
  const load = async () => {
    const mine = fresh();
    const b = await api(`/batches/${id}`, { signal: ctx.signal });
    if (!mine()) return;
    tenantId = b.tenant_id;
    replace(head,
      h("h1", null, "Batch ", h("code", null, b.batch_id), " ", badge(b.status)),
      h("div", { class: "actions" }, !ctx.me.read_only && !["completed", "cancelled"].includes(b.status)
        ? actionButton("Cancel batch", () => api(`/batches/${id}/cancel`, { method: "POST" }), load,
          { danger: true, notes, confirmText: "Cancel every open task of this batch?" }) : null),
      h("div", { class: "card" }, progress(b.progress), fields([
        ["Title", b.title], ["Tenant", b.tenant_id], ["Tasks", counts(b)],
        ["Created", time(b.created_at)], ["Updated", time(b.updated_at)],
        ["Cancelled", time(b.cancelled_at)],
      ]), b.metadata && Object.keys(b.metadata).length ? json(b.metadata) : null));
  };
  // The batch's tasks are its tenant's: another tenant's task may name the same batch_id
  // (a free field), and an admin key lists every tenant's.
  await load();
  replace(main, head, notes, section("Tasks", pagedList(ctx, {
    path: "/tasks", query: { batch_id: batchId, tenant_id: tenantId }, columns: TASK_COLUMNS,
    empty: "No tasks.",
  })));
  ctx.every(load, 3000, head, { later: true });
}
