"""Open files: the serving process raises its soft limit, and the HTTP connection cap fits in it."""

from __future__ import annotations

import resource

import pytest

from kvs.cli.serve import _raise_file_limit
from kvs.server import connection_cap


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
    file_limit: int, configured: int, cap: int
) -> None:
    assert connection_cap(configured, file_limit) == cap
