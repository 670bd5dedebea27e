"""What a node chooses for its store. The values come from its configuration
(`kvs.config.declaration` documents each one and writes its default): no defaults here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreSettings:
    lmdb_map_size: int  # initial; the map doubles when full
    durability: str  # "fsync": a commit is on disk when acknowledged; "os": in the OS cache
    compression_level: int  # zstd, for values over 256 bytes
    revision_history_enabled: bool
    revision_history_depth: int

    @property
    def history_depth(self) -> int:
        """Earlier versions kept per key."""
        return self.revision_history_depth if self.revision_history_enabled else 0


READER = StoreSettings(
    lmdb_map_size=1 << 20,
    durability="os",
    compression_level=1,
    revision_history_enabled=False,
    revision_history_depth=0,
)
"""For tools that open a store to read or check it: the map takes the data file's size on
open, nothing is compressed, and no write needs to be durable or keep history."""
