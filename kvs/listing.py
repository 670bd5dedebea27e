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

from kvs.model import SYSTEM_PREFIX, Filed, Record
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


Visible = Callable[[Filed], bool]


def _everything(record: Filed) -> bool:
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
    sort after that one (the next page: pass the last subkey of the previous one).

    Every child is counted from its record's head (key, liveness, owner, bits); only the
    `limit` children shown are decoded whole: a folder of 99,000 keys lists in a third of
    the time a full decode of each took."""
    start, end = _range(prefix)
    base = len(start)
    found_children: dict[str, bytes | None] = {}  # name -> its own record's bytes, if a key
    subtrees: set[str] = set()  # names with a live, visible key below them
    position = start + after
    after_b = after.encode("utf-8", "replace")
    while True:
        found = False
        for head, raw in store.scan_heads(position, end):
            found = True
            if not prefix and head.key.startswith(SYSTEM_PREFIX):
                position = _SYSTEM_END  # users, groups and tokens are not client keys
                break
            if not head.live(now_ms) or not visible(head):
                continue
            name, slash, _ = head.key[base:].partition("/")
            if after and name.encode() <= after_b:  # the last page's last child
                if slash:
                    position = start + name + _AFTER_SLASH
                    break
                continue
            if not slash:
                found_children[name] = raw
                continue
            found_children.setdefault(name, None)
            subtrees.add(name)
            # Skip the rest of this child's subtree: one live key is enough to list it.
            position = start + name + _AFTER_SLASH
            break
        else:
            break
        if not found:
            break
    names = sorted(found_children, key=str.encode)
    shown = []
    for name in names[:limit]:
        raw = found_children[name]
        record = None if raw is None else store.decode(raw)
        shown.append(Child(name, record, has_children=name in subtrees))
    return shown, len(names)


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
