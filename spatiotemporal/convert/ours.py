"""Our own layout: keys exactly as our modules name them (safetensors or torch.save)."""

from __future__ import annotations

NAME = "spatiotemporal"


def matches(state_dict, arch: str) -> bool:
    # Ours is the fallback: anything no foreign layout claimed is taken as-is and checked by keys.
    return True


def to_ours(state_dict, arch: str):
    return dict(state_dict)
