"""Which API endpoint a plain request of the HTTP fuzzer calls, with its method, target,
headers and body, and the request's bytes with hostile headers mixed in (floor 3 of the
generator, on `http_bodies.Bodies`).

Rule: nothing here opens a socket, reads a clock or looks at a node; every choice comes
from the `rng` passed in, in a fixed order (a seed replays the same bytes).
"""

from __future__ import annotations

import random

from kvs.testing.http_bodies import Bodies
from kvs.testing.http_plan import (
    MARKER_READERS,
)
from kvs.testing.http_requests import Drawn, Headers
from kvs.testing.http_vocab import (
    DURATIONS,
    METHODS,
    NUMBERS,
    SAFE_METHODS,
    pct,
)

# How often each endpoint of a plain request is drawn.
# fmt: off
ENDPOINT_WEIGHTS: dict[str, int] = {
    "kv_get": 10, "kv_put": 9, "kv_delete": 4, "ls": 5, "tree": 5, "batch": 7, "watch": 3,
    "metadata_get": 3, "metadata_put": 4, "kv_changes": 3, "history": 4, "users": 4,
    "groups": 3, "tokens": 4, "audit": 2, "backup": 1, "cluster": 4, "cluster_info": 3,
    "bootstrap": 1, "health": 2, "unknown": 3, "recover": 1,
}
# fmt: on
ENDPOINT_DRAWS = {"ls": "listing", "tree": "listing", "users": "directory", "groups": "directory"}


