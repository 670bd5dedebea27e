"""test tooling; never imported by the node."""
