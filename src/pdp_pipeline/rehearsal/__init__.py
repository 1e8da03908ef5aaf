"""The rehearsal: the real workflow files run with act on this host (docs/rehearsal.md)."""
