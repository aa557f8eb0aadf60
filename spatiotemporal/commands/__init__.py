"""CLI command implementations. Each keeps heavy imports inside `run` (see spatiotemporal.cli)."""
