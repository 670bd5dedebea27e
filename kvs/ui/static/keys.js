// The keys page: a lazy tree under a prefix (paged like _ls: 100 children a request, "more"
// asks for the next page with `after`), and the selected key: value, version, TTL, owner,
// group, permission bits, history with a diff; create, edit (If-Match), delete, set a TTL.
import { explain, get, keyPath, request } from "./api.js";
import { bytes, clear, h, iso } from "./dom.js";
import { diffLines } from "./diff.js";

const PAGE = 100;
const SHOW_BYTES = 200 * 1024; // larger values are shown cut, with a button for the rest

export function mount(main, arg) {
  const prefix = (arg || "").replace(/^\/+|\/+$/g, "");
  const selected = new URLSearchParams(location.hash.split("?")[1] || "").get("key");
  const tree = h("div", { id: "tree", class: "tree" });
  const detail = h("div", { id: "detail", class: "detail" });
  const go = h("input", { id: "prefix", value: prefix, placeholder: "prefix, e.g. home/room", size: 30 });
  const nav = h(
    "form",
    { class: "toolbar", id: "prefix-form" },
    h("label", { for: "prefix" }, "Prefix "),
    go,
    h("button", { type: "submit" }, "Open"),
    h("button", { type: "button", id: "new-key", onclick: () => editor(detail, null, prefix, tree) }, "New key"),
  );
  nav.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/keys/${go.value.trim().replace(/^\/+|\/+$/g, "")}`;
  });
  main.append(h("h1", {}, "Keys"), nav, h("div", { class: "split" }, tree, detail));
  const started = performance.now();
  const root = branch(prefix, prefix || "(root)", detail, tree);
  tree.append(root.el);
  root.open().then(() => {
    tree.dataset.renderedMs = String(Math.round(performance.now() - started));
  });
  if (selected) show(detail, selected, tree);
  else detail.append(h("p", { class: "muted" }, "Select a key, or create one."));
  return null;
}

// One folder of the tree: its children are fetched when it is first opened.
function branch(prefix, label, detail, tree) {
  const list = h("ul", { class: "children" });
  const toggle = h("button", { type: "button", class: "toggle", "aria-expanded": "false" }, "▸");
  const el = h("li", { class: "folder", dataset: { prefix } }, toggle, h("span", { class: "name" }, label), list);
  let loaded = false;
  let isOpen = false;
  async function load(after) {
    const base = prefix ? `/kv/${keyPath(prefix)}/_ls` : "/kv/_ls";
    const params = new URLSearchParams({ include_metadata: "true", limit: String(PAGE) });
    if (after) params.set("after", after);
    let page;
    try {
      page = await get(`${base}?${params}`);
    } catch (err) {
      list.append(h("li", { class: "error" }, explain(err)));
      return;
    }
    for (const child of page.children) {
      const full = prefix ? `${prefix}/${child.subkey}` : child.subkey;
      if (child.has_children) {
        const sub = branch(full, child.subkey, detail, tree);
        if (child.is_key) sub.el.prepend(keyLink(full, child, detail, tree, "(value)"));
        list.append(sub.el);
      } else {
        list.append(h("li", { class: "leaf" }, keyLink(full, child, detail, tree)));
      }
    }
    if (!page.children.length && !after) list.append(h("li", { class: "muted" }, "(empty)"));
    if (page.truncated) {
      const last = page.children[page.children.length - 1].subkey;
      const more = h(
        "li",
        { class: "more" },
        h(
          "button",
          {
            type: "button",
            class: "link",
            onclick: async () => {
              more.remove();
              await load(last);
            },
          },
          `more… (${page.total - page.children.length} after ${last})`,
        ),
      );
      list.append(more);
    }
  }
  async function open() {
    isOpen = true;
    el.classList.add("open");
    toggle.textContent = "▾";
    toggle.setAttribute("aria-expanded", "true");
    if (!loaded) {
      loaded = true;
      await load("");
    }
  }
  toggle.addEventListener("click", () => {
    if (isOpen) {
      isOpen = false;
      el.classList.remove("open");
      toggle.textContent = "▸";
      toggle.setAttribute("aria-expanded", "false");
    } else open();
  });
  return { el, open };
}

function keyLink(full, child, detail, tree, label) {
  const extra = child.expires_at ? " ⏱" : "";
  return h(
    "a",
    {
      href: `#/keys/${location.hash.replace(/^#\/keys\/?/, "").split("?")[0]}?key=${encodeURIComponent(full)}`,
      class: "key",
      dataset: { key: full },
      title: `${bytes(child.size || 0)}${child.expires_at ? `, expires ${iso(child.expires_at)}` : ""}`,
      onclick: (event) => {
        event.preventDefault();
        history.replaceState(null, "", event.currentTarget.getAttribute("href"));
        show(detail, full, tree);
      },
    },
    (label || child.subkey) + extra,
  );
}

