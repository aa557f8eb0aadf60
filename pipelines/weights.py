"""What the inference jobs share about their model's weights."""

from __future__ import annotations

import sys


def say_if_random(note: str) -> None:
    """Print `spatiotemporal.weights.require_weights`'s note (random weights were asked for) on
    the driver, before the job starts, so no one reads its predictions as a model's."""
    if note:
        print(note, file=sys.stderr, flush=True)
