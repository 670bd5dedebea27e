"""kvs.memory: freed heap memory goes back to the operating system."""

from __future__ import annotations

import sys

import pytest

from kvs.memory import release_free_memory


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_freed_between_live_blocks_is_released() -> None:
    # 64 KB blocks come from the heap (below glibc's mmap threshold); freeing every other
    # one leaves holes that the heap keeps until trimmed.
    blocks = [bytearray(b"x" * 64_000) for _ in range(3000)]  # ~190 MB
    del blocks[::2]
    before = rss_kb()
    assert release_free_memory()
    after = rss_kb()
    assert before - after > 50_000, (before, after)  # at least 50 of the ~95 MB freed
    del blocks
