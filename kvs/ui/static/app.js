// The console's shell: the router (#/cluster, #/keys/<prefix>, #/changes, #/metrics), the
// login form and the banner. Each page module exports mount(main, route) -> unmount().
import { ApiError, explain, get, setToken, token, whenUnauthorized } from "./api.js";
import { clear, h } from "./dom.js";
import * as cluster from "./cluster.js";
import * as keys from "./keys.js";
import * as changes from "./changes.js";
import * as metrics from "./metrics.js";

const PAGES = { cluster, keys, changes, metrics };
const main = document.getElementById("main");
const banner = document.getElementById("banner");
let unmount = null;
let loginReason = "";

export function showBanner(text, kind = "error") {
  banner.textContent = text;
  banner.className = `banner ${kind}`;
}

export function hideBanner() {
  banner.className = "banner hidden";
}

function route() {
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, "").split("?")[0]);
  const [page, ...rest] = hash.split("/");
  return { page: PAGES[page] ? page : "cluster", arg: rest.join("/") };
}

function render() {
  if (unmount) unmount();
  unmount = null;
  hideBanner();
  const { page, arg } = route();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  clear(main);
  if (page === "login" || needsLogin) return renderLogin();
  unmount = PAGES[page].mount(main, arg) || null;
}

let needsLogin = false;

function renderLogin() {
  if (unmount) unmount();
  unmount = null;
  clear(main);
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "paste a token",
    size: 60,
  });
  const message = h("p", { id: "login-message", class: "error" }, loginReason);
  const form = h(
    "form",
    { id: "login", class: "card login" },
    h("h2", {}, "Log in"),
    h(
      "p",
      {},
      "This node has authentication on. Paste an API token (the root token is in the node's ",
      h("code", {}, "data/root.token"),
      "; ",
      h("code", {}, "kvs token create"),
      " makes others). The console acts with exactly this token's permissions. It is kept in this tab's sessionStorage only, and sent in an Authorization header, never in a URL.",
    ),
    input,
    h("button", { type: "submit" }, "Log in"),
    message,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    setToken(value);
    try {
      await get("/kv/_ls?limit=1");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setToken("");
        message.textContent =
          "401: the node does not accept this token (unknown, expired or revoked).";
        return;
      }
      // 403: the token is valid but may not list keys; it may still do other things.
    }
    needsLogin = false;
    loginReason = "";
    updateWho();
    render();
  });
  main.append(form);
  input.focus();
}

function updateWho() {
  const who = document.getElementById("whoami");
  const out = document.getElementById("logout");
  const t = token();
  who.textContent = t ? "token set (this tab)" : "";
  out.classList.toggle("hidden", !t);
}

document.getElementById("logout").addEventListener("click", () => {
  setToken("");
  updateWho();
  needsLogin = authOn;
  loginReason = "";
  render();
});

let authOn = false;

whenUnauthorized((err) => {
  if (needsLogin) return;
  needsLogin = true;
  authOn = true;
  loginReason = token() ? explain(err) : "";
  setToken("");
  updateWho();
  render();
});

async function start() {
  // Whether this node wants a token: ask for something that needs one.
  try {
    await get("/kv/_ls?limit=1");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      authOn = true;
      needsLogin = true;
    } else if (err instanceof ApiError && err.status === 403) {
      authOn = true;
    }
  }
  updateWho();
  window.addEventListener("hashchange", render);
  render();
}

start();
