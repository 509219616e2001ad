// The ledger: entries (filters, paging) and the summary by currency.
import { api } from "../api.js";
import { h, replace, section, table } from "../dom.js";
import { filterForm, pagedList, pick } from "../ui.js";
import { LEDGER_COLUMNS, tenantFilter } from "./common.js";

export async function render(main, ctx) {
  const filters = [
    { name: "entry_type", label: "Type", options: ["COST", "REVENUE", "REFUND", "TASK_BURN", "ADJUSTMENT"] },
    { name: "project_id", label: "Project" },
    { name: "task_id", label: "Task", size: 20 },
    ...tenantFilter(ctx),
  ];
  const query = pick(ctx.params, filters.map((f) => f.name));
  const summary = h("div", { id: "ledger-summary" });
  replace(main, h("h1", null, "Ledger"), filterForm(ctx, filters),
    section("Summary by currency", summary),
    section("Entries", pagedList(ctx, {
      path: "/ledger", query, columns: LEDGER_COLUMNS, empty: "No ledger entries match.",
    })));
  const { entry_type: _unused, ...summaryQuery } = query;
  ctx.every(async () => {
    const s = await api("/ledger/summary", { query: { ...summaryQuery, group_by: "currency" }, signal: ctx.signal });
    replace(summary, table([
      { label: "Currency", get: (g) => g.currency },
      { label: "Cost", get: (g) => String(g.cost) },
      { label: "Revenue", get: (g) => String(g.revenue) },
      { label: "Margin", get: (g) => String(g.margin) },
      { label: "Entries", get: (g) => String(g.entries) },
    ], s.items, "No entries."));
  }, 5000, summary);
}
