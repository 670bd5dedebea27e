"""kvs.listing (`_ls`, `_tree`) against a brute-force model of the key space."""

from __future__ import annotations

import contextlib
import itertools
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs.clock import HybridLogicalClock
from kvs.listing import Child, TreeNode, list_children, list_tree, nest
from kvs.model import Record
from kvs.store import Delete, Put, Store
from tests.support.config import ManualWallClock, store_settings

T0 = 1_700_000_000_000
NOW = T0 + 1000  # listings are taken at this time: "expired" keys are gone, "ttl" keys are not

# '!', '-' and '.' sort before '/', the rest after it; 'é' is two UTF-8 bytes.
ALPHABET = "!-.0a~é"
segments = st.text(alphabet=ALPHABET, min_size=1, max_size=3).filter(lambda s: s not in (".", ".."))
keys = st.lists(segments, min_size=1, max_size=4).map("/".join)
states = st.sampled_from(["live", "live", "live", "ttl", "tombstone", "expired"])
key_spaces = st.dictionaries(keys, states, max_size=30)


def build_store(path: Path, key_states: dict[str, str], *, in_thread: bool = False) -> Store:
    """A store holding `key_states`: live keys, keys with a TTL, tombstones and expired keys."""
    counter = itertools.count()
    store = Store(
        path,
        clock=HybridLogicalClock(ManualWallClock(T0)),
        new_uuid=lambda: f"uuid-{next(counter)}",
        settings=store_settings(),
        in_thread=in_thread,
    )
    store.ensure_identity("node-a", T0)
    expiry = {"ttl": T0 + 3_600_000, "expired": T0 + 500}

    async def populate() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            await store.write(
                [Put(k, b'"v"', expires_at=expiry.get(state)) for k, state in key_states.items()]
            )
            await store.write(
                [Delete(k) for k, state in key_states.items() if state == "tombstone"]
            )
            nursery.cancel_scope.cancel()

    trio.run(populate)
    return store


def live_keys(key_states: dict[str, str]) -> set[str]:
    return {k for k, state in key_states.items() if state in ("live", "ttl")}


def below(prefix: str) -> str:
    return prefix + "/" if prefix else ""


def model_children(live: Iterable[str], prefix: str) -> list[tuple[str, bool, bool]]:
    """(subkey, is_key, has_children) for each direct child, in UTF-8 byte order."""
    start = below(prefix)
    children: dict[str, tuple[bool, bool]] = {}
    for key in live:
        if not key.startswith(start):
            continue
        name, slash, _ = key[len(start) :].partition("/")
        is_key, has_children = children.get(name, (False, False))
        children[name] = (is_key or not slash, has_children or bool(slash))
    return [(name, *children[name]) for name in sorted(children, key=str.encode)]


def model_tree(live: Iterable[str], prefix: str, depth: int) -> list[str]:
    start = below(prefix)
    return sorted(
        (k for k in live if k.startswith(start) and k[len(start) :].count("/") < depth),
        key=str.encode,
    )


