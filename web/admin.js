// The operator's page (/admin). No framework: polls GET /api/admin/stats
// once a second with the admin token (kept in sessionStorage: this tab
// only), draws small SVG line charts, and looks up / disconnects users.
// Every piece of server data goes into the page through textContent.

const TOKEN_KEY = "corechat.admin-token";
const POLL_MS = 1000;
const POINTS = 120; // two minutes of history per series
const COLORS = ["#5549e8", "#1a9f5b", "#d2394a", "#b7791f", "#2b8fd6", "#b34bd8", "#5f6b7a", "#e0662b"];
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null) continue;
    if (k === "text") el.textContent = v;
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c);
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

const fmt = (n) => (n == null ? "–" : Number.isInteger(n) ? n.toLocaleString("en-US") : n.toFixed(2));

// ---------------------------------------------------------------- API

let token = sessionStorage.getItem(TOKEN_KEY);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    cache: "no-store",
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(r.status, data.error || `HTTP ${r.status}`);
  return data;
}

// ---------------------------------------------------------------- charts

/**
 * A line chart in a <figure>: one polyline per series, y from 0 to the
 * largest value shown, and a legend with each series' latest value.
 */
class LineChart {
  constructor(fig) {
    this.fig = fig;
    this.series = new Map(); // name -> number[]
    this.svg = svg("svg", { viewBox: "0 0 300 100", preserveAspectRatio: "none", role: "img" });
    this.legend = h("div", { class: "legend" });
    fig.append(this.svg, this.legend);
  }

  push(values) {
    for (const [name, v] of Object.entries(values)) {
      if (!this.series.has(name)) this.series.set(name, []);
    }
    for (const [name, points] of this.series) {
      points.push(values[name] ?? 0);
      if (points.length > POINTS) points.shift();
    }
    this.draw(values);
  }

  draw(latest) {
    let max = 1;
    for (const points of this.series.values()) for (const v of points) max = Math.max(max, v);
    this.svg.replaceChildren(svg("line", { class: "axis", x1: 0, y1: 99.5, x2: 300, y2: 99.5 }));
    const legend = [];
    let i = 0;
    for (const [name, points] of this.series) {
      const color = COLORS[i++ % COLORS.length];
      const x0 = 300 - (points.length - 1) * (300 / (POINTS - 1));
      const coords = points.map((v, j) => `${(x0 + j * (300 / (POINTS - 1))).toFixed(1)},${(98 - (v / max) * 92).toFixed(1)}`);
      this.svg.append(svg("polyline", { points: coords.join(" "), stroke: color, "data-series": name }));
      const item = h("span", { class: "legend-item", style: `--swatch:${color}` }, `${name} `);
      item.append(h("span", { class: "legend-value", dataset: { series: name }, text: fmt(latest[name] ?? 0) }));
      legend.push(item);
    }
    const top = svg("text", { class: "tick", x: 2, y: 9 });
    top.textContent = fmt(max);
    this.svg.append(top);
    this.legend.replaceChildren(...legend);
  }
}

// ---------------------------------------------------------------- dashboard

let charts = null;
let pollTimer = null;

function showLogin(message) {
  if (message) sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(pollTimer);
  pollTimer = null;
  $("dashboard").hidden = true;
  $("admin-login").hidden = false;
  $("admin-login-error").textContent = message || "";
}

