// Overview: tasks by status, queue depth and recent failures (the ten newest-created tasks of
// each failed status, latest to fail first: tasks have no index by finish time), refreshed
// every 3 s.
import { api } from "../api.js";
import { badge, h, hashFor, replace, section, table, time } from "../dom.js";
import { TASK_STATUSES, taskLink } from "./common.js";

const FAILED = ["FAILED", "DEAD_LETTER", "TIMEOUT"];

export async function render(main, ctx) {
  const counts = h("div", { class: "counts" }, h("p", { class: "muted" }, "Loading…"));
  const failures = h("div", null, h("p", { class: "muted" }, "Loading…"));
  replace(main, h("h1", null, "Overview"), section("Tasks by status", counts),
    section("Recent failures", failures));

  ctx.every(async () => {
    const stats = await api("/stats/tasks", { signal: ctx.signal });
    replace(counts,
      h("a", { class: "count total", href: hashFor("tasks"), id: "count-total" },
        h("span", { class: "n" }, String(stats.total)), h("span", null, "all tasks")),
      h("a", { class: "count queue", href: hashFor("tasks", { status: "QUEUED" }), id: "queue-depth" },
        h("span", { class: "n" }, String(stats.queue_depth)), h("span", null, "queue depth")),
      TASK_STATUSES.map((s) => h("a", { class: `count s-${s.toLowerCase()}`, id: `count-${s}`,
        href: hashFor("tasks", { status: s }) },
      h("span", { class: "n" }, String(stats.by_status[s] ?? 0)), badge(s))));
  }, 3000, counts);

  ctx.every(async () => {
    const pages = await Promise.all(FAILED.map((status) =>
      api("/tasks", { query: { status, limit: 10 }, signal: ctx.signal })));
    // Latest to fail first: by finished_at (updated_at moves with any later change, e.g. a
    // PATCH of tags), compared as instants.
    const failedAt = (t) => Date.parse(t.finished_at || t.updated_at);
    const rows = pages.flatMap((p) => p.items)
      .sort((a, b) => failedAt(b) - failedAt(a)).slice(0, 10);
    replace(failures, table([
      { label: "Task", get: (t) => taskLink(t.task_id) },
      { label: "Type", get: (t) => t.task_type },
      { label: "Status", get: (t) => badge(t.status) },
      { label: "Tenant", get: (t) => t.tenant_id },
      { label: "Error", get: (t) => t.last_error || t.result_message || "" },
      { label: "When", get: (t) => time(t.finished_at || t.updated_at) },
    ], rows, "No failed tasks."));
  }, 3000, failures);
}
