"""What kind of CPU this is: its model name, its feature flags and the units it multiplies matrices
with. Speeds differ between kinds, and so do float results (AVX-512 kernels sum in other orders), so
timings, the precision probe's cache and the learning proofs' records are all kept per kind.

Kept free of a torch import at module level, like the precision module that uses it.
"""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo_field(*keys: str) -> str:
    """The first non-empty value of any of `keys` in /proc/cpuinfo ('' where there is none, or no
    file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys and value.strip():
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """'AMD EPYC 9R14', or the platform's processor or machine name where /proc/cpuinfo has none."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The CPU's feature flags, sorted and space-separated (x86 `flags`, ARM `Features`)."""
    return " ".join(sorted(_cpuinfo_field("flags", "Features").split()))


def matrix_units() -> str:
    """What this CPU multiplies matrices with: the units that decide bf16's speed (AMX, AVX512-BF16),
    else the widest vector ISA torch dispatches to."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return torch.backends.cpu.get_cpu_capability()


def machine_kind() -> str:
    """The kind of machine that results are kept per: 'Intel(R) Xeon(R) Processor, AMX'."""
    return f"{cpu_name()}, {matrix_units()}"