function message(el, text, kind = "error") {
  clear(el).append(h("p", { class: kind, id: "key-message" }, text));
}

async function show(detail, key, tree) {
  clear(detail).append(h("p", { class: "muted" }, `Loading ${key}…`));
  let value;
  try {
    value = await get(`/kv/${keyPath(key)}`);
  } catch (err) {
    message(detail, explain(err));
    return;
  }
  const meta = await get(`/kv/${keyPath(key)}/metadata`).catch(() => null);
  const text = JSON.stringify(value.data, null, 2);
  const pre = h("pre", { class: "value", id: "value" });
  pre.textContent = text.length > SHOW_BYTES ? text.slice(0, SHOW_BYTES) : text;
  const status = h("div", { id: "key-status" });
  const rows = [
    ["Version", value.uuid, "meta-uuid"],
    ["Written", `${iso(value.timestamp)} (${value.timestamp})`, "meta-timestamp"],
    ["Size", bytes(new Blob([text]).size), "meta-size"],
  ];
  if (meta) {
    rows.push(
      ["TTL", meta.ttl ? `${meta.ttl} s left` : "none", "meta-ttl"],
      ["Owner", meta.owner_uuid || "none", "meta-owner"],
      ["Group", meta.group_uuid || "none", "meta-group"],
      ["Permissions", permissions(meta.permissions), "meta-permissions"],
    );
  }
  const actions = h(
    "div",
    { class: "toolbar" },
    h("button", { type: "button", id: "edit", onclick: () => editor(detail, { key, value }, "", tree) }, "Edit"),
    h("button", { type: "button", id: "delete", class: "danger", onclick: () => confirmDelete(status, key, value, detail, tree) }, "Delete"),
    ttlForm(status, key, value, detail, tree),
  );
  const parts = [
    h("h2", { id: "key-name" }, key),
    h("table", { class: "meta" }, rows.map(([k, v, id]) => h("tr", {}, h("th", {}, k), h("td", { id }, v)))),
    actions,
    status,
    pre,
    text.length > SHOW_BYTES
      ? h("button", { type: "button", class: "link", onclick: (e) => { pre.textContent = text; e.target.remove(); } }, `show all ${bytes(text.length)}`)
      : null,
    historyView(key, value),
  ];
  clear(detail).append(...parts.filter(Boolean));
}

function permissions(bits) {
  if (typeof bits !== "number") return "n/a";
  const who = ["owner", "group", "others"];
  const parts = who.map((w, i) => {
    const b = (bits >> (8 - 4 * i)) & 0xf;
    // Create 8, Delete 4, Write 2, Read 1 (docs/security.md), shown as "cdwr".
    const flags = `${b & 8 ? "c" : "-"}${b & 4 ? "d" : "-"}${b & 2 ? "w" : "-"}${b & 1 ? "r" : "-"}`;
    return `${w} ${flags}`;
  });
  return `0x${bits.toString(16).toUpperCase().padStart(3, "0")} (${parts.join(", ")})`;
}

function ttlForm(status, key, value, detail, tree) {
  const input = h("input", { id: "ttl", placeholder: "TTL, e.g. 30s, 1h (empty: none)", size: 22 });
  const form = h("form", { class: "inline", id: "ttl-form" }, input, h("button", { type: "submit" }, "Set TTL"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const ttl = input.value.trim();
    const query = ttl ? `?ttl=${encodeURIComponent(ttl)}` : "";
    try {
      await request("PUT", `/kv/${keyPath(key)}${query}`, {
        body: JSON.stringify(value.data),
        headers: { "If-Match": `"${value.uuid}"` },
      });
      await show(detail, key, tree);
      message(detail.querySelector("#key-status"), ttl ? `TTL set: ${ttl}` : "TTL removed", "ok");
    } catch (err) {
      message(status, explain(err));
    }
  });
  return form;
}

