"""Open files: the serving process raises its soft limit, and the HTTP connection cap fits in it."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from kvs.cli.serve import _raise_file_limit
from kvs.node import Node
from tests.support.config import make_config


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        in_force = _raise_file_limit()
        assert in_force == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert in_force == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    ("file_limit", "configured", "cap"),
    [(20_000, 1024, 1024), (1024, 1024, 480), (100, 1024, 18), (40, 1024, 16), (1024, 10, 10)],
)
def test_the_connection_cap_leaves_room_for_every_other_descriptor(
    tmp_path: Path, file_limit: int, configured: int, cap: int
) -> None:
    node = Node(make_config(tmp_path, http_max_connections=configured))
    node.file_limit = file_limit
    assert node._connection_cap() == cap
