// The public HTTP API and the live WebSocket, with the user's bearer token. Nothing else:
// the dashboard has no back door. The projection API (6067) is this page's own origin; the
// enforcement API (6066) is at config.api_url (cross-origin, allowed by the enforcement
// workers' NOVAQUOTA_CORS_ORIGINS).

const TOKEN_KEY = "novaquota.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  // who the token is, as the API showed it at login: {role, tenant, canWrite}
  identity: null,
};

let config = null;

export async function loadConfig() {
  if (config) return config;
  const resp = await fetch("/ui/config.json", { cache: "no-store" });
  if (!resp.ok) throw new ApiError(resp.status, "config", "cannot read /ui/config.json");
  config = await resp.json();
  return config;
}

export function apiUrl() {
  return config.api_url;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function call(base, method, path, params, body, token) {
  const headers = { Authorization: `Bearer ${token ?? session.token ?? ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(base + path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach ${base || "this server"}: ${err.message}`);
  }
  let data = null;
  const text = await resp.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (resp.status >= 400) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.code, e.message);
  }
  return { status: resp.status, data };
}

// projection workers (this origin)
export const projections = {
  get: (path, params, token) => call("", "GET", path, params, undefined, token).then((r) => r.data),
  blob: (path, params) => fetchBlob(path, params),
};

// A document of the projection API (the replay report) as a Blob: a plain link cannot carry
// the token, so the page fetches it with the token and opens it as a blob: URL.
async function fetchBlob(path, params) {
  let resp;
  try {
    resp = await fetch(path + query(params), {
      headers: { Authorization: `Bearer ${session.token ?? ""}` },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach this server: ${err.message}`);
  }
  if (resp.status >= 400) {
    let e = {};
    try {
      e = (await resp.json()).error || {};
    } catch {
      e = {};
    }
    throw new ApiError(resp.status, e.code, e.message);
  }
  return resp.blob();
}

// enforcement workers (config.api_url)
export const enforcement = {
  get: (path, params, token) =>
    call(config.api_url, "GET", path, params, undefined, token).then((r) => r.data),
  send: (method, path, params, body) => call(config.api_url, method, path, params, body),
};

// The live feed: of one tenant (a tenant id), or the query parameters of any subscription, such
// as {scope: "all", types: "alert,quota_exceeded"} (every tenant's violations and alerts, for an
// admin). A browser cannot set headers on a WebSocket, so the token goes as a subprotocol
// ("bearer.<token>") next to "novaquota". Reconnects with a backoff.
export function live(subscription, onMessage, onState) {
  const params = typeof subscription === "string" ? { entity_id: subscription } : subscription;
  let socket = null;
  let closed = false;
  let delay = 500;
  const open = () => {
    if (closed) return;
    const url = `${config.live_url}/api/v1/quotas/live${query(params)}`;
    socket = new WebSocket(url, ["novaquota", `bearer.${session.token}`]);
    socket.onopen = () => {
      delay = 500;
      onState && onState("open");
    };
    socket.onmessage = (ev) => {
      try {
        onMessage(JSON.parse(ev.data));
      } catch (err) {
        console.error("live message", err);
      }
    };
    socket.onclose = () => {
      onState && onState(closed ? "closed" : "reconnecting");
      if (!closed) {
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 10000);
      }
    };
  };
  open();
  return {
    close() {
      closed = true;
      if (socket) socket.close();
    },
  };
}

// Who is this token? GET /api/v1/auth/whoami (any authenticated caller; 401 otherwise): its
// role, its tenant (none for an admin) and the actions the role allows.
export async function identify(token) {
  const me = await projections.get("/api/v1/auth/whoami", {}, token);
  const canWrite = me.actions.includes("write");
  if (me.role !== "admin" && !me.tenant_id) {
    throw new ApiError(404, "no_tenant", "this token sees no tenant");
  }
  return { role: me.role, tenant: me.tenant_id, canWrite, subject: me.subject };
}

// A management command's status until it is applied or rejected: GET /api/v1/commands/{id}
// with ?wait=, again while pending. onStatus sees every answer.
export async function follow(commandId, target, onStatus, { rounds = 12 } = {}) {
  let last = null;
  for (let i = 0; i < rounds; i++) {
    const r = await call(config.api_url, "GET", `/api/v1/commands/${encodeURIComponent(commandId)}`,
      { ...target, wait: "5s" });
    last = r.data;
    onStatus(last);
    if (last.status !== "pending") return last;
  }
  return last;
}
