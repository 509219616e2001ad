// Widgets shared by the pages: problem boxes, filter forms, paged live lists, action buttons.
import { api, ApiError } from "./api.js";
import { clockTime, h, replace, table } from "./dom.js";

/** Reads that may overlap (a page's timed refresh and the one after an action) drawn in the
 * order they were sent: `const fresh = latest(); … const mine = fresh(); await …; if
 * (!mine()) return;` drops an answer when a read sent after it was drawn already. */
export function latest() {
  let sent = 0;
  let drawn = 0;
  return () => {
    const n = ++sent;
    return () => {
      if (n < drawn) return false;
      drawn = n;
      return true;
    };
  };
}

/** The window event that signs the user out (its detail: the 401 ApiError). */
export const UNAUTHORIZED = "creep:unauthorized";

/** A problem (RFC 7807) shown as its title and detail, with any field errors. */
export function problemBox(err) {
  if (!(err instanceof ApiError)) {
    return h("div", { class: "problem", role: "alert" }, h("strong", null, "Error"), " ",
      String(err && err.message ? err.message : err));
  }
  return h("div", { class: "problem", role: "alert" },
    h("strong", { class: "problem-title" }, err.title),
    err.detail ? h("span", { class: "problem-detail" }, ` — ${err.detail}`) : null,
    err.errors.length ? h("ul", null, err.errors.map((e) =>
      h("li", null, `${e.field}: ${e.rule}`))) : null);
}

/** A filter form whose values live in the page's hash query (so a filtered view is a link).
 * A select's options are values, or `{ value, label }`; `any` names its empty choice. */
export function filterForm(ctx, filters) {
  const inputs = filters.map((f) => {
    const current = ctx.params.get(f.name) || "";
    const option = (o) => (typeof o === "string" ? { value: o, label: o } : o);
    const input = f.options
      ? h("select", { name: f.name, "aria-label": f.label },
        h("option", { value: "" }, f.any || `any ${f.label.toLowerCase()}`),
        f.options.map(option).map((o) =>
          h("option", { value: o.value, selected: o.value === current }, o.label)))
      : h("input", { name: f.name, value: current, placeholder: f.label, "aria-label": f.label,
        size: f.size || 14 });
    return h("label", null, h("span", null, f.label), input);
  });
  const form = h("form", { class: "filters" }, inputs,
    h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", class: "link", onclick: () => ctx.go(ctx.path, {}) }, "Clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const query = {};
    for (const [k, v] of new FormData(form)) if (String(v).trim()) query[k] = String(v).trim();
    ctx.go(ctx.path, query);
  });
  return form;
}

/** A list read from `path` with the hash query's filters and cursor, refreshed while live.
 * `cursorParam` names the list's cursor in the hash query: a page with two lists gives each
 * its own, so paging one keeps the other where it is. */
export function pagedList(ctx, { path, query = {}, columns, empty, limit = 50, live = true,
  paged = true, cursorParam = "cursor" }) {
  const body = h("div", { class: "list-body" }, h("p", { class: "muted" }, "Loading…"));
  const footer = h("div", { class: "pager" });
  const status = h("span", { class: "muted refresh" });
  const problem = h("div", { class: "list-problem" });
  let shownAt = null; // when the rows shown were read
  const load = async () => {
    const q = { ...query, limit };
    const cursor = ctx.params.get(cursorParam);
    if (paged && cursor) q.cursor = cursor;
    const page = await api(path, { query: q, signal: ctx.signal });
    replace(body, table(columns, page.items, empty));
    const links = [];
    if (cursor) {
      links.push(h("button", { type: "button", class: "first", onclick: () => ctx.go(ctx.path, without(ctx.params, cursorParam)) }, "⟵ First page"));
    }
    if (paged && page.next_cursor) {
      links.push(h("button", { type: "button", class: "next",
        onclick: () => ctx.go(ctx.path, { ...Object.fromEntries(ctx.params), [cursorParam]: page.next_cursor }) },
        "Next page ⟶"));
    }
    replace(footer, links);
    replace(problem);
    shownAt = clockTime();
    replace(status, `updated ${shownAt}`);
  };
  // A failed refresh keeps the rows last read (and their pager) and says they are stale.
  const failed = (err) => {
    if (shownAt === null) {
      replace(body, problemBox(err));
      replace(status, `update failed at ${clockTime()}`);
    } else {
      replace(problem, problemBox(err));
      replace(status, `update failed at ${clockTime()}; showing data from ${shownAt}`);
    }
  };
  ctx.every(load, live ? 3000 : 0, failed);
  return h("div", { class: "list" }, problem, body, footer, status);
}

function without(params, name) {
  const out = Object.fromEntries(params);
  delete out[name];
  return out;
}

/** The query of the hash limited to `names` (the API filters a page passes through). */
export function pick(params, names) {
  const out = {};
  for (const n of names) if (params.get(n)) out[n] = params.get(n);
  return out;
}

/** Where the action buttons of a page show their problems: placed outside the part of the
 * page a refresh redraws, so a failed action's problem stays until the next action. */
export function actionNotes() {
  return h("div", { class: "action-notes" });
}

/** A button that runs `action` (a promise), shows its problem if it fails (in `notes`, an
 * actionNotes(), or else beside the button), then `done()`. */
export function actionButton(label, action, done, { danger = false, confirmText, notes } = {}) {
  const msg = notes || h("span", { class: "action-msg" });
  const btn = h("button", { type: "button", class: danger ? "danger" : "primary",
    onclick: async () => {
      if (confirmText && !window.confirm(confirmText)) return;
      btn.disabled = true;
      replace(msg);
      try {
        await action();
        await done();
      } catch (err) {
        // A key revoked meanwhile: sign out at once, as a refresh meeting the 401 does.
        if (err instanceof ApiError && err.status === 401) {
          window.dispatchEvent(new CustomEvent(UNAUTHORIZED, { detail: err }));
          return;
        }
        replace(msg, problemBox(err));
      } finally {
        btn.disabled = false;
      }
    } }, label);
  return h("span", { class: "action" }, btn, notes ? null : msg);
}
