"""Replication: push on write, Merkle anti-entropy over TCP, and the bootstrap of a new node.

A node creates one `SyncService` (`service.py`, which says where each part lives). The
driver's contract -- what the node (`kvs/node.py`, the one driver) does with it:

1. Open the store and set its identity first, and create the service with
   `syncing=bootstrap_needed(store, has_seeds)`: a new or half-bootstrapped node must not
   take what it holds for the cluster's data.
2. Call `rebuild_tree()` before `run()`: it builds the Merkle tree from the store and
   subscribes to every commit after it.
3. Subscribe `on_member_change` to membership's changes. Changes before `run()` start no
   push link; a member that (re)appears later gets one, and an exchange at once.
4. Start `run()` in the node's nursery with `nursery.start`: it reports the address it
   listens on, returns only when cancelled, and raises only if its listening socket or the
   store's writer fails (both fatal to the node, on purpose).
5. Feed it nothing else. It reads the store, and writes to it only through the store's
   writer (`Store.write`, `put_system`, `replace_data` for a bootstrap by snapshot).
6. Before taking a client's write, ask `syncing` and `stale`: while either holds, refuse it
   (503). `stats()`, `counters` and `tree` are what /cluster/stats and /metrics show.
"""

from kvs.sync.exchange import ExchangeResult
from kvs.sync.health import bootstrap_needed
from kvs.sync.limits import SyncSettings
from kvs.sync.service import SyncService

__all__ = ["ExchangeResult", "SyncService", "SyncSettings", "bootstrap_needed"]