function confirmDelete(status, key, value, detail, tree) {
  clear(status).append(
    h(
      "p",
      { class: "warn" },
      `Delete ${key}? `,
      h(
        "button",
        {
          type: "button",
          id: "confirm-delete",
          class: "danger",
          onclick: async () => {
            try {
              await request("DELETE", `/kv/${keyPath(key)}`);
              clear(detail).append(h("p", { class: "ok", id: "key-message" }, `Deleted ${key}.`));
              const link = tree.querySelector(`a.key[data-key="${CSS.escape(key)}"]`);
              if (link) link.closest("li").remove();
            } catch (err) {
              message(status, explain(err));
            }
          },
        },
        "Yes, delete",
      ),
      " ",
      h("button", { type: "button", onclick: () => clear(status) }, "Cancel"),
    ),
  );
}

// Create (current === null) or edit a key; an edit is sent with If-Match.
function editor(detail, current, prefix, tree) {
  const name = h("input", {
    id: "edit-key",
    value: current ? current.key : prefix ? `${prefix}/` : "",
    size: 50,
    readOnly: Boolean(current),
  });
  const area = h("textarea", { id: "edit-value", rows: 16, cols: 80, spellcheck: "false" });
  area.value = current ? JSON.stringify(current.value.data, null, 2) : "{\n  \n}";
  const ttl = h("input", { id: "edit-ttl", placeholder: "TTL (optional), e.g. 1h", size: 20 });
  const status = h("div", { id: "key-status" });
  const form = h(
    "form",
    { class: "card editor", id: "editor" },
    h("h2", {}, current ? `Edit ${current.key}` : "New key"),
    h("label", {}, "Key ", name),
    h("label", {}, "Value (JSON)", area),
    h("label", {}, "TTL ", ttl),
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "submit", id: "save" }, current ? "Save (If-Match)" : "Create"),
      h("button", { type: "button", id: "cancel", onclick: () => (current ? show(detail, current.key, tree) : clear(detail)) }, "Cancel"),
    ),
    current ? h("p", { class: "muted" }, `Editing version ${current.value.uuid}; the save fails with 409 if anyone wrote the key since.`) : null,
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = name.value.trim().replace(/^\/+|\/+$/g, "");
    let body;
    try {
      body = JSON.stringify(JSON.parse(area.value));
    } catch (err) {
      message(status, `Not valid JSON: ${err.message}`);
      return;
    }
    const headers = current ? { "If-Match": `"${current.value.uuid}"` } : {};
    const query = ttl.value.trim() ? `?ttl=${encodeURIComponent(ttl.value.trim())}` : "";
    try {
      await request("PUT", `/kv/${keyPath(key)}${query}`, { body, headers });
    } catch (err) {
      message(status, explain(err), err.status === 409 ? "conflict" : "error");
      if (err.status === 409) {
        status.append(
          h("button", { type: "button", id: "reload-key", onclick: () => show(detail, key, tree) }, "Reload the current version"),
        );
      }
      return;
    }
    await show(detail, key, tree);
    const msg = detail.querySelector("#key-status");
    if (msg) message(msg, current ? "Saved." : "Created.", "ok");
  });
  clear(detail).append(form);
  (current ? area : name).focus();
}

function historyView(key, value) {
  const box = h("details", { class: "history", id: "history" }, h("summary", {}, "History"));
  let loaded = false;
  box.addEventListener("toggle", async () => {
    if (!box.open || loaded) return;
    loaded = true;
    let hist;
    try {
      hist = await get(`/api/data/${keyPath(key)}/history`);
    } catch (err) {
      box.append(h("p", { class: "error" }, explain(err)));
      return;
    }
    if (!hist.versions.length) {
      box.append(h("p", { class: "muted" }, "No previous versions."));
      return;
    }
    const current = JSON.stringify(value.data, null, 2);
    const out = h("div", { class: "diff", id: "diff" });
    const list = h("ul", { class: "versions" });
    hist.versions.forEach((v, i) => {
      const label = `${iso(v.timestamp)} ${v.deleted ? "(deleted)" : ""} ${v.uuid.slice(0, 8)}`;
      list.append(
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "link",
              dataset: { version: String(i + 1) },
              onclick: () => {
                const old = v.deleted ? "" : JSON.stringify(v.data, null, 2);
                clear(out).append(h("p", { class: "muted" }, `${label} → current`), renderDiff(diffLines(old, current)));
              },
            },
            label,
          ),
        ),
      );
    });
    box.append(list, out);
  });
  return box;
}

function renderDiff(ops) {
  return h(
    "pre",
    { class: "diff-lines" },
    ops.map(([op, line]) => h("span", { class: op === "+" ? "add" : op === "-" ? "del" : "same" }, `${op} ${line}\n`)),
  );
}
