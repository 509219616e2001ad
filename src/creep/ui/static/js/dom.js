// Building DOM nodes. Text always goes in as text nodes (never innerHTML), so whatever a task,
// tag or error message contains is shown as text, never parsed as markup.

/** h("a", {href: "#/x", class: "c", onclick: fn}, "text", child, [more]) */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "value" || name === "checked" || name === "disabled") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// The browser's time zone, named on every time shown (the API's times are UTC instants).
const DATE_TIME = { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
  minute: "2-digit", second: "2-digit", timeZoneName: "short" };

/** An instant as the browser's local time with its zone named; its ISO form in the title. */
export function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return h("time", { datetime: iso, title: iso }, d.toLocaleString(undefined, DATE_TIME));
}

/** Now as a local time of day with its zone named ("updated …"). */
export function clockTime(d = new Date()) {
  return d.toLocaleTimeString(undefined, { timeZoneName: "short" });
}

/** A duration in the units that fit it ("850 ms", "12.5 s", "5 min", "1 h 30 min", "2 d 3 h");
 * the exact milliseconds in the title. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return "";
  const n = Number(ms);
  const units = [["d", 86_400_000], ["h", 3_600_000], ["min", 60_000], ["s", 1000]];
  let text;
  if (Math.abs(n) < 1000) {
    text = `${n} ms`;
  } else if (Math.abs(n) < 60_000) {
    text = `${Number((n / 1000).toFixed(1))} s`;
  } else {
    // The two largest units, the smaller left out when it is 0: "5 min", "1 h 30 min".
    const i = units.findIndex(([, size]) => Math.abs(n) >= size);
    const [bigName, bigSize] = units[i];
    const [smallName, smallSize] = units[i + 1];
    const big = Math.trunc(n / bigSize);
    const small = Math.trunc((n - big * bigSize) / smallSize);
    text = small ? `${big} ${bigName} ${small} ${smallName}` : `${big} ${bigName}`;
  }
  return h("span", { title: `${n} ms` }, text);
}

export function badge(status) {
  if (status === null || status === undefined) return "";
  const cls = String(status).toLowerCase().replace(/[^a-z_]/g, "");
  return h("span", { class: `badge s-${cls}` }, String(status));
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function progress(value, message) {
  const pct = Math.max(0, Math.min(100, Number(value) || 0));
  const bar = h("div", { class: "bar" });
  bar.style.width = `${pct}%`; // CSSOM, not a style attribute: the CSP forbids inline styles
  return h("div", { class: "progress", title: message || `${pct}%` }, bar,
    h("span", null, `${pct}%`));
}

/** Columns: [{label, get(row) -> node|string}] */
export function table(columns, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", { class: "grid" },
    h("thead", null, h("tr", null, columns.map((c) => h("th", null, c.label)))),
    h("tbody", null, rows.map((row) =>
      h("tr", null, columns.map((c) => h("td", null, c.get(row)))))));
}

/** Key/value pairs of an object: [[label, value-or-node]] */
export function fields(pairs) {
  return h("dl", { class: "fields" }, pairs
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

/** The hash of a page: hashFor("tasks", {status: "FAILED"}) -> "#/tasks?status=FAILED" */
export function hashFor(path, query = {}) {
  const q = new URLSearchParams(query).toString();
  return `#/${path}${q ? `?${q}` : ""}`;
}
