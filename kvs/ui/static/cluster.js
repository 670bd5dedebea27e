// The cluster page: this node (mode, keys, uptime, Merkle root), every member with its
// state, and per peer the sync status. Polls every second; a member that dies turns red
// without a reload.
import { explain, get } from "./api.js";
import { ago, clear, duration, h, iso } from "./dom.js";

const POLL_MS = 1000;

export function mount(main) {
  const summary = h("section", { class: "cards", id: "node-summary" });
  const tbody = h("tbody", { id: "members" });
  const status = h("p", { class: "muted", id: "cluster-status" }, "Loading…");
  main.append(
    h("h1", {}, "Cluster"),
    summary,
    h("h2", {}, "Members"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "grid" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Node", "State", "Address", "Incarnation", "Joined", "Last change", "Last exchange", "Merkle root", "Push queue"].map(
              (t) => h("th", {}, t),
            ),
          ),
        ),
        tbody,
      ),
    ),
    status,
  );
  let stopped = false;
  let timer = null;

  async function tick() {
    try {
      const [health, members, stats] = await Promise.all([
        get("/health"),
        get("/members/").catch((err) => (err.status === 404 ? [] : Promise.reject(err))),
        get("/cluster/stats").catch((err) => (err.status === 404 ? null : Promise.reject(err))),
      ]);
      if (stopped) return;
      drawSummary(summary, health, stats);
      drawMembers(tbody, members, stats);
      status.textContent = `Updated ${new Date().toLocaleTimeString()} (every second)`;
      status.className = "muted";
    } catch (err) {
      if (stopped) return;
      status.textContent = explain(err);
      status.className = "error";
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function card(label, value, id) {
  return h("div", { class: "card stat" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
}

function drawSummary(el, health, stats) {
  const sync = stats && stats.sync;
  clear(el).append(
    card("This node", health.node_id, "self-id"),
    card("Mode", health.mode, "self-mode"),
    card("Keys", health.keys.toLocaleString(), "self-keys"),
    card("Uptime", duration(health.uptime_s), "self-uptime"),
    card("Members alive", health.members_alive ?? "clustering off", "self-alive"),
    card("Merkle root", sync ? sync.root.slice(0, 16) : "n/a", "self-root"),
    card("Last exchange", sync ? ago(sync.last_exchange_ms) : "n/a", "self-last-exchange"),
  );
  if (health.sync) el.append(card("Bootstrap", syncText(health.sync), "self-sync"));
  const mode = el.querySelector("#self-mode");
  mode.className = `value mode-${health.mode}`;
}

// A syncing node's bootstrap progress (/health's `sync`): keys received of those expected
// (the peer's Merkle size, tombstones included: an estimate), rate and time left.
function syncText(p) {
  const of = p.keys_expected ? ` of ~${p.keys_expected.toLocaleString()}` : "";
  const rate = p.keys_per_s ? `, ${Math.round(p.keys_per_s).toLocaleString()} keys/s` : "";
  const left = p.eta_s != null ? `, ${duration(p.eta_s)} left` : "";
  return `${p.keys_received.toLocaleString()}${of}${rate}${left}`;
}

function exchangeText(ex) {
  if (!ex) return ["not yet (by this node)", "unknown"];
  let what = ex.result;
  if (ex.result === "synced") what = `synced (${ex.fetched} in, ${ex.pushed} out)`;
  if (ex.result === "failed") what = `failed (${ex.error})`;
  if (ex.result === "skipped") what = ex.peer_stale ? "skipped (peer stale)" : "skipped (peer bootstrapping)";
  const root =
    ex.roots_equal === true ? "equal" : ex.roots_equal === false ? "differed (reconciled)" : "unknown";
  return [`${what}, ${ago(ex.at_ms)}`, root];
}

function drawMembers(tbody, members, stats) {
  const sync = (stats && stats.sync) || {};
  const byPeer = sync.exchanges_by_peer || {};
  const queues = sync.push_queue || {};
  clear(tbody);
  for (const m of members) {
    const [exchange, root] = m.self ? ["(this node)", "(ours)"] : exchangeText(byPeer[m.node_id]);
    tbody.append(
      h(
        "tr",
        { class: `member state-${m.state}`, dataset: { node: m.node_id, state: m.state } },
        h("td", {}, m.node_id, m.self ? h("span", { class: "tag" }, "self") : null),
        h("td", { class: "state" }, h("span", { class: `dot ${m.state}` }), m.state),
        h("td", {}, m.http_address),
        h("td", { class: "num" }, m.incarnation),
        h("td", {}, iso(m.joined_timestamp)),
        h("td", { title: iso(m.last_change) }, ago(m.last_change)),
        h("td", {}, exchange),
        h("td", {}, root),
        h("td", { class: "num" }, m.self ? "" : queues[m.node_id] ?? "–"),
      ),
    );
  }
}
