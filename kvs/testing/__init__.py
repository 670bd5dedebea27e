"""Test tooling for KVS: fuzzers and harnesses that drive a node from outside.

Nothing here is imported by the node (`kvs` never imports `kvs.testing`): these modules may
reach into internals, start processes and hammer ports, which production code must not.

- `fuzz_wire`: seeded hostile datagrams and sync frames against a real node process.
- `fuzz_http` (with `http_inputs`, `http_wire`, `http_cluster`, `http_monitor`): seeded
  hostile HTTP against real node processes, with a monitor and an oracle.
"""
