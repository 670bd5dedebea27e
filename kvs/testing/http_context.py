"""What the HTTP fuzzer's setup created (tokens, users, groups, ports), and the filling in of
the placeholders an interaction's bytes carry (`{{tok:reader}}`...) when they are sent;
plus tokens made invalid in one way each.

Rule: test tooling (see kvs.testing); it talks to nodes only as a client would.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass, field

# --- run time: placeholders ------------------------------------------------------------------------

_PLACEHOLDER = re.compile(rb"\{\{(tok|tokmut|user|group|tokid|port|now|uuid)(?::([^}]*))?\}\}")
FAKE_UUID = "00000000-0000-4000-8000-000000000000"


@dataclass
class Context:
    """What the setup created, for filling in placeholders."""

    ports: list[int]
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def resolve(self, data: bytes) -> bytes:
        if b"{{" not in data:
            return data
        return _PLACEHOLDER.sub(self._one, data)

    def _one(self, match: re.Match[bytes]) -> bytes:
        kind = match.group(1).decode()
        arg = (match.group(2) or b"").decode()
        if kind == "tok":
            return self.tokens.get(arg, "missing").encode()
        if kind == "tokmut":
            name, _, how = arg.partition(":")
            return mutate_token(self.tokens.get(name, "a.b.c"), how).encode()
        if kind == "user":
            return self.users.get(arg, FAKE_UUID).encode()
        if kind == "group":
            return self.groups.get(arg, FAKE_UUID).encode()
        if kind == "tokid":
            return self.token_ids.get(arg, FAKE_UUID).encode()
        if kind == "port":
            return str(self.ports[int(arg) % len(self.ports)]).encode()
        if kind == "now":
            return str(time.time_ns() // 1_000_000).encode()
        return FAKE_UUID.encode()


def mutate_token(token: str, how: str) -> str:
    """A real token made invalid in one way (the node must answer 401)."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if how == "flipsig" and signature:
        return f"{header}.{payload}.{signature[:-2]}{'A' if signature[-2] != 'A' else 'B'}{signature[-1]}"
    if how == "trunc":
        return token[:-10]
    if how == "nosig":
        return f"{header}.{payload}."
    if how == "algnone":
        none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        return f"{none}.{payload}."
    if how == "payload" and payload:
        return f"{header}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"
    return token + "x"
