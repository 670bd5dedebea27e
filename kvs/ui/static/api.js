// The console's one way to the node: same origin, the caller's token in an Authorization
// header (never in a URL), kept in sessionStorage (gone when the tab closes).
const TOKEN_KEY = "kvs.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, body, path) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.path = path;
  }
}

// What a status means, in words, for messages on the page.
export function explain(err) {
  if (!(err instanceof ApiError)) return `Cannot reach the node: ${err.message}`;
  switch (err.status) {
    case 401:
      return "401 Unauthorized: no token, or the token is invalid, expired or revoked. Log in with a valid token.";
    case 403:
      return `403 Forbidden: your token is valid but does not allow this (${err.message}). Ask an admin for a token with the right scope, or for permission bits on the key.`;
    case 404:
      return `404 Not found: ${err.message}`;
    case 409:
      return `409 Conflict: someone changed this key since you loaded it (now version ${err.body.current_uuid || "unknown"}). Reload it to see their change, then edit again.`;
    case 429:
      return "429 Too many requests: the node's rate limit; wait a moment.";
    case 503:
      return `503 Unavailable: ${err.message}`;
    default:
      return `${err.status}: ${err.message}`;
  }
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set("Authorization", `Bearer ${t}`);
  return h;
}

let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

export async function request(method, path, { body, headers: extra, raw, signal } = {}) {
  const init = { method, headers: headers(extra), cache: "no-store", credentials: "omit", signal };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers.set("Content-Type", "application/json");
  }
  const response = await fetch(path, init);
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const err = new ApiError(response.status, parsed, path);
    if (response.status === 401) onUnauthorized(err);
    throw err;
  }
  return parsed === null && text ? text : parsed;
}

export const get = (path, opts) => request("GET", path, opts);

export async function getText(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store", credentials: "omit" });
  const text = await response.text();
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
    const err = new ApiError(response.status, parsed, path);
    if (response.status === 401) onUnauthorized(err);
    throw err;
  }
  return text;
}

// A key as a URL path: each segment percent-encoded, the slashes kept.
export function keyPath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

// A server-sent event stream read with fetch (EventSource cannot send a header).
export async function stream(path, onEvent, signal) {
  const response = await fetch(path, {
    headers: headers({ Accept: "text/event-stream" }),
    cache: "no-store",
    credentials: "omit",
    signal,
  });
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      parsed = null;
    }
    throw new ApiError(response.status, parsed, path);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data += (event.data ? "\n" : "") + val;
        else if (field === "event") event.event = val;
        else if (field === "id") event.id = val;
      }
      if (event.data || event.event !== "message") onEvent(event);
    }
  }
}
