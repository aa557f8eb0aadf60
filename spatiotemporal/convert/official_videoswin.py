"""Video-Swin-Transformer (SwinTransformer/Video-Swin-Transformer) checkpoints: mmaction `.pth`.

The file holds `{"state_dict": ...}` with the backbone under `backbone.` (SwinTransformer3D:
`patch_embed`, `layers.{i}.blocks.{j}`, `layers.{i}.downsample`, `norm`; mmaction2 1.x calls the final
norm `norm3`, after the stage it follows) and the classifier under `cls_head.fc_cls` (I3DHead). Stages
are `layers` there and `stages` here; the rest of the names agree.
"""

from __future__ import annotations

import re

from spatiotemporal.layers.window_attention3d import relative_position_index

NAME = "videoswin"


def matches(state_dict, arch: str) -> bool:
    return arch == "video_swin" and any(k.startswith(("backbone.", "cls_head.")) for k in state_dict)


def to_ours(state_dict, arch: str):
    out = {}
    for key, value in state_dict.items():
        # Derived from the window size; rebuilt by our attention rather than loaded.
        if key.endswith("relative_position_index"):
            continue
        if key.startswith("cls_head.fc_cls."):
            out["head." + key.removeprefix("cls_head.fc_cls.")] = value
            continue
        key = key.removeprefix("backbone.")
        # mmaction2 1.x names the final norm after its output stage (out_indices=(3,)): `norm3`.
        key = re.sub(r"^norm3\.", "norm.", key)
        out[re.sub(r"^layers\.(\d+)\.", r"stages.\1.", key)] = value
    return out


def from_ours(state_dict, window_size=(8, 7, 7)):
    """Our VideoSwin state dict in the official names, index buffers included as the repo saves them."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            out["cls_head.fc_cls." + key.removeprefix("head.")] = value
            continue
        key = re.sub(r"^stages\.(\d+)\.", r"layers.\1.", key)
        out["backbone." + key] = value
        if key.endswith("attn.relative_position_bias_table"):
            index_key = "backbone." + key.removesuffix("relative_position_bias_table") + "relative_position_index"
            out[index_key] = relative_position_index(tuple(window_size))
    return out
