"""The web console in a real headless Chromium against a real 3-node auth cluster (issue 16):
login with a token, the cluster page lists every member alive and turns a killed one dead
without a reload, a key is created, edited with a conflict (409 shown) and deleted through
the keys page, the changes page shows writes live, and a read-only token cannot edit.

One cluster and one browser serve the module; the tests run in order (the kill is last).
Skipped, saying so, where chromium or chromedriver is missing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvs.testing import launcher
from tests.support.browser import (
    browser_or_skip,
    console_errors,
    screenshot,
    wait_until,
)
from tests.support.procs import config_value, set_keys

NAMES = ("node1", "node2", "node3")
# Short SWIM timers: a killed node is dead within about 2 s (suspicion at most
# suspicion_mult * suspicion_max_timeout_mult * probe_interval = 2 * 2 * 0.3 s).
FAST_SWIM = {
    "probe_interval": 0.3,
    "probe_timeout": 0.15,
    "suspicion_mult": 2,
    "suspicion_max_timeout_mult": 2,
    "sync_interval": 1.0,
}


class Console:
    def __init__(self, directory: Path) -> None:
        self.lines: list[str] = []
        self.cluster = launcher.Cluster(directory, out=self.lines.append, auth=True)
        self.http = httpx.Client(timeout=5.0, trust_env=False)
        self.specs: dict[str, Any] = {}
        self.root = ""
        self.driver: Any = None

    def start(self) -> None:
        specs = self.cluster.plan(len(NAMES), 0)
        self.cluster.create(specs)
        for spec in specs:
            set_keys(spec.config, **FAST_SWIM)
        self.specs = {s.name: s for s in self.cluster.start()}
        self.root = self.cluster.root_token() or ""
        assert self.root

    def url(self, name: str = "node1") -> str:
        return str(self.specs[name].url)

    def call(self, method: str, path: str, token: str | None = None, on: str = "node1", **kw: Any):
        headers = {"Authorization": f"Bearer {token or self.root}"}
        return self.http.request(method, f"{self.url(on)}{path}", headers=headers, **kw)

    # --- the browser ------------------------------------------------------------------------------

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def open(self, fragment: str) -> None:
        self.driver.get(f"{self.url()}/ui/#/{fragment}")

    def login(self, token: str) -> None:
        self.driver.get(f"{self.url()}/ui/")
        field = wait_until("the login form", lambda: self.css("#login #token"))
        field.send_keys(token)
        self.css("#login button[type=submit]").click()
        wait_until("logged in", lambda: not self.all("#login") and self.all("#members tr"))

    def logout(self) -> None:
        self.css("#logout").click()
        wait_until("the login form again", lambda: self.css("#login"))

    def text(self, selector: str) -> str:
        return str(self.css(selector).text)

    def set_value(self, selector: str, value: str) -> None:
        field = self.css(selector)
        field.clear()
        field.send_keys(value)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    driver = browser_or_skip()
    live = Console(tmp_path_factory.mktemp("console"))
    live.driver = driver
    try:
        live.start()
        yield live
    finally:
        driver.quit()
        live.cluster.stop()
        live.http.close()
    secret = config_value(live.specs["node1"].config, "cluster_secret")
    for spec in live.specs.values():
        log = spec.log.read_text(errors="replace")
        assert secret not in log and live.root not in log


def _member_states(c: Console) -> dict[str, str]:
    return {
        row.get_attribute("data-node"): row.get_attribute("data-state")
        for row in c.all("#members tr")
    }


def test_login_then_cluster_page_lists_every_member_alive(console: Console) -> None:
    c = console
    c.driver.get(f"{c.url()}/ui/")
    # Auth is on: the console asks for a token before anything else.
    wait_until("the login form", lambda: c.css("#login #token"))
    c.set_value("#token", "not-a-token")
    c.css("#login button[type=submit]").click()
    wait_until("401 explained", lambda: "401" in c.text("#login-message"))
    screenshot(c.driver, "login")
    c.set_value("#token", c.root)
    c.css("#login button[type=submit]").click()
    states = wait_until(
        "three members alive on the page",
        lambda: (s := _member_states(c)) and set(s.values()) == {"alive"} and len(s) == 3 and s,
    )
    assert set(states) == set(NAMES)
    # scripts/cluster.py start (the launcher) prints where the console is.
    assert f"console: {c.url()}/ui/ (every node serves one)" in c.lines
    wait_until("the node's mode", lambda: c.text("#self-mode") == "normal")
    # Per-peer sync status fills in once anti-entropy ran (sync_interval 1 s).
    wait_until(
        "a peer's last exchange shown",
        lambda: "ago" in c.text("#members tr[data-node=node2] td:nth-child(7)"),
    )
    assert console_errors(c.driver) == []
    # The token never appears in a URL.
    assert c.root not in c.driver.current_url


def _seed_data(c: Console) -> None:
    ops = [
        {"op": "put", "key": "home/kitchen/fridge", "data": {"temp_c": 4, "door": "closed"}},
        {"op": "put", "key": "home/kitchen/oven", "data": {"temp_c": 180, "mode": "fan"}},
        {"op": "put", "key": "home/room/socks", "data": {"colour": "red", "pairs": 3}},
        {
            "op": "put",
            "key": "config/app",
            "data": {"theme": "dark", "retries": 5, "features": ["a", "b"]},
        },
    ] + [
        {"op": "put", "key": f"sensors/s{i:03d}", "data": {"reading": i * 1.5}} for i in range(150)
    ]
    assert c.call("POST", "/kv/_batch", json={"ops": ops}).status_code == 200


def _open_key(c: Console, key: str) -> None:
    c.driver.get(f"{c.url()}/ui/#/keys/?key={key}")
    c.driver.refresh()
    wait_until(f"{key} shown", lambda: c.text("#key-name") == key)


def test_create_edit_with_conflict_and_delete_a_key(console: Console) -> None:
    c = console
    _seed_data(c)
    c.open("keys")
    # The lazy tree: top-level folders, then a page of 100 children with a "more" button.
    wait_until("the root listing", lambda: c.all('#tree li.folder[data-prefix="sensors"]'))
    c.css('#tree li.folder[data-prefix="sensors"] > .toggle').click()
    wait_until(
        "a page of sensors",
        lambda: len(c.all('#tree li.folder[data-prefix="sensors"] a.key')) == 100,
    )
    c.css('#tree li.folder[data-prefix="sensors"] li.more button').click()
    wait_until(
        "the next page", lambda: len(c.all('#tree li.folder[data-prefix="sensors"] a.key')) == 150
    )

    # Create.
    c.css("#new-key").click()
    c.set_value("#edit-key", "home/garden/hose")
    c.set_value("#edit-value", json.dumps({"length_m": 25}))
    c.css("#save").click()
    wait_until("created", lambda: c.text("#key-status") == "Created.")
    assert c.call("GET", "/kv/home/garden/hose").json()["data"] == {"length_m": 25}

    # Edit, while someone else writes the key on node 2: the save is refused with a 409.
    c.css("#edit").click()
    other = c.call("PUT", "/kv/home/garden/hose", on="node2", json={"length_m": 30})
    assert other.status_code == 200
    wait_until(
        "node 1 has node 2's write",
        lambda: c.call("GET", "/kv/home/garden/hose").json()["uuid"] == other.json()["uuid"],
    )
    c.set_value("#edit-value", json.dumps({"length_m": 99}))
    c.css("#save").click()
    wait_until("the 409 explained", lambda: "409 Conflict" in c.text("#key-status"))
    assert c.call("GET", "/kv/home/garden/hose").json()["data"] == {"length_m": 30}
    # Reload the current version and edit again: now it saves.
    c.css("#reload-key").click()
    wait_until("the current value", lambda: json.loads(c.text("#value")) == {"length_m": 30})
    c.css("#edit").click()
    c.set_value("#edit-value", json.dumps({"length_m": 31, "reel": True}))
    c.css("#save").click()
    wait_until("saved", lambda: c.text("#key-status") == "Saved.")
    assert c.call("GET", "/kv/home/garden/hose").json()["data"] == {"length_m": 31, "reel": True}
    # The history, with a diff against the current version.
    c.css("#history summary").click()
    wait_until("history listed", lambda: c.all("#history button[data-version]"))
    c.css('#history button[data-version="1"]').click()
    diff = wait_until("a diff", lambda: c.css("#diff pre").text)
    assert '+   "reel": true' in diff and '-   "length_m": 30' in diff
    c.driver.execute_script("document.getElementById('tree').scrollTop = 0")
    screenshot(c.driver, "keys")

    # Set a TTL, then delete.
    c.set_value("#ttl", "1h")
    c.css("#ttl-form button").click()
    wait_until("TTL shown", lambda: "s left" in c.text("#meta-ttl"))
    c.css("#delete").click()
    c.css("#confirm-delete").click()
    wait_until("deleted", lambda: c.text("#key-message") == "Deleted home/garden/hose.")
    assert c.call("GET", "/kv/home/garden/hose").status_code == 404
    assert console_errors(c.driver) == []


def test_changes_page_shows_writes_live(console: Console) -> None:
    c = console
    c.open("changes/home")
    wait_until("the stream is live", lambda: c.text("#watch-state") == "live")
    for i in range(3):
        assert c.call("PUT", f"/kv/home/room/lamp{i}", json={"on": bool(i % 2)}).status_code == 200
    assert c.call("DELETE", "/kv/home/room/lamp0").status_code == 204
    c.call("PUT", "/kv/config/ignored", json=1)  # outside the prefix
    c.call("PUT", "/kv/home/hall/light", json={"on": True}, on="node2")  # replicated to node 1
    wait_until("five changes", lambda: len(c.all("#changes tr")) == 5)
    rows = [(r.get_attribute("data-key"), r.get_attribute("class")) for r in c.all("#changes tr")]
    assert sorted(rows) == [
        ("home/hall/light", "written"),
        ("home/room/lamp0", "deleted"),
        ("home/room/lamp0", "written"),
        ("home/room/lamp1", "written"),
        ("home/room/lamp2", "written"),
    ]
    c.set_value("#watch-filter", "lamp1")
    wait_until("filtered", lambda: len(c.all("#changes tr")) == 1)
    c.css("#pause").click()
    c.call("PUT", "/kv/home/room/lamp1", json={"on": False})
    wait_until("held while paused", lambda: "1 new held" in c.text("#watch-state"))
    assert len(c.all("#changes tr")) == 1
    c.css("#pause").click()
    wait_until("shown on resume", lambda: len(c.all("#changes tr")) == 2)
    from selenium.webdriver.common.keys import Keys

    c.css("#watch-filter").send_keys(Keys.BACKSPACE * 5)
    wait_until("unfiltered", lambda: len(c.all("#changes tr")) == 6)
    screenshot(c.driver, "changes")


def test_metrics_page_charts_the_nodes_metrics(console: Console) -> None:
    c = console
    c.open("metrics")
    # Some traffic to chart: writes on two nodes (replicated both ways) and reads.
    for i in range(12):
        c.call(
            "POST",
            "/kv/_batch",
            json={"ops": [{"op": "put", "key": f"load/a{i}-{j}", "data": j} for j in range(50)]},
        )
        c.call("PUT", f"/kv/load/b{i}", json={"i": i}, on="node2")
        c.call("GET", "/kv/load/_ls")
        time.sleep(0.5)
    wait_until("eight samples", lambda: int(c.text("#metrics-status").split()[0]) >= 8)
    for chart in ("requests", "latency", "replication", "lag", "gossip"):
        assert c.all(f"#chart-{chart} svg path"), chart
    screenshot(c.driver, "metrics")
    assert console_errors(c.driver) == []


def test_a_read_only_token_cannot_edit(console: Console) -> None:
    c = console
    user = c.call("POST", "/api/users", json={"nickname": "viewer"}).json()["uuid"]
    answer = c.call("POST", "/api/tokens", json={"user_uuid": user, "scopes": ["read"]})
    assert answer.status_code == 201, answer.text
    reader = answer.json()["token"]
    c.call("PUT", "/kv/shared/notice", json={"text": "hello"})
    c.call("PUT", "/kv/shared/notice/metadata", json={"permissions": 0xFFF})
    c.logout()
    c.login(reader)
    _open_key(c, "shared/notice")
    c.css("#edit").click()
    c.set_value("#edit-value", json.dumps({"text": "defaced"}))
    c.css("#save").click()
    wait_until("the 403 explained", lambda: "403 Forbidden" in c.text("#key-status"))
    c.css("#cancel").click()
    wait_until("the key again", lambda: c.all("#delete"))
    c.css("#delete").click()
    c.css("#confirm-delete").click()
    wait_until("the delete refused", lambda: "403 Forbidden" in c.text("#key-status"))
    assert c.call("GET", "/kv/shared/notice").json()["data"] == {"text": "hello"}
    c.logout()
    c.login(c.root)


def test_a_killed_member_turns_dead_on_the_page_without_a_reload(console: Console) -> None:
    c = console
    c.open("cluster")
    wait_until("all alive", lambda: set(_member_states(c).values()) == {"alive"})
    screenshot(c.driver, "cluster")
    url_before = c.driver.current_url
    c.cluster.kill("node3")
    wait_until("node3 dead on the page", lambda: _member_states(c).get("node3") == "dead")
    assert c.driver.current_url == url_before
    assert {k: v for k, v in _member_states(c).items() if k != "node3"} == {
        "node1": "alive",
        "node2": "alive",
    }
    screenshot(c.driver, "cluster-dead")
