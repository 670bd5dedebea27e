"""Headless Chromium for the console's browser tests (tests/browser): Debian's `chromium`
and `chromium-driver` driven by Selenium. Where either is missing the tests are skipped,
saying so; `.ci/run` installs both, so CI always runs them.

`KVS_SCREENSHOTS=1` makes `screenshot()` write docs/img/<name>.png (the README shows them);
without it nothing is written, so a test run leaves the tree clean."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WAIT = 30.0  # the page polls every second; generous for a loaded 2-core machine


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def browser_or_skip() -> Any:
    """A headless Chromium WebDriver, or pytest.skip naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "headless browser tests need chromium and chromedriver "
            "(apt-get install chromium chromium-driver); not found on PATH"
        )
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--window-size=1360,860",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something true; return that (fail naming `what`)."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - started < timeout:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # a node not there yet, a stale element: poll again
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what} (last error: {last!r})")


def screenshot(driver: Any, name: str) -> None:
    if os.environ.get("KVS_SCREENSHOTS") != "1":
        return
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(DOCS_IMG / f"{name}.png"))


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors (a CSP violation shows up here), minus the expected
    failed-request lines of answers the page handles (401, 403, 404, 409)."""
    errors = []
    for entry in driver.get_log("browser"):
        message = entry.get("message", "")
        if entry.get("level") != "SEVERE":
            continue
        if "the server responded with a status of" in message:
            continue
        errors.append(message)
    return errors
