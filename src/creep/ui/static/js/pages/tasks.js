// Tasks: filters (status, type, tag, batch, tenant; the recycle bin of deleted tasks), cursor
// paging, live refresh.
import { h, replace, time } from "../dom.js";
import { filterForm, pagedList, pick } from "../ui.js";
import { TASK_COLUMNS, TASK_STATUSES, tenantFilter } from "./common.js";

export async function render(main, ctx) {
  const filters = [
    { name: "status", label: "Status", options: TASK_STATUSES },
    { name: "task_type", label: "Type" },
    { name: "tag", label: "Tag" },
    { name: "batch_id", label: "Batch" },
    ...tenantFilter(ctx),
    { name: "deleted", label: "Deleted", any: "not deleted",
      options: [{ value: "true", label: "deleted (recycle bin)" }] },
  ];
  const deleted = ctx.params.get("deleted") === "true";
  const columns = deleted
    ? [...TASK_COLUMNS, { label: "Deleted", get: (t) => time(t.deleted_at) }] : TASK_COLUMNS;
  replace(main, h("h1", null, deleted ? "Deleted tasks" : "Tasks"), filterForm(ctx, filters),
    pagedList(ctx, {
      path: "/tasks", query: pick(ctx.params, filters.map((f) => f.name)),
      columns, empty: deleted ? "No deleted tasks match." : "No tasks match.",
    }));
}
