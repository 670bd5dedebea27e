"""Test tooling for KVS under one roof: the simulator, test doubles, process helpers and the
fuzzers (as trio.testing, or TigerBeetle's src/testing/).

Nothing here is imported by production code (`kvs` never imports `kvs.testing`;
tests/unit/test_imports.py checks every module): these modules may reach into internals,
start processes and hammer ports, which production code must not. Production code takes
what it needs as arguments (`Node(transport=...)`), and tests pass these in.

The deterministic simulator:
- `network`: many hosts on one simulated wire (latency, loss, partitions, crashes);
- `sockets`: what a simulated host binds (`SimTransport`, datagram endpoints, streams);
- `simclock`: simulated time (`SimClock`), which jumps to the next deadline or arrival and
  performs the network's arrivals;
- `harness`: `run_simulation`, a seed in and the same run out, with limits in simulated
  and in real time;
- `cluster`: whole KVS nodes on the simulated network (`SimCluster`);
- `swarm` (with `swarm_requests`, `swarm_runner`): fresh seeds, each a whole scenario with
  HTTP clients and faults (`python scripts/sim.py`); `judge`: the independent reference
  model that checks it; `asgi`: HTTP requests through a node's app in process; `faults`:
  disk faults under a node's store (a `kvs.store.CommitGate`).

Doubles: `memory` (an in-memory stream transport for sync tests).

Real processes:
- `procs`: start a `kvs` process, wait for /health, log tails, stop/kill, 0600 configs;
- `ports`: free loopback ports;
- `launcher`: a local cluster in a directory (`scripts/cluster.py` is its command line);
- `http_cluster`: a cluster of node processes for the hostile-input tests.

Fuzzers:
- `fuzz_wire` (with `wire_inputs`, `wire_streams`, `wire_peer`): seeded hostile datagrams
  and sync frames against a real node process;
- `fuzz_http` (with `http_inputs` and its floors `http_plan`, `http_vocab`,
  `http_requests`, `http_bodies`, `http_endpoints`, `http_kinds`, `http_upgrades`; and
  `http_context`, `http_conn`, `http_judge`, `http_runner`, `http_wire`, `http_monitor`):
  seeded hostile HTTP against real node processes, with a monitor and an oracle.
"""
