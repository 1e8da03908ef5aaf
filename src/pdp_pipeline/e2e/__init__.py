"""The node suite's harness (tests/e2e): rendered manifests into `docker run` settings."""