class Endpoints(Bodies):
    """Which API endpoint a plain request calls, and that request's bytes."""

    def _endpoint(self, rng: random.Random, who: str) -> tuple[str, bytes, bytes, list, bytes]:
        """(label, method, target, extra headers, body) for one API call."""
        choice = rng.choices(list(ENDPOINT_WEIGHTS), list(ENDPOINT_WEIGHTS.values()))[0]
        draw = getattr(self, f"_ep_{ENDPOINT_DRAWS.get(choice, choice)}")
        method, target, headers, body = draw(rng, who, choice)
        if rng.random() < 0.08:  # the wrong method on a real route (never a write by a
            # caller who may read the marker: it could change who may read a private key)
            method = rng.choice(SAFE_METHODS if who in MARKER_READERS else METHODS)
        return choice, method, target, headers, body

    # Each `_ep_<name>(rng, who, choice)` returns (method, target, extra headers, body). The
    # order of the draws inside each is part of what a seed means: keep it.

    def _ep_kv_get(self, rng: random.Random, who: str, choice: str) -> Drawn:
        headers: Headers = []
        method = rng.choice([b"GET", b"GET", b"HEAD"])
        target = b"/kv/" + pct(self._key(rng, who, mutating=False))
        if rng.random() < 0.3:
            headers.append((b"If-None-Match", self._etag_garbage(rng)))
        return method, target, headers, b""

    def _ep_kv_put(self, rng: random.Random, who: str, choice: str) -> Drawn:
        headers: Headers = []
        target = b"/kv/" + pct(self._key(rng, who, mutating=True))
        if rng.random() < 0.3:
            target += b"?ttl=" + pct(rng.choice(DURATIONS))
        if rng.random() < 0.2:
            headers.append((b"X-KVS-TTL", rng.choice(DURATIONS).encode()))
        if rng.random() < 0.25:
            headers.append((b"If-Match", self._etag_garbage(rng)))
        return b"PUT", target, headers, self._json_body(rng)

    def _ep_kv_delete(self, rng: random.Random, who: str, choice: str) -> Drawn:
        target = b"/kv/" + pct(self._key(rng, who, mutating=True))
        body = self._json_body(rng) if rng.random() < 0.2 else b""
        return b"DELETE", target, [], body

    def _ep_listing(self, rng: random.Random, who: str, choice: str) -> Drawn:
        """`ls` or `tree`."""
        plan = self.plan
        prefix = rng.choice(["", plan.public_keys[0], f"fzd-{plan.tag}", "nope/x"])
        if rng.random() < 0.2:
            prefix = self._junk_key(rng)
        name = "_ls" if choice == "ls" else "_tree"
        target = b"/kv/" + (pct(prefix) + b"/" if prefix else b"") + name.encode()
        params = ["limit", "include_metadata"] if choice == "ls" else ["limit", "depth"]
        target += self._query(rng, params + (["format"] if choice == "tree" else []))
        method = rng.choice([b"GET", b"GET", b"GET", b"HEAD", b"POST"])
        return method, target, [], b""

    def _ep_batch(self, rng: random.Random, who: str, choice: str) -> Drawn:
        method = rng.choice([b"POST"] * 9 + [b"GET", b"PUT"])
        return method, b"/kv/_batch", [], self._batch_body(rng, who)

    def _ep_watch(self, rng: random.Random, who: str, choice: str) -> Drawn:
        headers: Headers = []
        prefix = rng.choice(["", self.plan.public_keys[0], f"fzd-{self.plan.tag}/priv"])
        target = b"/kv/" + (pct(prefix) + b"/" if prefix else b"") + b"_watch"
        if rng.random() < 0.5:
            target += b"?since=" + self._since(rng)
        if rng.random() < 0.2:
            headers.append((b"Last-Event-ID", self._since(rng)))
        method = rng.choice([b"GET"] * 8 + [b"POST", b"HEAD"])
        return method, target, headers, b""

    def _ep_metadata_get(self, rng: random.Random, who: str, choice: str) -> Drawn:
        key = pct(self._key(rng, who, mutating=False))
        return b"GET", b"/kv/" + key + rng.choice([b"/metadata", b"/_metadata"]), [], b""

    def _ep_metadata_put(self, rng: random.Random, who: str, choice: str) -> Drawn:
        key = pct(self._key(rng, who, mutating=True))
        target = b"/kv/" + key + rng.choice([b"/metadata", b"/_metadata"])
        return b"PUT", target, [], self._metadata_body(rng)

    def _ep_kv_changes(self, rng: random.Random, who: str, choice: str) -> Drawn:
        return b"GET", b"/kv_changes" + self._query(rng, ["since", "limit"]), [], b""

    def _ep_history(self, rng: random.Random, who: str, choice: str) -> Drawn:
        key = self._key(rng, who, mutating=False)
        target = b"/api/data/" + pct(key) + b"/history"
        if rng.random() < 0.5:
            target += b"/" + self._number(rng)
        return b"GET", target, [], b""

    def _ep_directory(self, rng: random.Random, who: str, choice: str) -> Drawn:
        """`users` or `groups`."""
        method, target, body = self._directory(rng, who, choice)
        return method, target, [], body

    def _ep_tokens(self, rng: random.Random, who: str, choice: str) -> Drawn:
        method, target, body = self._tokens(rng, who)
        return method, target, [], body

    def _ep_audit(self, rng: random.Random, who: str, choice: str) -> Drawn:
        target = rng.choice([b"/api/audit", b"/api/audit/verify"])
        return b"GET", target + self._query(rng, ["since", "limit"]), [], b""

    def _ep_backup(self, rng: random.Random, who: str, choice: str) -> Drawn:
        # A real backup copies the store: rare, and only a few per run.
        if rng.random() < 0.15:
            return b"POST", b"/api/backup/run", [], b""
        return b"GET", b"/api/backup/status", [], b""

    def _ep_cluster(self, rng: random.Random, who: str, choice: str) -> Drawn:
        target = rng.choice(
            [b"/members/", b"/members", b"/cluster/stats", b"/merkle_tree/root", b"/metrics"]
        )
        method = rng.choice([b"GET"] * 6 + [b"HEAD", b"POST", b"DELETE"])
        return method, target, [], b""

    def _ep_cluster_info(self, rng: random.Random, who: str, choice: str) -> Drawn:
        headers: Headers = []
        stamp = rng.choice(
            [
                "²",
                "9" * rng.choice([4300, 4301, 5000, 20]),
                "0",
                "-1",
                "١٢٣",
                "",
                "1" + "0" * 12,
                "{{now}}",
                "𝟗𝟗",
            ]
        )
        tag = rng.choice(["", "x", "0" * 64, "ü" * 64, "g" * 10000])
        value = rng.choice([f"{stamp}.{tag}", stamp, f".{tag}", f"{stamp}..{tag}"])
        if rng.random() < 0.9:
            headers.append((b"X-KVS-Cluster-Auth", value.encode()))
        return b"GET", b"/cluster/info", headers, b""

    def _ep_bootstrap(self, rng: random.Random, who: str, choice: str) -> Drawn:
        method = rng.choice([b"POST"] * 4 + [b"GET"])
        body = self._json_body(rng) if rng.random() < 0.4 else b""
        return method, b"/auth/cluster-bootstrap", [], body

    def _ep_recover(self, rng: random.Random, who: str, choice: str) -> Drawn:
        """`kvs admin recover`'s door, knocked on without the secret: 401, counted."""
        headers: Headers = []
        stamp = rng.choice(["{{now}}", "0", "-1", "9" * 30, "²", ""])
        nonce = rng.choice(["00" * 16, "x" * 32, "", "ab" * 40, "0" * 17])
        tag = rng.choice(["", "0" * 64, "f" * 63, "ü" * 32, "g" * 5000])
        value = rng.choice([f"{stamp}.{nonce}.{tag}", f"{stamp}.{nonce}", tag, "..", "."])
        if rng.random() < 0.9:
            headers.append((b"X-KVS-Recover-Auth", value.encode()))
        method = rng.choice([b"POST"] * 5 + [b"GET", b"PUT"])
        body = self._json_body(rng) if rng.random() < 0.3 else b""
        return method, b"/api/admin/recover", headers, body

    def _ep_health(self, rng: random.Random, who: str, choice: str) -> Drawn:
        method = rng.choice([b"GET"] * 5 + [b"HEAD", b"POST", b"PUT", b"OPTIONS"])
        target = b"/health" + (self._query(rng, ["x"]) if rng.random() < 0.2 else b"")
        body = self._json_body(rng) if method in (b"POST", b"PUT") else b""
        return method, target, [], body

    def _ep_unknown(self, rng: random.Random, who: str, choice: str) -> Drawn:
        target = rng.choice(
            [
                b"/",
                b"/api",
                b"/api/",
                b"/api/users/" + b"f" * 65,
                b"/kv",
                b"/kv/",
                b"/ui/",
                b"/favicon.ico",
                b"/kv_changes/x",
                b"/api/data/a",
                b"/api/audit/x",
                b"/.env",
                b"/metrics/x",
                b"/health/",
                b"/HEALTH",
            ]
        )
        return rng.choice(METHODS), target, [], b""

    def _etag_garbage(self, rng: random.Random) -> bytes:
        return rng.choice(
            [
                b"*",
                b'"nope"',
                b'W/"x"',
                b"W/",
                b'""',
                b'"',
                b"0" * 36,
                b'"' + b"f" * 10000 + b'"',
                "ünï".encode(),
                b"\xff",
                b'"a", "b"',
                b"W/W/W/",
                b"{{uuid}}",
            ]
        )

    def _since(self, rng: random.Random) -> bytes:
        value = rng.choice(
            [
                *NUMBERS[:20],
                "123-" + "a" * 36,
                "1-" + "x" * 36 + "-d",
                "9" * 30 + "-" + "0" * 36,
                "0-" + "0" * 36,
                "-1-abc",
                "9" * 19 + "-" + "1" * 36,
                "²-" + "a" * 36,
            ]
        )
        return pct(value)

    def _query(self, rng: random.Random, names: list[str]) -> bytes:
        if rng.random() < 0.3:
            return b""
        parts = []
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            name = rng.choice([*names, "x", "", "limit[]", "ünï"])
            if name in ("include_metadata",):
                value = pct(rng.choice(["true", "false", "yes", "2", "", "TRUE", "ü", "\x00"]))
            elif name == "format":
                value = pct(rng.choice(["json", "nested", "xml", "", "JSON", "nested\x00"]))
            elif name == "since":
                value = self._since(rng)
            else:
                value = self._number(rng)
            parts.append(pct(name) + (b"=" + value if rng.random() < 0.95 else b""))
        if rng.random() < 0.1:
            parts.append(b"%zz=%")
        return b"?" + b"&".join(parts)

    # --- one HTTP/1.1 request ------------------------------------------------------------------

    def _api_request(
        self, rng: random.Random, node: int, who: str, *, mutate: float = 0.15
    ) -> tuple[str, bytes, bytes, bool]:
        """(label, request bytes, body, is HEAD) for one API call by `who`, sometimes with a
        header mutated."""
        label, method, target, headers, body = self._endpoint(rng, who)
        headers = self._host(rng, node) + self._auth_headers(rng, who) + headers
        if body and rng.random() < 0.7:
            headers.append(
                (b"Content-Type", rng.choice([b"application/json", b"text/plain", b"\xff"]))
            )
        if rng.random() < mutate:
            headers = self._mutate_headers(rng, headers)
        framing = "chunked" if body and rng.random() < 0.15 else "length"
        data = self._request_bytes(method, target, headers, body, framing=framing)
        return f"{label} {method.decode('latin-1')}", data, body, method == b"HEAD"

    def _mutate_headers(
        self, rng: random.Random, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        extra = rng.choice(
            [
                (b"Expect", b"100-continue"),
                (b"Connection", rng.choice([b"close", b"keep-alive", b"upgrade", b"\xff"])),
                (b"X-KVS-TTL", rng.choice(DURATIONS).encode()),
                (b"If-Match", self._etag_garbage(rng)),
                (b"If-None-Match", self._etag_garbage(rng)),
                (b"Last-Event-ID", self._since(rng)),
                (b"Cookie", b"a=" + b"b" * rng.choice([100, 10000])),
                (b"Accept-Encoding", b"gzip, br, zstd, " + b"x" * 100),
                (b"X-Forwarded-For", b"1.2.3.4, ::1, " + b"9" * 5000),
                (b"Content-Type", b"multipart/form-data; boundary=" + b"x" * 80),
                (b"Range", b"bytes=0-1,2-3"),
                (b"Transfer-Encoding", b"identity"),
                (b"Content-Encoding", b"gzip"),
                (b"X-KVS-Cluster-Auth", b"\xc2\xb2.x"),
            ]
        )
        return [*headers, extra]
