"""Hostile-input tests against real node processes (fuzzers from kvs.testing)."""
