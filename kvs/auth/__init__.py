"""Authentication and authorization: users, groups, JWT tokens, 12-bit permissions, rate limits.

Users, groups and token records are stored as records under `SYSTEM_PREFIX`, so the Merkle
sync and push replication carry them to every node with the same conflict rule as keys.
"""
