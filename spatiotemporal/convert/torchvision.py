"""torchvision video state dicts: `mvit_v2_s` and `swin3d_t/s/b` -> our MViTv2 / VideoSwin keys."""

from __future__ import annotations

import re

NAME = "torchvision"

# Ordered (pattern, replacement) pairs; the first match rewrites the key.
_MVIT_RULES = (
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "cls_token"),
    (r"^blocks\.(\d+)\.attn\.project\.0\.", r"blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.attn\.pool_(q|k|v)\.pool\.", r"blocks.\1.attn.pool_\2.conv."),
    (r"^blocks\.(\d+)\.attn\.pool_(q|k|v)\.norm_act\.0\.", r"blocks.\1.attn.pool_\2.norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.3\.", r"blocks.\1.mlp.fc2."),
    (r"^blocks\.(\d+)\.project\.", r"blocks.\1.proj."),
    (r"^head\.1\.", "head."),
)


def _rewrite(key: str, rules) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def _swin_key(key: str) -> str | None:
    match = re.match(r"^features\.(\d+)\.(.*)$", key)
    if match is None:
        return key  # patch_embed.*, norm.*, head.* keep their names
    index, rest = int(match.group(1)), match.group(2)
    # torchvision interleaves stages and merges: features = [stage0, merge0, stage1, merge1, ...].
    stage = index // 2
    if index % 2 == 1:
        return f"stages.{stage}.downsample.{rest}"
    rest = re.sub(r"^(\d+)\.mlp\.0\.", r"\1.mlp.fc1.", rest)
    rest = re.sub(r"^(\d+)\.mlp\.3\.", r"\1.mlp.fc2.", rest)
    return f"stages.{stage}.blocks.{rest}"


def matches(state_dict, arch: str) -> bool:
    if arch == "mvitv2":
        return "conv_proj.weight" in state_dict and "pos_encoding.class_token" in state_dict
    if arch == "video_swin":
        return "patch_embed.proj.weight" in state_dict and any(k.startswith("features.") for k in state_dict)
    return False


def to_ours(state_dict, arch: str):
    out = {}
    if arch == "mvitv2":
        for key, value in state_dict.items():
            new = _rewrite(key, _MVIT_RULES)
            if new == "cls_token":
                value = value.reshape(1, 1, -1)
            out[new] = value
        return out
    for key, value in state_dict.items():
        # The index table is derived from the window size; we rebuild it rather than load it.
        if key.endswith("relative_position_index"):
            continue
        out[_swin_key(key)] = value
    return out
