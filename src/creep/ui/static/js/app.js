// The dashboard shell: sign-in, navigation, hash routing and the per-page context (timers and
// requests of a page stop when the user navigates away).
import { api, ApiError, session } from "./api.js";
import { h, hashFor, replace } from "./dom.js";
import { problemBox, UNAUTHORIZED } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as tasks from "./pages/tasks.js";
import * as task from "./pages/task.js";
import * as batches from "./pages/batches.js";
import * as assets from "./pages/assets.js";
import * as leases from "./pages/leases.js";
import * as schedules from "./pages/schedules.js";
import * as ledger from "./pages/ledger.js";
import * as audit from "./pages/audit.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");

// [hash path, label, list page, detail page, admin only]
const SECTIONS = [
  ["overview", "Overview", overview, null, false],
  ["tasks", "Tasks", tasks, task, false],
  ["batches", "Batches", batches, batches, false],
  ["assets", "Assets", assets, assets, false],
  ["leases", "Leases", leases, null, false],
  ["schedules", "Schedules", schedules, schedules, false],
  ["ledger", "Ledger", ledger, null, false],
  ["audit", "Audit", audit, null, true],
];

let me = null;
let routing = 0; // route() calls so far: an older one whose await ended stops there
let asking = null; // the pending /v1/whoami: page changes meanwhile share it
const RETRY_MS = 3000;
let current = null; // {controller, timers}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [pathPart, queryPart = ""] = raw.split("?");
  const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(queryPart) };
}

function stopPage() {
  if (!current) return;
  current.controller.abort();
  for (const t of current.timers) clearTimeout(t);
  current = null;
}

function isAuthFailure(err) {
  return err instanceof ApiError && err.status === 401;
}

/** A failure that may pass by itself: the API unreachable, a 5xx or a 429. */
function isTransient(err) {
  return err instanceof ApiError && (err.status === 0 || err.status >= 500 || err.status === 429);
}

/** Show a page that could not open as its problem and, if the problem may pass, open it
 * again in a while (until the user navigates elsewhere). */
function showOpenFailure(err) {
  replace(main, problemBox(err));
  if (!isTransient(err)) return;
  const state = current || { controller: new AbortController(), timers: [] };
  current = state;
  state.timers.push(setTimeout(() => { if (current === state) route(); }, RETRY_MS));
}

/** The page's context: `path` is the route it was reached by ("tasks", or "batches/<id>" on
 * a detail page), so links of its own (pagers, filters) stay on it. */
function makeContext(path, params) {
  const controller = new AbortController();
  const state = { controller, timers: [] };
  current = state;
  return {
    path, params, me, signal: controller.signal,
    alive: () => current === state,
    go: (p, query) => { location.hash = hashFor(p, query); },
    /** Run `load` now (or, `later`, when `ms` have passed: a page that has just read it)
     * and then every `ms` (0: once); a failure shows in `target` (or is given to it, a
     * function). */
    every(load, ms, target, { later = false } = {}) {
      const run = async () => {
        if (current !== state) return;
        if (!document.hidden || !ms) {
          try {
            await load();
          } catch (err) {
            if (err.name === "AbortError" || current !== state) return;
            if (isAuthFailure(err)) { signOut(err); return; }
            if (typeof target === "function") target(err);
            else replace(target, problemBox(err));
          }
        }
        if (ms && current === state) state.timers.push(setTimeout(run, ms));
      };
      if (later && ms) state.timers.push(setTimeout(run, ms));
      else run();
    },
  };
}

function renderNav(active) {
  replace(nav, SECTIONS.filter(([, , , , adminOnly]) => !adminOnly || me.role === "admin")
    .map(([path, label]) => h("a", { href: `#/${path}`, class: path === active ? "active" : null }, label)));
  nav.hidden = false;
  const scope = me.tenant_id ? `tenant ${me.tenant_id}` : "admin (all tenants)";
  replace(who, h("span", { class: "muted" }, `${me.name} · ${scope}${me.read_only ? " · read-only" : ""}`),
    h("button", { type: "button", class: "link", id: "sign-out", onclick: () => signOut() }, "Sign out"));
}

/** The signed-in key's /v1/whoami, asked once however many pages open meanwhile. */
function whoami() {
  if (!asking) {
    const mine = api("/whoami").finally(() => { if (asking === mine) asking = null; });
    asking = mine;
  }
  return asking;
}

async function route() {
  stopPage();
  const mine = ++routing;
  if (!session.key()) { showSignIn(); return; }
  if (!me) {
    try {
      const found = await whoami();
      if (mine !== routing) return; // the page changed meanwhile: its route() draws it
      me = found;
    } catch (err) {
      if (mine !== routing) return;
      if (isAuthFailure(err)) { signOut(err); return; }
      showOpenFailure(err);
      return;
    }
  }
  const { parts, params } = parseHash();
  const [name = "overview", id] = parts;
  const found = SECTIONS.find(([path]) => path === name);
  renderNav(found ? name : null);
  if (!found) {
    replace(main, h("div", { class: "empty" }, "No such page. ", h("a", { href: "#/overview" }, "Go to the overview")));
    return;
  }
  const [, label, listPage, detailPage] = found;
  const page = id ? detailPage : listPage;
  document.title = `${label} · creep`;
  const ctx = makeContext(id ? `${name}/${encodeURIComponent(id)}` : name, params);
  replace(main);
  try {
    await (id ? page.renderDetail(main, ctx, id) : page.render(main, ctx));
  } catch (err) {
    if (err.name === "AbortError" || !ctx.alive()) return;
    if (isAuthFailure(err)) { signOut(err); return; }
    showOpenFailure(err);
  }
}

function signOut(err) {
  stopPage();
  routing += 1; // a route() awaiting the old key's whoami draws nothing
  asking = null;
  session.signOut();
  me = null;
  showSignIn(err);
}

function showSignIn(err) {
  nav.hidden = true;
  replace(who);
  document.title = "Sign in · creep";
  const input = h("input", { id: "api-key", name: "key", type: "password", required: true,
    autocomplete: "off", placeholder: "API key", size: 40 });
  const message = h("div", { id: "sign-in-message" }, err ? problemBox(err) : null);
  const form = h("form", { class: "card sign-in", id: "sign-in" },
    h("h1", null, "Sign in to creep"),
    h("p", { class: "muted" }, "Paste an API key. An admin key sees every tenant; a tenant key sees its own tenant. The key stays in this browser tab only."),
    input, h("button", { type: "submit", class: "primary" }, "Sign in"), message);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    session.signIn(input.value.trim());
    try {
      me = await api("/whoami");
    } catch (failure) {
      session.signOut();
      replace(message, problemBox(failure));
      return;
    }
    route();
  });
  replace(main, form);
  input.focus();
}

window.addEventListener("hashchange", route);
window.addEventListener(UNAUTHORIZED, (ev) => { if (session.key()) signOut(ev.detail); });
route();
