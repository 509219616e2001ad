// Tasks: filters (status, type, tag, batch, tenant), cursor paging, live refresh.
import { h, replace } from "../dom.js";
import { filterForm, pagedList, pick } from "../ui.js";
import { TASK_COLUMNS, TASK_STATUSES, tenantFilter } from "./common.js";

export async function render(main, ctx) {
  const filters = [
    { name: "status", label: "Status", options: TASK_STATUSES },
    { name: "task_type", label: "Type" },
    { name: "tag", label: "Tag" },
    { name: "batch_id", label: "Batch" },
    ...tenantFilter(ctx),
  ];
  replace(main, h("h1", null, "Tasks"), filterForm(ctx, filters),
    pagedList(ctx, {
      path: "/tasks", query: pick(ctx.params, filters.map((f) => f.name)),
      columns: TASK_COLUMNS, empty: "No tasks match.",
    }));
}
