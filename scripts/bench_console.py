#!/usr/bin/env python3
"""How fast the console's pages render on a node, measured in headless Chromium.

    python scripts/bench_console.py http://127.0.0.1:8080 [--token T] [--prefix bulk]

Loads /ui/ fresh for each page and reports the time from navigation start until the page
shows its data: the cluster page's member rows, the keys page's first listing (the root,
then `--prefix`, the largest folder), the key detail of one key under it. Needs selenium,
chromium and chromedriver (as the browser tests do)."""

from __future__ import annotations

import argparse
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

SINCE_START = "return performance.now()"


def driver() -> webdriver.Chrome:
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,860"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def timed(d: webdriver.Chrome, url: str, ready: str, token: str | None) -> float:
    """Milliseconds from navigation start until `ready` (a CSS selector) is on the page."""
    d.get("about:blank")
    if token:
        d.get(url.split("#")[0])
        d.execute_script("sessionStorage.setItem('kvs.token', arguments[0])", token)
    d.get(url)
    if token:
        d.refresh()
    deadline = time.monotonic() + 30
    while not d.find_elements(By.CSS_SELECTOR, ready):
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}: {ready} not shown in 30 s")
        time.sleep(0.005)
    return float(d.execute_script(SINCE_START))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--prefix", default="bulk")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = args.url.rstrip("/")
    pages = {
        "cluster": (f"{base}/ui/#/cluster", "#members tr"),
        "keys (root)": (f"{base}/ui/#/keys", "#tree li li"),
        f"keys ({args.prefix}/)": (f"{base}/ui/#/keys/{args.prefix}", "#tree li li"),
        "changes": (f"{base}/ui/#/changes", "#watch-state"),
        "metrics": (f"{base}/ui/#/metrics", "#chart-gossip svg"),
    }
    d = driver()
    try:
        for name, (url, ready) in pages.items():
            runs = sorted(timed(d, url, ready, args.token) for _ in range(args.runs))
            print(f"{name:24} median {runs[len(runs) // 2]:6.0f} ms   max {runs[-1]:6.0f} ms")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
