"""Dataset preparation and generators, as thin commands over spatiotemporal.data."""
