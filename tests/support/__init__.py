"""Helpers the tests share: what a test file may import besides `kvs…` (STYLE 10).

A test file imports only `kvs…` and `tests.support…`, never another `test_*.py`, never
`tests/conftest.py`, never `scripts/` by path; tests/unit/test_imports.py checks this.
Doubles and harnesses that are not specific to this suite (the simulated network, the
in-memory transport, process helpers) live in `kvs.testing`, which these modules use.
"""
