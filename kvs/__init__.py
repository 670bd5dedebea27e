"""KVS: a distributed, eventually consistent key-value store for JSON documents, on Trio."""

__version__ = "0.1.0"
