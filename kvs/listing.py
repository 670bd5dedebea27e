"""Directory-style views of the key space (`_ls`, `_tree`) as range scans over sorted keys.

Keys sort as UTF-8 bytes, so every key under `a/b/` lies in one contiguous range. A listing
only ever walks that range, and `_ls` jumps over each child's subtree once it has seen a live
key in it (seek to `prefix/child` + "0", the byte after "/"), so its cost grows with the
number of children, not the number of keys below them.

Both take `visible`, the caller's read rule (kvs/api/guard.py `readable_by`): a key it refuses
is not listed, and a child is listed as a directory only for a key below it that the caller
may see -- so not even a path segment of a hidden key shows. Hidden keys cost a scan: `_ls`
reads on through a subtree until it finds a visible key in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvs.model import SYSTEM_PREFIX, Record
from kvs.store import Store

_AFTER_SLASH = "0"  # chr(ord("/") + 1): the first key past a "x/..." subtree is "x0"
_SYSTEM_END = SYSTEM_PREFIX[:-1] + _AFTER_SLASH  # first key past the system records


def _range(prefix: str) -> tuple[str, str | None]:
    """The half-open key range holding every key strictly below `prefix` (None: no end)."""
    if not prefix:
        return "", None
    return prefix + "/", prefix + _AFTER_SLASH


@dataclass
class Child:
    subkey: str
    record: Record | None = None  # set when the child is itself a live key
    has_children: bool = False

    def to_json(self, include_metadata: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"subkey": self.subkey}
        if self.record is not None:
            out["timestamp"] = self.record.version.timestamp
        if include_metadata:
            out["is_key"] = self.record is not None
            out["has_children"] = self.has_children
            if self.record is not None:
                out["uuid"] = self.record.version.uuid
                out["size"] = len(self.record.value or b"")
                if self.record.expires_at is not None:
                    out["expires_at"] = self.record.expires_at
        return out


Visible = Callable[[Record], bool]


def _everything(record: Record) -> bool:
    return True


def list_children(
    store: Store,
    prefix: str,
    limit: int,
    now_ms: int,
    visible: Visible = _everything,
    after: str = "",
) -> tuple[list[Child], int]:
    """Direct children of `prefix` (sorted), up to `limit`, and the total number of children
    (those with a live, visible key at or below them). With `after`, only the children that
    sort after that one (the next page: pass the last subkey of the previous one)."""
    start, end = _range(prefix)
    base = len(start)
    children: dict[str, Child] = {}
    position = start + after
    while True:
        found = False
        for record in store.scan(position, end):
            found = True
            if not prefix and record.key.startswith(SYSTEM_PREFIX):
                position = _SYSTEM_END  # users, groups and tokens are not client keys
                break
            if not record.live(now_ms) or not visible(record):
                continue
            rest = record.key[base:]
            name, slash, _ = rest.partition("/")
            if after and name.encode() <= after.encode(
                "utf-8", "replace"
            ):  # the last page's last child
                if slash:
                    position = start + name + _AFTER_SLASH
                    break
                continue
            child = children.setdefault(name, Child(name))
            if not slash:
                child.record = record
                continue
            child.has_children = True
            # Skip the rest of this child's subtree: one live key is enough to list it.
            position = start + name + _AFTER_SLASH
            break
        else:
            break
        if not found:
            break
    ordered = sorted(children.values(), key=lambda c: c.subkey.encode())
    return ordered[:limit], len(ordered)


@dataclass
class TreeNode:
    subkey: str
    record: Record | None = None
    children: dict[str, TreeNode] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subkey": self.subkey}
        if self.record is not None:
            out["timestamp"] = self.record.version.timestamp
        if self.children:
            out["children"] = _sorted_json(self.children)
        return out


def _sorted_json(children: dict[str, TreeNode]) -> list[dict[str, Any]]:
    # Siblings in subkey order, as `_ls` lists them: key order differs when a parent is not a
    # key itself ("a!b" < "a/x", yet as siblings "a" < "a!b").
    return [children[name].to_json() for name in sorted(children, key=str.encode)]


def list_tree(
    store: Store,
    prefix: str,
    depth: int,
    limit: int,
    now_ms: int,
    visible: Visible = _everything,
    *,
    after: str = "",
    count_all: bool = True,
) -> tuple[list[Record], int]:
    """Live, visible keys below `prefix` at most `depth` levels down, in key order: (first
    `limit`, total). `after`: only keys past it (a page's last key: the next page).
    `count_all=False` stops at `limit + 1` keys (total is then at most that)."""
    if depth < 1:
        return [], 0  # nothing lies less than one level down (and the skip below needs depth >= 1)
    start, end = _range(prefix)
    base = len(start)
    keys: list[Record] = []
    total = 0
    position = max(start, after + "\x00") if after else start
    while True:
        skipped = False
        for record in store.scan(position, end):
            if not prefix and record.key.startswith(SYSTEM_PREFIX):
                position = _SYSTEM_END  # users, groups and tokens are not client keys
                skipped = True
                break
            rest = record.key[base:]
            if rest.count("/") >= depth:
                # Deeper than asked: jump past the ancestor at the depth limit.
                ancestor = "/".join(rest.split("/")[:depth])
                position = start + ancestor + _AFTER_SLASH
                skipped = True
                break
            if not record.live(now_ms) or not visible(record):
                continue
            total += 1
            if len(keys) < limit:
                keys.append(record)
            elif not count_all:
                return keys, total
        if not skipped:
            break
    return keys, total


def nest(records: list[Record], prefix: str) -> list[dict[str, Any]]:
    """Turn a flat key list into the nested `{"subkey", "children"}` form."""
    base = len(prefix) + 1 if prefix else 0
    root = TreeNode("")
    for record in records:
        node = root
        for part in record.key[base:].split("/"):
            node = node.children.setdefault(part, TreeNode(part))
        node.record = record
    return _sorted_json(root.children)
