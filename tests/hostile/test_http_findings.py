"""Failures the HTTP fuzzer (kvs.testing.fuzz_http) found beyond the five crashes of issue 12
that were known by hand; one focused test each, against one real node process.

- A WebSocket handshake followed by any byte ends the node (h11 LocalProtocolError
  "Can't send data when our state is ERROR" escapes Hypercorn's connection task).
- `/cluster/info` with a current stamp and a non-ASCII tag is a 500
  (`hmac.compare_digest` refuses non-ASCII str: TypeError).
- The history of a deleted private key is readable by anyone with the `read` scope: the
  bits are checked against the live record only, and a deleted key has none.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.support.hostile import assert_node_healthy, exchange, one_node, status_of

HANDSHAKE = (
    b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_websocket_handshake_followed_by_a_byte_does_not_end_the_node(tmp_path: Path) -> None:
    with one_node(tmp_path) as live:
        answer, _ = exchange(live.port, HANDSHAKE + b"x", timeout=5.0, answers=1)
        assert_node_healthy(live)
        status = status_of(answer)
        assert status is None or 400 <= status < 500, answer[:200]


def test_cluster_info_with_a_non_ascii_tag_is_a_401_not_a_500(tmp_path: Path) -> None:
    with one_node(tmp_path) as live:
        stamp = str(time.time_ns() // 1_000_000)
        request = (
            f"GET /cluster/info HTTP/1.1\r\nHost: x\r\nX-KVS-Cluster-Auth: {stamp}.ü\r\n\r\n"
        ).encode()
        answer, _ = exchange(live.port, request, timeout=5.0, answers=1)
        assert status_of(answer) == 401, answer[:200]
        assert_node_healthy(live)


def test_the_history_of_a_deleted_private_key_stays_private(tmp_path: Path) -> None:
    secret = "only-the-owner-may-read-this"
    with one_node(tmp_path) as live, httpx.Client(base_url=live.node.url, timeout=10.0) as http:

        def call(method: str, path: str, token: str, body: object = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return http.request(method, path, headers=headers, json=body)

        reader_user = call("POST", "/api/users", live.root, {"nickname": "reader"}).json()
        token = call(
            "POST", "/api/tokens", live.root, {"user_uuid": reader_user["uuid"], "scopes": ["read"]}
        )
        reader = token.json()["token"]
        key = quote("vault/secret")
        assert call("PUT", f"/kv/{key}", live.root, {"s": secret}).status_code == 200
        meta = call("PUT", f"/kv/{key}/metadata", live.root, {"permissions": 0xF00})
        assert meta.status_code == 200, meta.text
        assert call("GET", f"/api/data/{key}/history", reader).status_code == 403
        assert call("DELETE", f"/kv/{key}", live.root).status_code == 204
        history = call("GET", f"/api/data/{key}/history", reader)
        assert secret not in history.text, f"{history.status_code} {history.text}"
        one = call("GET", f"/api/data/{key}/history/1", reader)
        assert secret not in one.text, f"{one.status_code} {one.text}"
        assert_node_healthy(live)