def model_nest(records: list[Record], prefix: str) -> list[dict[str, Any]]:
    """The nested form built independently: children sorted by subkey, as `_ls` sorts them."""
    start = below(prefix)
    root: dict[str, Any] = {}
    stamps: dict[tuple[str, ...], int] = {}
    for record in records:
        parts = tuple(record.key[len(start) :].split("/"))
        node = root
        for part in parts:
            node = node.setdefault(part, {})
        stamps[parts] = record.version.timestamp

    def render(node: dict[str, Any], path: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for name in sorted(node, key=str.encode):
            entry: dict[str, Any] = {"subkey": name}
            if path + (name,) in stamps:
                entry["timestamp"] = stamps[path + (name,)]
            if node[name]:
                entry["children"] = render(node[name], path + (name,))
            out.append(entry)
        return out

    return render(root, ())


def prefixes_of(key_states: dict[str, str]) -> set[str]:
    """Every segment-boundary prefix of every key, plus some that match nothing."""
    out = {"", "zz", "!", "a/zz"}
    for key in key_states:
        parts = key.split("/")
        out.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return out


def check_listing(store: Store, key_states: dict[str, str]) -> None:
    live = live_keys(key_states)
    for prefix in sorted(prefixes_of(key_states)):
        expected = model_children(live, prefix)
        for limit in (1, 2, 1000):
            children, total = list_children(store, prefix, limit, NOW)
            assert total == len(expected), prefix
            got = [(c.subkey, c.record is not None, c.has_children) for c in children]
            assert got == expected[:limit], (prefix, limit)
            for child in children:
                if child.record is not None:
                    assert child.record.key == below(prefix) + child.subkey
                    assert child.record.live(NOW)
        for depth in (1, 2, 3, 10):
            expected_keys = model_tree(live, prefix, depth)
            for limit in (1, 3, 1000):
                records, total = list_tree(store, prefix, depth, limit, NOW)
                assert total == len(expected_keys), (prefix, depth)
                assert [r.key for r in records] == expected_keys[:limit], (prefix, depth, limit)
                assert nest(records, prefix) == model_nest(records, prefix)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(key_states=key_spaces)
def test_listings_match_the_model(
    tmp_path_factory: pytest.TempPathFactory, key_states: dict[str, str]
) -> None:
    store = build_store(tmp_path_factory.mktemp("ls"), key_states)
    try:
        check_listing(store, key_states)
    finally:
        store.close()


# --- explicit cases -----------------------------------------------------------------------------


def test_children_are_sorted_by_utf8_bytes_and_skip_dead_keys(tmp_path: Path) -> None:
    key_states = {
        "a": "live",
        "a!b": "live",  # '!' sorts before '/': between "a" and "a/..."
        "a-": "tombstone",
        "a.x/y": "live",
        "a/b": "expired",
        "a/c": "live",
        "a0": "live",
        "aé": "live",
        "a~": "ttl",
        "b/c/d": "tombstone",
        "b/x": "expired",
    }
    store = build_store(tmp_path / "db", key_states)
    children, total = list_children(store, "", 100, NOW)
    assert [(c.subkey, c.record is not None, c.has_children) for c in children] == [
        ("a", True, True),
        ("a!b", True, False),
        ("a.x", False, True),
        ("a0", True, False),
        ("a~", True, False),
        ("aé", True, False),
    ]
    assert total == 6
    children, total = list_children(store, "a", 100, NOW)
    assert [c.subkey for c in children] == ["c"] and total == 1
    assert list_children(store, "b", 100, NOW) == ([], 0)  # only dead keys below b
    store.close()


def test_many_children_with_big_subtrees(tmp_path: Path) -> None:
    """More children than one scan chunk, each with a subtree that `_ls` must jump over."""
    key_states = {f"root/c{i:03d}/k{j}": "live" for i in range(300) for j in range(2)}
    key_states.update({f"root/c{i:03d}": "live" for i in range(0, 300, 7)})
    key_states.update(
        {f"root/c{i:03d}/k{j}": "tombstone" for i in range(0, 300, 5) for j in range(2)}
    )
    store = build_store(tmp_path / "db", key_states, in_thread=True)
    live = live_keys(key_states)
    children, total = list_children(store, "root", 50, NOW)
    expected = model_children(live, "root")
    # 60 children lose their subtree; 9 of those (c000, c035, ...) keep their own key
    assert total == len(expected) == 300 - 60 + 9
    assert [(c.subkey, c.record is not None, c.has_children) for c in children] == expected[:50]
    records, total = list_tree(store, "root", 10, 10_000, NOW)
    assert [r.key for r in records] == model_tree(live, "root", 10)
    records, total = list_tree(store, "root", 1, 10_000, NOW)
    assert [r.key for r in records] == [f"root/c{i:03d}" for i in range(0, 300, 7)]
    store.close()


def test_keys_at_the_very_end_of_the_key_space_are_listed(tmp_path: Path) -> None:
    top = "\U0010ffff"
    key_states = {"a": "live", top: "live", top * 2: "live", top * 3 + "/x": "live"}
    store = build_store(tmp_path / "db", key_states)
    children, total = list_children(store, "", 100, NOW)
    assert [c.subkey for c in children] == ["a", top, top * 2, top * 3]
    assert total == 4
    records, total = list_tree(store, "", 5, 100, NOW)
    assert [r.key for r in records] == ["a", top, top * 2, top * 3 + "/x"]
    store.close()


def test_long_prefixes_beyond_lmdb_key_size(tmp_path: Path) -> None:
    stem = "/".join(["segment"] * 70)  # 559 bytes: stored under stand-in LMDB keys
    key_states = {
        stem: "live",
        stem + "/a": "live",
        stem + "/a/b": "live",
        stem + "/!": "live",
        stem + "/é/x": "live",
        stem + "!": "live",
        stem + "/dead": "tombstone",
    }
    store = build_store(tmp_path / "db", key_states)
    live = live_keys(key_states)
    children, total = list_children(store, stem, 100, NOW)
    assert [(c.subkey, c.record is not None, c.has_children) for c in children] == model_children(
        live, stem
    )
    assert total == 3
    for depth in (1, 2, 3):
        records, total = list_tree(store, stem, depth, 100, NOW)
        assert [r.key for r in records] == model_tree(live, stem, depth)
    check_listing(store, key_states)
    store.close()


def test_depth_below_one_lists_nothing(tmp_path: Path) -> None:
    store = build_store(tmp_path / "db", {"a": "live", "a/b": "live"})
    with time_limit(5):  # it used to loop forever
        assert list_tree(store, "", 0, 100, NOW) == ([], 0)
        assert list_tree(store, "a", 0, 100, NOW) == ([], 0)
    store.close()


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_nest_shape(tmp_path: Path) -> None:
    key_states = {
        "p/a": "live",
        "p/a/b": "live",
        "p/a/b/c": "live",
        "p/a!": "live",
        "p/z/y": "live",
    }
    store = build_store(tmp_path / "db", key_states)
    records, total = list_tree(store, "p", 10, 100, NOW)
    assert total == 5
    ts = records[0].version.timestamp
    assert nest(records, "p") == [
        {
            "subkey": "a",
            "timestamp": ts,
            "children": [
                {"subkey": "b", "timestamp": ts, "children": [{"subkey": "c", "timestamp": ts}]}
            ],
        },
        {"subkey": "a!", "timestamp": ts},
        {"subkey": "z", "children": [{"subkey": "y", "timestamp": ts}]},
    ]
    store.close()


def test_nest_orders_siblings_like_ls_when_a_parent_is_not_a_key(tmp_path: Path) -> None:
    # "a!b" < "a/x" in key order, but as siblings "a" < "a!b": the tree must say a, a!b.
    store = build_store(tmp_path / "db", {"a!b": "live", "a/x": "live"})
    records, _ = list_tree(store, "", 10, 100, NOW)
    assert [r.key for r in records] == ["a!b", "a/x"]
    shape = nest(records, "")
    assert [node["subkey"] for node in shape] == ["a", "a!b"]
    children, _ = list_children(store, "", 10, NOW)
    assert [c.subkey for c in children] == [node["subkey"] for node in shape]
    store.close()


def test_child_and_tree_node_json(tmp_path: Path) -> None:
    store = build_store(tmp_path / "db", {"d/k": "ttl", "d/k/x": "live", "d/sub/y": "live"})
    children, _ = list_children(store, "d", 10, NOW)
    key, sub = children
    record = store.get("d/k")
    assert key.to_json(False) == {"subkey": "k", "timestamp": record.version.timestamp}
    assert key.to_json(True) == {
        "subkey": "k",
        "timestamp": record.version.timestamp,
        "is_key": True,
        "has_children": True,
        "uuid": record.version.uuid,
        "size": len(b'"v"'),
        "expires_at": T0 + 3_600_000,
    }
    assert sub.to_json(False) == {"subkey": "sub"}
    assert sub.to_json(True) == {"subkey": "sub", "is_key": False, "has_children": True}
    assert Child("x").to_json(True) == {"subkey": "x", "is_key": False, "has_children": False}
    assert TreeNode("t").to_json() == {"subkey": "t"}
    store.close()
