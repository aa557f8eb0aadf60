"""Tests' helper: what a learning proof measured, set against its bar, on the kind of CPU at hand.

The same code scores differently on different CPUs (their kernels sum floats in other orders, and a
training run amplifies that), so issue 33 asks each proof to clear its bar by MARGIN on every kind
of CPU it meets, and the record to say which kind that was. `make test-learning` prints these lines
(-rP); one under the margin says so, while the test itself still asserts only the bar.
"""

from __future__ import annotations

from spatiotemporal.machine import machine_kind

MARGIN = 0.03


def margin_line(proof: str, value: float, bar: float, *, at_most: bool = False) -> str:
    """'proof: 0.957 against the bar >= 0.90, margin +0.057 (AMD EPYC, AVX512-BF16)'.

    at_most: the bar is an upper bound (a control that must stay near chance)."""
    margin = round(bar - value if at_most else value - bar, 6)  # 0.83 - 0.80 is 0.0299999...
    verdict = "" if margin >= MARGIN else f"; UNDER the {MARGIN:.2f} margin"
    return (
        f"{proof}: {value:.3f} against the bar {'<=' if at_most else '>='} {bar:.2f}, "
        f"margin {margin:+.3f} ({machine_kind()}){verdict}"
    )
