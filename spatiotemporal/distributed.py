"""Where this process stands in torch.distributed, for code that also runs outside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def world_size() -> int:
    """Processes in the default group; 1 when there is none (a plain process, or one worker)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def collective_device_type(backend: str) -> str:
    """The device type whose tensors `backend` can reduce: "cpu" whenever it takes CPU tensors,
    otherwise the first device it supports ("cuda" for NCCL).

    `backend` is what `dist.get_backend()` returns: a name ("gloo", "nccl") or, for a group with a
    backend per device, a list such as "cpu:gloo,cuda:nccl".
    """
    import torch.distributed as dist

    if ":" in backend:
        devices = [part.split(":", 1)[0].strip() for part in backend.split(",")]
    else:
        # Backends registered without a device list (third-party plugins) are assumed CPU-capable,
        # which is what the collectives here used before the device was chosen.
        devices = dist.Backend.backend_capability.get(backend.lower(), ["cpu"])
    return "cpu" if "cpu" in devices else devices[0]


def collective_device() -> torch.device:
    """The device a tensor must be on for a collective in the default group: the current CUDA
    device under NCCL, which rejects CPU tensors; the CPU under gloo and outside torch.distributed.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return torch.device("cpu")
    kind = collective_device_type(dist.get_backend())
    if kind == "cuda":
        # Each rank owns one GPU (Ray Train sets it current); a bare "cuda" would mean the same but
        # the explicit index keeps the chosen device visible in errors and comparisons.
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)
