"""Request bodies for the HTTP fuzzer: hostile JSON values, batches, metadata, and the
bodies and targets of the user, group and token endpoints (floor 2 of the generator, on
`http_requests.RequestParts`).

Rule: nothing here opens a socket, reads a clock or looks at a node; every choice comes
from the `rng` passed in, in a fixed order (a seed replays the same bytes).
"""

from __future__ import annotations

import random
from typing import Any

from kvs.testing.http_plan import (
    ALL_SCOPES,
    MAX_FUZZ_BODY,
)
from kvs.testing.http_requests import RequestParts
from kvs.testing.http_vocab import (
    BAD_JSON,
    DURATIONS,
    NASTY_STRINGS,
    Pairs,
    Raw,
    dump,
    pct,
)


class Bodies(RequestParts):
    """Request bodies: JSON values, batches, metadata, users, groups and tokens."""

    def _nasty_value(self, rng: random.Random, depth: int = 0) -> Any:
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(NASTY_STRINGS)
        if roll < 0.3:
            return rng.choice([0, -1, 1, 2**53 + 1, 2**64, -(2**63) - 1, 1.5, 1e308, -0.0, True])
        if roll < 0.45:
            return Raw(rng.choice(BAD_JSON[8:14] + BAD_JSON[24:28]))
        if roll < 0.55:
            n = rng.choice([10, 1000, 100_000])
            return (
                Raw(b"[" * n + b"]" * n)
                if rng.random() < 0.5
                else Raw(b'{"a":' * n + b"1" + b"}" * n)
            )
        if roll < 0.62:
            return Raw(b"[" + b"1," * rng.choice([1000, 200_000]) + b"1]")
        if roll < 0.7:
            return "s" * rng.choice([1000, 2**20, 2**20 + 10])
        if roll < 0.8 and depth < 3:
            return {
                rng.choice(NASTY_STRINGS[:8]): self._nasty_value(rng, depth + 1) for _ in range(3)
            }
        if roll < 0.9 and depth < 3:
            return [self._nasty_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        return rng.choice([None, [], {}, "", Pairs([("a", 1), ("a", 2)])])

    def _json_body(self, rng: random.Random) -> bytes:
        roll = rng.random()
        if roll < 0.35:
            return dump({"v": rng.randrange(1000), "s": rng.choice(NASTY_STRINGS[:10])})
        if roll < 0.6:
            return rng.choice(BAD_JSON)
        if roll < 0.67:
            n = rng.choice([1000, 100_000])
            return b"[" * n + b"]" * n
        return dump(self._nasty_value(rng))

    def _batch_body(self, rng: random.Random, who: str) -> bytes:
        roll = rng.random()
        if roll < 0.15:
            return self._json_body(rng)
        if roll < 0.2:
            return dump({"ops": self._nasty_value(rng)})
        count = rng.choice([0, 1, 2, 3, 5, 20, 1000, 1001, 5000])
        ops = []
        for _ in range(min(count, 20)):
            op: dict[str, Any] = {"op": rng.choice(["put", "put", "delete", "PUT", "x", None])}
            op["key"] = (
                self._key(rng, who, mutating=True) if rng.random() < 0.9 else self._nasty_value(rng)
            )
            if rng.random() < 0.8:
                op["data"] = (
                    {"v": rng.randrange(100)} if rng.random() < 0.6 else self._nasty_value(rng)
                )
            if rng.random() < 0.2:
                op["ttl"] = rng.choice([*DURATIONS, 1e400, -1, True, [], 2**70])
                if op["ttl"] == 1e400:
                    op["ttl"] = Raw(b"1e400")
            if rng.random() < 0.05:
                op["extra"] = 1
            ops.append(op)
        parts = [dump(op) for op in ops]
        if count > 20 and parts:  # the rest repeat the first, within the largest batch body
            repeat = min(count - 20, MAX_FUZZ_BODY // max(1, len(parts[0])))
            parts += [parts[0]] * repeat
        listed = b"[" + b",".join(parts) + b"]"
        if rng.random() < 0.1:
            return b'{"ops":[],"ops":' + listed + b"}"
        return b'{"ops":' + listed + b"}"

    def _metadata_body(self, rng: random.Random) -> bytes:
        body: dict[str, Any] = {}
        for name in ("permissions", "owner_uuid", "group_uuid", "ttl"):
            if rng.random() < 0.4:
                if name == "permissions":
                    body[name] = rng.choice(
                        [-1, 0, 3840, 4095, 4096, 2**70, "3840", 1.5, True, None, Raw(b"1e400")]
                    )
                elif name == "ttl":
                    body[name] = rng.choice([*DURATIONS, None, 0, -1, Raw(b"NaN"), 1e300])
                else:
                    body[name] = rng.choice(
                        ["", "nope", "{{user:reader}}", "{{group:team}}", 5, None, "x" * 5000]
                    )
        if rng.random() < 0.15:
            body["extra"] = self._nasty_value(rng)
        return dump(body) if rng.random() < 0.85 else self._json_body(rng)

    def _directory(self, rng: random.Random, who: str, kind: str) -> tuple[bytes, bytes, bytes]:
        name_field = "nickname" if kind == "users" else "groupname"
        list_field = "groups" if kind == "users" else "members"
        other = "group" if kind == "users" else "user"
        action = rng.choice(["create", "list", "get", "update", "delete"])
        base = b"/api/" + kind.encode()
        ident = self._ident(rng, kind[:-1], deletable=action == "delete")
        body: dict[str, Any] = {}
        if rng.random() < 0.9:
            body[name_field] = rng.choice(
                [f"fz-{self.plan.tag}-{rng.randrange(1000)}", *NASTY_STRINGS]
            )
        if rng.random() < 0.4:
            body[list_field] = rng.choice(
                [[], ["nope"], [f"{{{{{other}:{'team' if other == 'group' else 'reader'}}}}}"]]
                + [[self._nasty_value(rng)], self._nasty_value(rng), ["x"] * 1001]
            )
        if rng.random() < 0.1:
            body["uuid"] = "x"
        raw = dump(body) if rng.random() < 0.85 else self._json_body(rng)
        if action == "create":
            return b"POST", base, raw
        if action == "list":
            return b"GET", base, b""
        if action == "get":
            return b"GET", base + b"/" + ident, b""
        if action == "update":
            return b"PUT", base + b"/" + ident, raw
        return b"DELETE", base + b"/" + ident, b""

    def _ident(self, rng: random.Random, kind: str, *, deletable: bool) -> bytes:
        """A user/group/token id for a path. The setup's own users and tokens are never
        deleted or revoked: that would end the run's ability to judge."""
        garbage = [
            b"nope",
            b"0" * 36,
            b"f" * 65,
            b"%00",
            b"..",
            b"-" * 10,
            pct("ünï"),
            b"x" * 5000,
            b"%C2%B2",
            b"",
        ]
        if deletable or rng.random() < 0.5:
            return rng.choice(garbage)
        if kind == "user":
            return b"{{user:" + rng.choice([b"reader", b"writer", b"owner", b"admin"]) + b"}}"
        if kind == "group":
            return b"{{group:team}}"
        return b"{{tokid:" + rng.choice([b"reader", b"writer"]) + b"}}"

    def _tokens(self, rng: random.Random, who: str) -> tuple[bytes, bytes, bytes]:
        action = rng.choice(["create", "create", "list", "revoke"])
        if action == "list":
            query = rng.choice(
                [
                    b"",
                    b"?user_uuid={{user:reader}}",
                    b"?user_uuid=" + self._number(rng),
                    b"?user_uuid=",
                ]
            )
            return b"GET", b"/api/tokens" + query, b""
        if action == "revoke":
            return b"DELETE", b"/api/tokens/" + self._ident(rng, "token", deletable=True), b""
        body: dict[str, Any] = {}
        if rng.random() < 0.9:
            body["user_uuid"] = rng.choice(
                ["{{user:reader}}", "{{user:noscope}}", "nope", "", 5, None, "x" * 5000]
            )
        if rng.random() < 0.9:
            scopes = rng.sample(ALL_SCOPES, rng.randrange(4))
            if rng.random() < 0.2:
                scopes.append(rng.choice(["admin", "", "READ", "read ", "ünï", "*"]))
            body["scopes"] = scopes if rng.random() < 0.85 else self._nasty_value(rng)
        if rng.random() < 0.6:
            body["expires_in"] = rng.choice(
                [*DURATIONS, 1, 0, -1, 1e300, Raw(b"1e400"), Raw(b"NaN"), True, 2**70, 31536001]
            )
        raw = dump(body) if rng.random() < 0.85 else self._json_body(rng)
        return b"POST", b"/api/tokens", raw
