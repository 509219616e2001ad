// One task: its fields, progress, live events timeline (SSE), leases, ledger entries and
// artifacts; Cancel, Retry, Delete (a finished task, to the recycle bin) and Restore.
import { api, stream } from "../api.js";
import { badge, duration, fields, h, json, progress, replace, section, table, time } from "../dom.js";
import { actionButton, actionNotes, latest, pagedList, problemBox } from "../ui.js";
import { batchLink, LEASE_COLUMNS, LEDGER_COLUMNS, tags } from "./common.js";

const CANCELLABLE = ["PENDING", "QUEUED", "RUNNING"];
const RETRYABLE = ["DEAD_LETTER", "FAILED", "TIMEOUT", "CANCELLED"];
const FINISHED = ["SUCCESS", ...RETRYABLE];

export async function renderDetail(main, ctx, taskId) {
  const id = encodeURIComponent(taskId);
  const head = h("div");
  const notes = actionNotes();
  const events = h("ol", { class: "timeline", id: "events" });
  const eventsState = h("p", { class: "muted", id: "events-state" }, "Connecting…");
  const leases = h("div");
  const ledger = h("div");
  const artifacts = h("div");
  replace(main, head, notes,
    section("Events", eventsState, events),
    section("Leases", leases), section("Ledger entries", ledger), section("Artifacts", artifacts));

  const showTask = (t) => {
    const canWrite = !ctx.me.read_only;
    // A deleted task changes only once restored (the API refuses the rest).
    const deleted = t.deleted_at !== null;
    replace(head,
      h("h1", null, "Task ", h("code", null, t.task_id), " ", badge(t.status),
        deleted ? [" ", h("span", { class: "badge s-deleted", id: "deleted" }, "deleted")] : null),
      h("div", { class: "actions" },
        canWrite && !deleted && CANCELLABLE.includes(t.status) && !t.cancel_requested
          ? actionButton("Cancel", () => api(`/tasks/${id}/cancel`, { method: "POST", body: {} }),
            refresh, { danger: true, notes, confirmText: "Cancel this task?" }) : null,
        canWrite && !deleted && RETRYABLE.includes(t.status)
          ? actionButton("Retry", () => api(`/tasks/${id}/retry`, { method: "POST" }), refresh, { notes }) : null,
        canWrite && !deleted && FINISHED.includes(t.status)
          ? actionButton("Delete", () => api(`/tasks/${id}`, { method: "DELETE" }), refresh,
            { danger: true, notes, confirmText: "Delete this task? It stays in the recycle bin until restored." }) : null,
        canWrite && deleted
          ? actionButton("Restore", () => api(`/tasks/${id}/restore`, { method: "POST" }), refresh, { notes }) : null,
        t.cancel_requested && t.status === "RUNNING" ? h("span", { class: "muted" }, "cancel requested") : null),
      h("div", { class: "card" },
        progress(t.progress, t.progress_message),
        t.progress_message ? h("p", { class: "muted" }, t.progress_message) : null,
        fields([
          ["Type", t.task_type], ["Category", t.task_category], ["Tenant", t.tenant_id],
          ["Project", t.project_id], ["Env", t.env], ["Priority", String(t.priority)],
          ["Attempt", `${t.attempt} of ${t.max_attempts}`], ["Tags", tags(t.tags)],
          ["Batch", batchLink(t.batch_id)], ["Description", t.description],
          ["Idempotency key", t.idempotency_key], ["External ref", t.external_ref],
          ["Created", time(t.created_at)], ["Queued", time(t.queued_at)],
          ["Started", time(t.started_at)], ["Finished", time(t.finished_at)],
          ["Run after", time(t.run_after)], ["Claimed by", t.claimed_by],
          ["Result code", t.result_code], ["Result message", t.result_message],
          ["Last error", t.last_error], ["Timeout", duration(t.timeout_ms)],
          ["Deleted", time(t.deleted_at)],
        ]),
        h("div", { class: "payloads" },
          h("div", null, h("h3", null, "Input"), json(t.input_payload)),
          t.result_payload !== null ? h("div", null, h("h3", null, "Result"), json(t.result_payload)) : null)));
  };

  let following = false;
  const follow = () => {
    following = true;
    followEvents(ctx, id, events, eventsState, changed).finally(() => { following = false; });
  };
  // Status events arrive in bursts (the stream replays the task's history when it opens):
  // read the task once per burst, and not at all when its last event is the status drawn.
  // A burst may arrive a piece at a time (the server writes each event on its own), and a
  // piece of the replay can end on an older status: an event written no later than the
  // drawn task's updated_at (a change and its event share one timestamp) is already drawn
  // and reads nothing (one stamped out of its commit order waits for the timed read).
  let lastEvent = null;
  const changed = (e) => {
    if (drawnAt !== null && micros(e.created_at) <= drawnAt) return;
    const first = lastEvent === null;
    lastEvent = e;
    if (!first) return;
    queueMicrotask(() => {
      const last = lastEvent;
      lastEvent = null;
      if (last.to_status === lastStatus && last.attempt === lastAttempt) return;
      refresh().catch(() => {});
    });
  };
  let lastStatus = null;
  let lastAttempt = null;
  let lastVersion = null;
  let lastDeleted = null;
  let drawnAt = null; // the drawn task's updated_at, in microseconds
  const fresh = latest();
  const refresh = async () => {
    const mine = fresh();
    let t;
    try {
      t = await api(`/tasks/${id}`, { signal: ctx.signal });
    } catch (err) {
      lastVersion = null; // its problem replaces the task: draw the task again once it answers
      throw err;
    }
    if (!mine()) return; // an answer older than the one drawn
    // Redraw only on a change (a redraw loses a text selection).
    if (t.task_version !== lastVersion) showTask(t);
    lastVersion = t.task_version;
    // A retried (deleted, restored) task has events again: follow them once more.
    if (!following && lastStatus !== null
        && (t.status !== lastStatus || t.deleted_at !== lastDeleted)) follow();
    lastStatus = t.status;
    lastDeleted = t.deleted_at;
    lastAttempt = t.attempt;
    drawnAt = micros(t.updated_at);
  };
  await refresh();
  ctx.every(refresh, 3000, head, { later: true });
  // Paged, each with a cursor of its own: none is cut off after its first page.
  replace(leases, pagedList(ctx, {
    path: "/leases", query: { task_id: taskId, order: "newest" }, cursorParam: "leases_cursor",
    columns: LEASE_COLUMNS, empty: "No leases.",
  }));
  replace(ledger, pagedList(ctx, {
    path: "/ledger", query: { task_id: taskId }, cursorParam: "ledger_cursor",
    columns: LEDGER_COLUMNS, empty: "No ledger entries.",
  }));
  ctx.every(async () => {
    const page = await api(`/tasks/${id}/artifacts`, { signal: ctx.signal });
    replace(artifacts, table([
      { label: "Kind", get: (a) => a.kind },
      { label: "File", get: (a) => a.file_name || a.artifact_id },
      { label: "Type", get: (a) => a.mime_type || "" },
      { label: "Size", get: (a) => (a.size_bytes === null ? "" : `${a.size_bytes} B`) },
      { label: "Created", get: (a) => time(a.created_at) },
    ], page.items, "No artifacts."));
  }, 5000, artifacts);
  follow();
}

