"""SlowFast (facebookresearch/SlowFast) MViTv2 checkpoints: `.pyth` files holding `model_state`.

Key names follow SlowFast's `slowfast/models/video_model_builder.py` (MViT) and
`slowfast/models/attention.py` (MultiScaleAttention / MultiScaleBlock): the pooling convolutions
are `attn.pool_{q,k,v}` with their norms beside them as `attn.norm_{q,k,v}`, and the classifier is
`head.projection` (TransformerBasicHead). Everything else already has our names.
"""

from __future__ import annotations

import re

NAME = "slowfast"

_TO_OURS = (
    (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.weight$", r"\1.pool_\2.conv.weight"),
    (r"^(blocks\.\d+\.attn)\.norm_([qkv])\.", r"\1.pool_\2.norm."),
    (r"^head\.projection\.", "head."),
)
_FROM_OURS = (
    (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.conv\.weight$", r"\1.pool_\2.weight"),
    (r"^(blocks\.\d+\.attn)\.pool_([qkv])\.norm\.", r"\1.norm_\2."),
    (r"^head\.", "head.projection."),
)


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def matches(state_dict, arch: str) -> bool:
    if arch != "mvitv2":
        return False
    return "head.projection.weight" in state_dict or any(
        re.match(r"^blocks\.\d+\.attn\.norm_[qkv]\.", k) for k in state_dict
    )


def to_ours(state_dict, arch: str):
    return {_rename(k, _TO_OURS): v for k, v in state_dict.items()}


def from_ours(state_dict):
    """Our MViTv2 state dict in SlowFast's names (to save as `{"model_state": ...}` in a .pyth)."""
    return {_rename(k, _FROM_OURS): v for k, v in state_dict.items()}
