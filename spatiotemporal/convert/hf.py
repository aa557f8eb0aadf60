"""HF transformers layouts: `TimesformerForVideoClassification` and `VivitForVideoClassification`.

Both are the same ViT-B blocks under other names. HF ViViT keeps separate q/k/v projections (and, in
checkpoints written by transformers 4.x such as google/vivit-b-16x2-kinetics400, BERT-style names);
ours fuses them into one qkv projection, in q, k, v order.
"""

from __future__ import annotations

import json
import os
import re

import torch

from spatiotemporal.io.errors import CheckpointError

NAME = "hf-transformers"

_PREFIX = {"timesformer": "timesformer.", "vivit": "vivit."}

# (pattern, replacement) applied to the first match; patterns anchor the whole key.
_TIMESFORMER_RULES = [
    (r"timesformer\.embeddings\.cls_token", "cls_token"),
    (r"timesformer\.embeddings\.position_embeddings", "pos_embed.weight"),
    (r"timesformer\.embeddings\.time_embeddings", "time_embed.weight"),
    (r"timesformer\.embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.proj.\1"),
    (r"timesformer\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"blocks.\1.norm1.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.attention\.attention\.qkv\.(\w+)", r"blocks.\1.attn.qkv.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"blocks.\1.attn.proj.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.temporal_layernorm\.(\w+)", r"blocks.\1.temporal_norm1.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.temporal_attention\.attention\.qkv\.(\w+)",
     r"blocks.\1.temporal_attn.qkv.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.temporal_attention\.output\.dense\.(\w+)",
     r"blocks.\1.temporal_attn.proj.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.temporal_dense\.(\w+)", r"blocks.\1.temporal_fc.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"blocks.\1.norm2.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"blocks.\1.mlp.fc1.\2"),
    (r"timesformer\.encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"blocks.\1.mlp.fc2.\2"),
    (r"timesformer\.layernorm\.(\w+)", r"norm.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
]

# Keys are first normalised from the transformers 4.x names to the 5.x ones, then mapped.
_VIVIT_LEGACY = [
    (r"vivit\.encoder\.layer\.(\d+)\.", r"vivit.layers.\1."),
    (r"(vivit\.layers\.\d+)\.attention\.attention\.query\.", r"\1.attention.q_proj."),
    (r"(vivit\.layers\.\d+)\.attention\.attention\.key\.", r"\1.attention.k_proj."),
    (r"(vivit\.layers\.\d+)\.attention\.attention\.value\.", r"\1.attention.v_proj."),
    (r"(vivit\.layers\.\d+)\.attention\.output\.dense\.", r"\1.attention.o_proj."),
    (r"(vivit\.layers\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"(vivit\.layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]
_VIVIT_RULES = [
    (r"vivit\.embeddings\.cls_token", "cls_token"),
    (r"vivit\.embeddings\.position_embeddings", "pos_embed.weight"),
    (r"vivit\.embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.proj.\1"),
    (r"vivit\.layers\.(\d+)\.layernorm_before\.(\w+)", r"blocks.\1.norm1.\2"),
    (r"vivit\.layers\.(\d+)\.attention\.o_proj\.(\w+)", r"blocks.\1.attn.proj.\2"),
    (r"vivit\.layers\.(\d+)\.layernorm_after\.(\w+)", r"blocks.\1.norm2.\2"),
    (r"vivit\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", r"blocks.\1.mlp.\2.\3"),
    (r"vivit\.layernorm\.(\w+)", r"norm.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
]
_VIVIT_QKV = re.compile(r"vivit\.layers\.(\d+)\.attention\.([qkv])_proj\.(\w+)")
# The pooler (dense + tanh over the class token) belongs to HF's VivitModel; the classification
# model never uses it, so it is not part of a classifier's weights.
_VIVIT_UNUSED = re.compile(r"vivit\.pooler\..*")


def matches(state_dict, arch: str) -> bool:
    prefix = _PREFIX.get(arch)
    return prefix is not None and any(k.startswith(prefix) for k in state_dict)


def source_kwargs(path: str, arch: str) -> dict:
    """How the checkpoint's HF model was built, in our constructor's words: from the config.json that
    `save_pretrained` writes beside the weights. HF's ViViT is always Model 1 (joint)."""
    known: dict = {"variant": "joint"} if arch == "vivit" else {}
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        return known
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(config_path, f"cannot read the HF config beside the weights: {err}") from err
    if not isinstance(config, dict) or config.get("model_type") != arch:
        return known  # another model's config; it says nothing about these weights
    for ours, theirs in (("num_frames", "num_frames"), ("image_size", "image_size"), ("patch_size", "patch_size"),
                         ("attention_type", "attention_type")):
        if theirs in config:
            known[ours] = config[theirs]
    if arch == "vivit" and "tubelet_size" in config:
        known["tubelet_size"] = tuple(config["tubelet_size"])
        known.pop("patch_size", None)
    return known


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return key  # unknown keys pass through unchanged, so the loader lists them as unexpected


def to_ours(state_dict, arch: str) -> dict[str, torch.Tensor]:
    if arch == "timesformer":
        return {_rename(k, _TIMESFORMER_RULES): v for k, v in state_dict.items()}
    if arch != "vivit":
        raise ValueError(f"the HF layout has no mapping for {arch!r}")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        for pattern, repl in _VIVIT_LEGACY:
            key = re.sub(pattern, repl, key)
        if _VIVIT_UNUSED.fullmatch(key):
            continue
        fused = _VIVIT_QKV.fullmatch(key)
        if fused:
            layer, which, param = fused.groups()
            qkv.setdefault((layer, param), {})[which] = value
            continue
        out[_rename(key, _VIVIT_RULES)] = value
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            # An incomplete triple cannot be fused; keep the parts so the loader names them.
            for which, value in parts.items():
                out[f"vivit.layers.{layer}.attention.{which}_proj.{param}"] = value
            continue
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
