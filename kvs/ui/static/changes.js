// The changes page: the live `_watch` stream under a prefix, newest first, with pause and
// a filter. Read with fetch (the token goes in a header); reconnects from the last event id.
import { explain, keyPath, stream } from "./api.js";
import { clear, h, iso } from "./dom.js";

const KEEP = 500; // rows kept on the page

export function mount(main, arg) {
  const prefix = (arg || "").replace(/^\/+|\/+$/g, "");
  const prefixInput = h("input", { id: "watch-prefix", value: prefix, placeholder: "prefix (empty: everything)", size: 28 });
  const filter = h("input", { id: "watch-filter", placeholder: "filter keys containing…", size: 24 });
  const pause = h("button", { type: "button", id: "pause" }, "Pause");
  const state = h("span", { id: "watch-state", class: "muted" }, "connecting…");
  const tbody = h("tbody", { id: "changes" });
  const form = h(
    "form",
    { class: "toolbar" },
    h("label", {}, "Prefix ", prefixInput),
    h("button", { type: "submit" }, "Watch"),
    h("label", {}, "Filter ", filter),
    pause,
    state,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/changes/${prefixInput.value.trim().replace(/^\/+|\/+$/g, "")}`;
  });
  main.append(
    h("h1", {}, "Changes"),
    form,
    h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ["Time", "Key", "Change", "Version"].map((t) => h("th", {}, t)))), tbody),
  );
  const events = [];
  let paused = false;
  let held = 0;
  let lastId = null;
  const controller = new AbortController();

  function draw() {
    const needle = filter.value.trim();
    clear(tbody);
    for (const e of events) {
      if (needle && !e.key.includes(needle)) continue;
      tbody.append(
        h(
          "tr",
          { class: e.deleted ? "deleted" : "written", dataset: { key: e.key } },
          h("td", {}, iso(e.timestamp)),
          h("td", {}, h("a", { href: `#/keys/?key=${encodeURIComponent(e.key)}` }, e.key)),
          h("td", {}, e.deleted ? "deleted" : "written"),
          h("td", { class: "mono" }, e.uuid),
        ),
      );
    }
  }
  filter.addEventListener("input", draw);
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held = 0;
      draw();
    }
    showState();
  });
  function showState(text) {
    state.textContent = text || (paused ? `paused (${held} new held)` : "live");
  }

  async function run() {
    const base = prefix ? `/kv/${keyPath(prefix)}/_watch` : "/kv/_watch";
    while (!controller.signal.aborted) {
      const url = lastId ? `${base}?since=${encodeURIComponent(lastId)}` : base;
      try {
        await stream(
          url,
          (event) => {
            if (event.event === "ready") return showState();
            if (event.event === "error") return showState(`stream ended: ${event.data}`);
            let change;
            try {
              change = JSON.parse(event.data);
            } catch {
              return;
            }
            lastId = event.id || lastId;
            events.unshift(change);
            if (events.length > KEEP) events.length = KEEP;
            if (paused) {
              held++;
              showState();
            } else draw();
          },
          controller.signal,
        );
        showState("reconnecting…");
      } catch (err) {
        if (controller.signal.aborted) return;
        showState(explain(err));
        if (err.status === 401 || err.status === 403) return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  run();
  return () => controller.abort();
}
