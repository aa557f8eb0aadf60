"""Opening media and reading raw arrays."""
