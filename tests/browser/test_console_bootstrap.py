"""The console's cluster page shows a joining node's bootstrap while it syncs (issue 17:
"kvs status and the console show a syncing node's progress"): a seed with 6,000 keys, a
joiner paced by `sync_throttle_delay` so the bootstrap lasts seconds, and a headless
Chromium on the joiner's /ui/ that sees the "Bootstrap" card count keys received of those
expected, then the card go once the node is normal. Auth off: a joiner has no users yet.
Skipped, saying so, where chromium or chromedriver is missing."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.support.browser import browser_or_skip, console_errors, wait_until
from tests.support.procs import config_value, init_config, running

KEYS = 6000


def test_the_cluster_page_shows_a_joining_nodes_bootstrap(tmp_path: Path) -> None:
    browser = browser_or_skip()
    try:
        seed_config = init_config(tmp_path / "seed", node_id="seed", auth_enabled=False)
        with running(seed_config) as seed:
            with httpx.Client(timeout=30, trust_env=False) as c:
                for start in range(0, KEYS, 1000):
                    ops = [
                        {"op": "put", "key": f"boot/{i:05d}", "data": {"i": i}}
                        for i in range(start, start + 1000)
                    ]
                    assert c.post(f"{seed.base_url}/kv/_batch", json={"ops": ops}).is_success
            joiner_config = init_config(
                tmp_path / "joiner",
                node_id="joiner",
                auth_enabled=False,
                cluster_secret=config_value(seed_config, "cluster_secret"),
                sync_throttle_delay="0.4s",
                sync_snapshot_min_keys=0,
            )
            text = joiner_config.read_text()
            seed_address = f"127.0.0.1:{seed.port}"
            joiner_config.write_text(
                text.replace("seed_nodes: []", f'seed_nodes: ["{seed_address}"]')
            )
            with running(joiner_config) as joiner:
                browser.get(f"{joiner.base_url}/ui/")

                def progress() -> str:
                    card = browser.find_element("id", "self-sync").text
                    return card if re.search(r"^[1-9][\d,]* of ~[\d,]+", card) else ""

                shown = wait_until("the Bootstrap card counts keys received", progress)
                expected = int(re.search(r"of ~([\d,]+)", shown).group(1).replace(",", ""))  # type: ignore[union-attr]
                assert expected >= KEYS, shown
                assert "keys/s" in shown, shown
                wait_until(
                    "the joiner is normal and the card is gone",
                    lambda: (
                        browser.find_element("id", "self-mode").text == "normal"
                        and not browser.find_elements("id", "self-sync")
                    ),
                    timeout=120,
                )
                assert console_errors(browser) == []
    finally:
        browser.quit()
