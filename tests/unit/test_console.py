"""The web console's HTTP side (issue 16): /ui/ and its assets with a strict CSP and
nosniff, open without a token; `/` redirects a browser and stays a JSON 404 for others;
hostile asset paths (traversal, encoded, NUL, unknown) are JSON 404s on the wire, never a
500 or a file outside the package; `_ls?after=` pages; `/cluster/stats` shows the last
exchange per peer. The pages themselves are tested in a real browser (tests/browser)."""

from __future__ import annotations

import json

import pytest
import trio

from kvs.api.console import CSP, load_assets
from tests.support.api import client_of, expect_error, expect_json, put
from tests.support.live_node import start_live_node

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

PAGES = ("index.html", "app.js", "api.js", "dom.js", "cluster.js", "keys.js", "changes.js")


def test_the_package_ships_every_page_and_no_inline_script_or_style():
    assets = load_assets()
    for name in (*PAGES, "metrics.js", "chart.js", "diff.js", "style.css", "favicon.svg"):
        assert name in assets, name
    html = assets["index.html"].body.decode()
    assert "<script>" not in html and "<style" not in html and " style=" not in html
    assert "onclick=" not in html and "javascript:" not in html
    for name, asset in assets.items():
        # Nothing from another origin: no absolute URL but the SVG namespace's name.
        text = asset.body.decode().replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
        assert ".innerHTML" not in text, name  # text only: a key or a value cannot inject markup
        assert "localStorage" not in text and "document.cookie" not in text, name


@pytest.mark.parametrize("auth", [False, True])
async def test_console_files_are_served_without_a_token_with_a_strict_csp(start_node, auth):
    client = client_of(await start_node(auth_enabled=auth))
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith(kind)
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    # The data is not: an API call without a token is still refused with auth on.
    assert (await client.get("/kv/_ls")).status_code == (401 if auth else 200)


@pytest.mark.parametrize("auth", [False, True])
async def test_root_redirects_a_browser_and_stays_json_for_clients(start_node, auth):
    client = client_of(await start_node(auth_enabled=auth))
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = await client.get("/", headers=browser)
    assert response.status_code == 302 and response.headers["Location"] == "/ui/"
    response = await client.get("/ui", headers=browser)
    assert response.status_code in (301, 308) and response.headers["Location"].endswith("/ui/")
    # A JSON client (or curl) gets what it got before: a JSON error.
    await expect_error(await client.get("/"), 404)
    await expect_error(await client.get("/", headers={"Accept": "application/json"}), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/../config.yaml",
        "/ui/..%2fconfig.yaml",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/ui/%2e%2e%2fconfig.yaml",
        "/ui//etc/passwd",
        "/ui/static/app.js",
        "/ui/__init__.py",
        "/ui/app.js%00.html",
        "/ui/app.js/",
        "/ui/" + "a" * 5000,
    ],
)
async def test_hostile_asset_paths_are_json_404s(client, path):
    body = await expect_error(await client.get(path), 404)
    assert "config" not in json.dumps(body)


async def test_hostile_asset_paths_on_the_wire(nursery, tmp_path):
    """Through Hypercorn's parser on a real socket (the test client normalises nothing either,
    but a browser or curl --path-as-is sends exactly these bytes)."""
    node, url = await start_live_node(nursery, tmp_path, auth_enabled=True)
    port = int(url.rsplit(":", 1)[1])
    targets = [
        "/ui/../config.yaml",
        "/ui/..%2f..%2fconfig.yaml",
        "/ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/ui/..\\config.yaml",
        "/ui/%00",
        "/ui/%ff%fe",
        "/ui/app.js?../../config.yaml",
    ]
    for target in targets:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            raw = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(65536):
                    raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if target.startswith("/ui/app.js?"):
            assert status == 200, target  # a query string names no file
            continue
        assert status in (400, 404), (target, head)
        assert b"cluster_secret" not in body and b"root:" not in body
        if status == 404:
            assert json.loads(body)["error"], target
    assert node.api.stats.app_errors == 0


async def test_ls_pages_with_after(client):
    for name in ("a", "a-x", "b", "c", "d"):
        await put(client, f"p/{name}", 1)
    await put(client, "p/a/deep", 1)
    await put(client, "p/b/deep/er", 1)
    first = await expect_json(await client.get("/kv/p/_ls?limit=2"))
    assert [c["subkey"] for c in first["children"]] == ["a", "a-x"]
    assert first["truncated"] and first["total"] == 5
    second = await expect_json(await client.get("/kv/p/_ls?limit=2&after=a-x"))
    assert [c["subkey"] for c in second["children"]] == ["b", "c"]
    assert second["total"] == 3 and second["truncated"]
    last = await expect_json(await client.get("/kv/p/_ls?limit=2&after=c"))
    assert [c["subkey"] for c in last["children"]] == ["d"] and not last["truncated"]
    # After a child with a subtree of its own: that subtree is skipped, its siblings not.
    after_a = await expect_json(await client.get("/kv/p/_ls?after=a"))
    assert [c["subkey"] for c in after_a["children"]] == ["a-x", "b", "c", "d"]
    root = await expect_json(await client.get("/kv/_ls?after=o"))
    assert [c["subkey"] for c in root["children"]] == ["p"]
    for bad in ("x/y", "%00", "%0a", "a" * 1025):
        await expect_error(await client.get(f"/kv/p/_ls?after={bad}"), 400)