function showDashboard() {
  $("admin-login").hidden = true;
  $("dashboard").hidden = false;
  if (!charts) {
    charts = {
      connections: new LineChart($("chart-connections")),
      deliveries: new LineChart($("chart-deliveries")),
      latency: new LineChart($("chart-latency")),
    };
  }
  poll();
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    const stats = await api("GET", "/api/admin/stats?top=20");
    render(stats);
    $("live").dataset.state = "ok";
    $("live").textContent = `live · ${new Date(stats.ts).toLocaleTimeString()}`;
  } catch (e) {
    if (e.status === 401) return showLogin(`Your sign-in is not valid: ${e.message}`);
    if (e.status === 403) return showLogin("This token is not an admin token.");
    $("live").dataset.state = "error";
    $("live").textContent = `server unreachable (${e.message}); retrying`;
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

function render(s) {
  $("total-sessions").textContent = fmt(s.totals.sessions);
  $("total-connections").textContent = fmt(s.totals.connections);
  $("total-deliveries").textContent = fmt(s.totals.deliveries_per_sec);
  $("total-publishes").textContent = fmt(s.totals.publishes_per_sec);
  renderStore(s.store);

  const perShard = (f) => Object.fromEntries(s.shards.map((x) => [`shard ${x.shard}`, f(x)]));
  charts.connections.push(perShard((x) => x.sessions));
  charts.deliveries.push(perShard((x) => x.deliveries_per_sec));
  const worst = (k) => Math.max(0, ...s.shards.map((x) => x.latency_us[k]));
  charts.latency.push({ p50: worst("p50"), p90: worst("p90"), p99: worst("p99") });

  $("shards-table").tBodies[0].replaceChildren(
    ...s.shards.map((x) =>
      h(
        "tr",
        { dataset: { shard: x.shard } },
        ...[
          ["shard", x.shard],
          ["sessions", x.sessions],
          ["connections", x.connections],
          ["users", x.users],
          ["rooms", x.rooms],
          ["deliveries_per_sec", x.deliveries_per_sec],
          ["p50", x.latency_us.p50],
          ["p99", x.latency_us.p99],
        ].map(([k, v]) => h("td", { dataset: { k }, text: fmt(v) })),
      ),
    ),
  );

  $("rooms-empty").hidden = s.rooms.length > 0;
  $("rooms-table").tBodies[0].replaceChildren(
    ...s.rooms.map((r) =>
      h(
        "tr",
        { dataset: { room: r.room } },
        ...[
          ["room", r.room],
          ["members", r.members],
          ["connections", r.connections],
          ["msgs_per_sec", r.msgs_per_sec],
          ["seq", r.seq],
        ].map(([k, v]) => h("td", { dataset: { k }, text: typeof v === "string" ? v : fmt(v) })),
      ),
    ),
  );
}

function renderStore(st) {
  $("store-kind").textContent = `(${st.kind})`;
  const ready = $("store-ready");
  ready.dataset.ok = String(st.ready);
  ready.textContent = st.ready ? "ready" : "unavailable";
  $("store-queue").textContent = st.queue_depth == null ? "n/a" : fmt(st.queue_depth);
  const last = $("store-last-commit");
  if (st.last_commit_ms == null) {
    last.textContent = st.kind === "sqlite" ? "none yet" : "n/a";
    last.removeAttribute("title");
  } else {
    const ago = Math.max(0, Math.round((Date.now() - st.last_commit_ms) / 1000));
    last.textContent = `${ago} s ago`;
    last.title = new Date(st.last_commit_ms).toISOString();
  }
}

// ---------------------------------------------------------------- user lookup

let lookedUp = null;

function renderUser(u) {
  lookedUp = u.user;
  $("lookup-error").textContent = "";
  $("lookup-result").hidden = false;
  $("lookup-user").textContent = u.user;
  const online = $("lookup-online");
  online.dataset.ok = String(u.online);
  online.textContent = u.online ? "online" : "offline";
  $("lookup-connections").textContent = fmt(u.connections);
  $("lookup-shards").textContent = u.shards.length ? `(${u.shards.map((s) => `shard ${s.shard}: ${s.connections}`).join(", ")})` : "";
  const more = u.rooms_total > u.rooms.length ? ` and ${u.rooms_total - u.rooms.length} more` : "";
  $("lookup-rooms").textContent = u.rooms.length ? u.rooms.join(", ") + more : "none";
  $("disconnect").disabled = !u.online;
}

async function lookup(user) {
  try {
    renderUser(await api("GET", `/api/admin/users/${encodeURIComponent(user)}`));
    $("lookup-note").textContent = "";
  } catch (e) {
    $("lookup-result").hidden = true;
    $("lookup-error").textContent = e.message;
  }
}

$("lookup-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  lookup($("lookup-input").value.trim());
});

$("disconnect").addEventListener("click", async () => {
  if (!lookedUp) return;
  const user = lookedUp;
  try {
    const r = await api("POST", "/api/admin/disconnect", { user });
    renderUser(r);
    $("lookup-note").textContent = `Closed ${r.disconnected} socket(s) of ${user} (close 1008, "disconnected by admin"). Their client may reconnect.`;
  } catch (e) {
    $("lookup-error").textContent = e.message;
  }
});

// ---------------------------------------------------------------- sign in

$("admin-token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("admin-token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  showDashboard();
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  showLogin("");
});

if (token) showDashboard();
else showLogin("");
