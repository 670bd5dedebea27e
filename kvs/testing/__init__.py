"""Test tooling for KVS: fuzzers and harnesses that drive a node from outside.

Nothing here is imported by the node (`kvs` never imports `kvs.testing`): these modules may
reach into internals, start processes and hammer ports, which production code must not.
"""
