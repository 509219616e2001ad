// The /v1 API, called with the signed-in key. Errors arrive as RFC 7807 problems and are
// thrown as ApiError carrying the problem's title and detail.

const KEY = "creep.apiKey";

export const session = {
  key: () => sessionStorage.getItem(KEY),
  signIn: (key) => sessionStorage.setItem(KEY, key),
  signOut: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || "";
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
  }
}

function url(path, query) {
  const u = new URL(`/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== null && v !== undefined && v !== "") u.searchParams.set(k, v);
  }
  return u;
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const key = session.key();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function problemOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body === "object") return body;
  } catch { /* not JSON: fall through */ }
  return { title: `HTTP ${response.status}`, detail: response.statusText };
}

/** GET (or `method`) /v1{path}; resolves to the parsed JSON body. */
export async function api(path, { method = "GET", query, body, headers: extra, signal } = {}) {
  const init = { method, headers: headers(extra), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { title: "The API is not reachable", detail: String(err.message || err) });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  return response.json();
}

/** Server-sent events of /v1{path}, read with fetch (EventSource cannot send the key).
 * Calls onEvent({id, event, data}) per event until the stream ends or `signal` aborts. */
export async function stream(path, { query, signal, onEvent }) {
  const response = await fetch(url(path, query), {
    headers: headers({ Accept: "text/event-stream" }), signal,
  });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: null, event: "message", data: "" };
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(val);
        else if (field === "event") message.event = val;
        else if (field === "id") message.id = val;
      }
      if (!data.length) continue;
      message.data = data.join("\n");
      onEvent(message);
    }
  }
}
