"""A node's config for in-process tests, and a wall clock the test moves by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvs.config import Config, project
from kvs.store import StoreSettings


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "node_id": "test-node",
        "data_dir": str(tmp_path / "data"),
        "backup_path": str(tmp_path / "backups"),  # never the working directory's ./backups
        "cluster_secret": "test-secret",
        "durability": "os",  # tests do not need fsync; the process tests cover the real thing
        "clustering_enabled": False,  # single-node tests; cluster tests opt in
        "auth_enabled": False,  # tests not about auth; tests/unit/test_auth_*.py opt in
    }
    values.update(overrides)
    return Config(**values)


def store_settings(**overrides: Any) -> StoreSettings:
    """The shipped store settings, with `overrides`, and without fsync (tests do not need it;
    the process tests cover the real thing)."""
    return project(StoreSettings, Config(), **{"durability": "os", **overrides})


class ManualWallClock:
    """A wall clock (ms) that tests move by hand, for TTL and ordering tests."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


def write_config(path: Path, **values: Any) -> Path:
    """A minimal YAML config at `path` (mode 0600) with `values` (strings, numbers, bools),
    for CLI commands that read a node's config (e.g. `kvs audit verify CONFIG`)."""
    lines = [f"{key}: {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path
