"""Where this process stands in torch.distributed, for code that also runs outside it."""

from __future__ import annotations


def world_size() -> int:
    """Processes in the default group; 1 when there is none (a plain process, or one worker)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
