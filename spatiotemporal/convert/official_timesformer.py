"""facebookresearch/TimeSformer checkpoints (`.pyth`, weights under `model_state`).

The official `TimeSformer` module wraps a `VisionTransformer` as `self.model`, so every key starts with
`model.`. Our module names follow the official ones (norm1, attn.qkv, temporal_norm1, temporal_attn,
temporal_fc, norm2, mlp.fc1/fc2, norm, head); only the position tables differ, being modules here.
"""

from __future__ import annotations

import torch

NAME = "official-timesformer"

_TABLES = {"pos_embed": "pos_embed.weight", "time_embed": "time_embed.weight"}


def matches(state_dict, arch: str) -> bool:
    return arch == "timesformer" and any(k.startswith("model.blocks.") for k in state_dict)


def to_ours(state_dict, arch: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("model.")
        out[_TABLES.get(key, key)] = value
    return out