/** Append each event of the SSE stream, giving a status event to onChange; reconnect from
 * the last one if it drops. */
async function followEvents(ctx, id, list, state, onChange) {
  let after = list.lastElementChild ? list.lastElementChild.dataset.cursor : null;
  while (ctx.alive()) {
    try {
      replace(state, "Live");
      let ended = false;
      await stream(`/tasks/${id}/events/stream`, {
        query: after ? { after } : {}, signal: ctx.signal,
        onEvent: (m) => {
          // The close is `end` without an id; a task event (of any type, `end` too) has one.
          if (m.event === "end" && m.id === null) { ended = true; return; }
          const e = JSON.parse(m.data);
          after = e.cursor;
          list.appendChild(eventItem(e));
          if (e.to_status) onChange(e);
        },
      });
      if (ended) {
        replace(state, list.children.length ? "The task finished; no more events." : "No events.");
        return;
      }
    } catch (err) {
      if (err.name === "AbortError" || !ctx.alive()) return;
      replace(state, problemBox(err));
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

/** An API time (ISO 8601) in microseconds since the epoch (NaN if it is none): a Date
 * keeps milliseconds, and a task's changes may lie less than one apart. */
function micros(iso) {
  const m = /^([^.]*?)(?:\.(\d{1,6}))?([Z+-][\d:]*)$/.exec(String(iso));
  if (!m) return NaN;
  return Date.parse(m[1] + m[3]) * 1000 + Number((m[2] || "").padEnd(6, "0"));
}

function eventItem(e) {
  const payload = e.payload && Object.keys(e.payload).length ? json(e.payload) : null;
  return h("li", { class: "event", "data-cursor": e.cursor },
    h("div", { class: "event-head" }, time(e.created_at), " ",
      h("strong", null, e.event_type),
      e.to_status ? [" ", e.from_status ? [badge(e.from_status), " → "] : null, badge(e.to_status)] : null,
      e.attempt ? h("span", { class: "muted" }, ` attempt ${e.attempt}`) : null),
    payload);
}
