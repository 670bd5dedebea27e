"""Helpers for scripts/bench.py: process control, HTTP probes and load generation.

Kept apart from bench.py so later subcommands (gossip, sync, backup) can reuse them.
"""
