// The metrics page: the node's own Prometheus metrics (GET /metrics), sampled every 2 s
// while the page is open, charted over the last 10 minutes: request rate and latency,
// replication (push backlog, records moved, time since the last exchange), gossip traffic.
import { explain, get, getText } from "./api.js";
import { h } from "./dom.js";
import { drawChart } from "./chart.js";

const EVERY_MS = 1000;
const WINDOW_MS = 10 * 60 * 1000;
const history = []; // kept across visits to the page (same tab): [{t, m: Map}]

export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const [, k, v] of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    const list = out.get(m[1]) || [];
    list.push({ labels, value: Number(m[3]) });
    out.set(m[1], list);
  }
  return out;
}

const sum = (m, name, pred = () => true) =>
  (m.get(name) || []).filter((s) => pred(s.labels)).reduce((a, s) => a + s.value, 0);

function rate(name, pred) {
  const points = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1];
    const b = history[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    points.push([b.t, Math.max(0, (sum(b.m, name, pred) - sum(a.m, name, pred)) / dt)]);
  }
  return points;
}

function latency() {
  const mean = [];
  const p95 = [];
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1].m;
    const b = history[i].m;
    const n = sum(b, "kvs_http_request_duration_seconds_count") - sum(a, "kvs_http_request_duration_seconds_count");
    const s = sum(b, "kvs_http_request_duration_seconds_sum") - sum(a, "kvs_http_request_duration_seconds_sum");
    const t = history[i].t;
    mean.push([t, n > 0 ? (s / n) * 1000 : 0]);
    const buckets = new Map();
    for (const { labels, value } of b.get("kvs_http_request_duration_seconds_bucket") || []) buckets.set(labels.le, (buckets.get(labels.le) || 0) + value);
    for (const { labels, value } of a.get("kvs_http_request_duration_seconds_bucket") || []) buckets.set(labels.le, (buckets.get(labels.le) || 0) - value);
    const les = [...buckets.keys()].sort((x, y) => Number(x === "+Inf" ? Infinity : x) - Number(y === "+Inf" ? Infinity : y));
    let q = 0;
    for (const le of les) {
      if (n > 0 && buckets.get(le) >= 0.95 * n) {
        q = le === "+Inf" ? NaN : Number(le) * 1000;
        break;
      }
    }
    p95.push([t, Number.isNaN(q) ? 0 : q]);
  }
  return { mean, p95 };
}

function gauge(fn) {
  return history.map(({ t, m, extra }) => [t, fn(m, extra, t)]);
}

export function mount(main) {
  const status = h("p", { class: "muted", id: "metrics-status" }, "Sampling…");
  const charts = {
    requests: h("div", { class: "chart-box", id: "chart-requests" }),
    latency: h("div", { class: "chart-box", id: "chart-latency" }),
    replication: h("div", { class: "chart-box", id: "chart-replication" }),
    lag: h("div", { class: "chart-box", id: "chart-lag" }),
    gossip: h("div", { class: "chart-box", id: "chart-gossip" }),
  };
  main.append(
    h("h1", {}, "Metrics"),
    h("p", { class: "muted" }, "This node's own /metrics, sampled every second while the console is open in this tab (up to the last 10 minutes). The console's own polling counts as requests too."),
    h("div", { class: "charts" },
      h("section", { class: "card" }, h("h2", {}, "HTTP requests per second"), charts.requests),
      h("section", { class: "card" }, h("h2", {}, "HTTP latency (ms)"), charts.latency),
      h("section", { class: "card" }, h("h2", {}, "Replication: records per second"), charts.replication),
      h("section", { class: "card" }, h("h2", {}, "Replication lag: push backlog (keys) and seconds since the last exchange"), charts.lag),
      h("section", { class: "card" }, h("h2", {}, "Gossip traffic (bytes per second)"), charts.gossip),
    ),
    status,
  );
  let stopped = false;
  let timer = null;
  async function tick() {
    try {
      const [text, stats] = await Promise.all([getText("/metrics"), get("/cluster/stats").catch(() => null)]);
      history.push({ t: Date.now(), m: parseMetrics(text), extra: stats });
      while (history.length && history[0].t < Date.now() - WINDOW_MS - EVERY_MS) history.shift();
      if (stopped) return;
      draw(charts);
      status.textContent = `${history.length} samples; last ${new Date().toLocaleTimeString()}`;
      status.className = "muted";
    } catch (err) {
      if (stopped) return;
      status.textContent = explain(err);
      status.className = "error";
    }
    if (!stopped) timer = setTimeout(tick, EVERY_MS);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function draw(charts) {
  // The window grows with the samples taken (at least 20 s), up to 10 minutes.
  const span = history.length ? Date.now() - history[0].t : 0;
  const opts = { windowMs: Math.min(WINDOW_MS, Math.max(20000, span)) };
  drawChart(charts.requests, [
    { name: "all", cls: "s1", color: "#2563eb", points: rate("kvs_http_requests_total") },
    { name: "errors (4xx/5xx)", cls: "s3", color: "#dc2626", points: rate("kvs_http_requests_total", (l) => l.status >= "400") },
  ], opts);
  const lat = latency();
  drawChart(charts.latency, [
    { name: "mean", cls: "s1", color: "#2563eb", points: lat.mean },
    { name: "p95 (bucket bound)", cls: "s2", color: "#d97706", points: lat.p95 },
  ], { ...opts, unit: " ms" });
  drawChart(charts.replication, [
    { name: "pushed on write", cls: "s1", color: "#2563eb", points: rate("kvs_sync_records_pushed_total", (l) => l.path === "on_write") },
    { name: "merged from peers", cls: "s5", color: "#16a34a", points: rate("kvs_sync_records_merged_total") },
    { name: "pulled by anti-entropy", cls: "s4", color: "#7c3aed", points: rate("kvs_sync_records_pulled_total") },
  ], opts);
  drawChart(charts.lag, [
    { name: "keys queued to push", cls: "s2", color: "#d97706", points: gauge((m) => sum(m, "kvs_sync_push_queue_depth")) },
    {
      name: "s since last exchange",
      cls: "s4",
      color: "#7c3aed",
      points: gauge((m, s, t) => (s && s.sync && s.sync.last_exchange_ms ? Math.max(0, (t - s.sync.last_exchange_ms) / 1000) : 0)),
    },
  ], opts);
  drawChart(charts.gossip, [
    { name: "in", cls: "s1", color: "#2563eb", points: rate("kvs_gossip_bytes_total", (l) => l.direction === "in") },
    { name: "out", cls: "s5", color: "#16a34a", points: rate("kvs_gossip_bytes_total", (l) => l.direction === "out") },
  ], opts);
}
