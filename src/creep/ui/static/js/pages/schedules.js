// Schedules: the list; one schedule with its executions; Trigger / Enable / Disable.
import { api } from "../api.js";
import { badge, duration, fields, h, json, link, replace, section, time } from "../dom.js";
import { actionButton, actionNotes, filterForm, latest, pagedList, pick } from "../ui.js";
import { taskLink, tenantFilter } from "./common.js";

const scheduleLink = (s) => link(`#/schedules/${encodeURIComponent(s.uid)}`, s.name);
const when = (s) => s.cron_expr ? `cron ${s.cron_expr} (${s.timezone})`
  : s.interval ? ["every ", duration(s.interval * 1000)] : "once";

export async function render(main, ctx) {
  const filters = [
    { name: "enabled", label: "Enabled", options: ["true", "false"] },
    { name: "type", label: "Type" },
    ...tenantFilter(ctx),
  ];
  replace(main, h("h1", null, "Schedules"), filterForm(ctx, filters), pagedList(ctx, {
    path: "/schedules", query: pick(ctx.params, filters.map((f) => f.name)), limit: 1000,
    paged: false, empty: "No schedules.",
    columns: [
      { label: "Name", get: scheduleLink },
      { label: "Type", get: (s) => s.type },
      { label: "Tenant", get: (s) => s.tenant_id },
      { label: "When", get: when },
      { label: "Enabled", get: (s) => badge(s.enabled ? "enabled" : "disabled") },
      { label: "Next run", get: (s) => time(s.next_run) },
      { label: "Runs", get: (s) => `${s.success_executions} ok · ${s.failure_executions} failed / ${s.total_executions}` },
      { label: "Last run", get: (s) => time(s.last_executed_at) },
    ],
  }));
}

export async function renderDetail(main, ctx, uid) {
  const id = encodeURIComponent(uid);
  const head = h("div");
  const notes = actionNotes();
  const fresh = latest();
  const load = async () => {
    const mine = fresh();
    const s = await api(`/schedules/${id}`, { signal: ctx.signal });
    if (!mine()) return;
    const canWrite = !ctx.me.read_only;
    // PATCH needs the version it changes (If-Match): a stale page gets a 412 problem.
    const setEnabled = (enabled) => api(`/schedules/${id}`, {
      method: "PATCH", body: { enabled }, headers: { "If-Match": `"${s.version}"` } });
    replace(head,
      h("h1", null, "Schedule ", h("code", null, s.name), " ",
        badge(s.enabled ? "enabled" : "disabled")),
      h("div", { class: "actions" }, canWrite ? [
        actionButton("Trigger now", () => api(`/schedules/${id}/trigger`, { method: "POST" }), load, { notes }),
        s.enabled ? actionButton("Disable", () => setEnabled(false), load, { danger: true, notes })
          : actionButton("Enable", () => setEnabled(true), load, { notes }),
      ] : null),
      h("div", { class: "card" }, fields([
        ["Type", s.type], ["Tenant", s.tenant_id], ["When", when(s)],
        ["Description", s.description], ["Next run", time(s.next_run)],
        ["Priority", String(s.priority)], ["Max concurrent", String(s.max_concurrent)],
        ["Max retries", String(s.max_retries)], ["Misfire policy", s.misfire_policy],
        ["Runs", `${s.success_executions} ok · ${s.failure_executions} failed / ${s.total_executions}`],
        ["Consecutive failures", String(s.consecutive_failures)],
        ["Last failure", s.last_failure_error], ["Version", String(s.version)],
      ]), h("h3", null, "Task data"), json(s.data)));
  };
  replace(main, head, notes, section("Executions", pagedList(ctx, {
    path: `/schedules/${id}/executions`, empty: "No executions yet.",
    columns: [
      { label: "Scheduled", get: (e) => time(e.scheduled_at) },
      { label: "State", get: (e) => badge(e.state) },
      { label: "Trigger", get: (e) => e.trigger_type },
      { label: "Task", get: (e) => taskLink(e.task_id) },
      { label: "Started", get: (e) => time(e.started_at) },
      { label: "Duration", get: (e) => duration(e.duration_ms) },
      { label: "Error", get: (e) => e.error_message || "" },
    ],
  })));
  await load();
  ctx.every(load, 5000, head, { later: true });
}
