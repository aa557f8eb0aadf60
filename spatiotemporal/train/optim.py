"""Optimisers and schedules: AdamW/SGD, no decay on norms and biases, layer-wise lr decay, cosine with warmup."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

# Parameters that belong before the first block (layer 0 for layer-wise decay).
_EMBEDDING_NAMES = (
    "patch_embed", "pos_embed", "cls_token", "time_embed", "temporal_pos_embed", "temporal_cls_token", "embed", "stem",
)  # fmt: skip
# Tokens and position tables, trained without weight decay as the official recipes do (TimeSformer's
# and ViT's no_weight_decay, ViViT's class tokens, SlowFast MViTv2's rel_pos tables, Video Swin's bias
# tables). Matched as a component of the parameter's dotted name: a table may be a module's `.weight`.
_NO_DECAY_TABLES = frozenset({
    "pos_embed", "cls_token", "time_embed", "temporal_pos_embed", "temporal_cls_token",
    "rel_pos_t", "rel_pos_h", "rel_pos_w", "relative_position_bias_table",
})  # fmt: skip
# A block: an entry of a ModuleList called `blocks` or `<something>_blocks` (ViViT-FE's
# temporal_blocks), wherever it sits (Video Swin's `stages.2.blocks.1`).
_BLOCK = re.compile(r"^(?:.*\.)?\w*blocks\.\d+\.")


def _is_embedding(name: str) -> bool:
    return any(part in _EMBEDDING_NAMES for part in name.split(".")[:2])


def default_layer_ids(names: list[str]) -> tuple[dict[str, int], int]:
    """ViT-style depth of each parameter (names in registration order) and the number of blocks.

    Blocks are numbered 1, 2, ... in order across every block list, so a stage's blocks come after
    the previous stage's (Video Swin's stages.1.blocks.0 is block 3 of a 2-2-2-2 model), as the
    Swin fine-tuning recipes (SimMIM, BEiT) count them. Embeddings are layer 0. Any other parameter
    takes the depth of the block registered before it: patch merging at the end of a stage goes with
    that stage's last block; before the first block means 0, after the last one (final norm, head)
    the top, number of blocks + 1.
    """
    blocks: dict[str, int] = {}
    for name in names:
        match = _BLOCK.match(name)
        if match:
            blocks.setdefault(match.group(0), len(blocks) + 1)
    num_blocks = len(blocks)
    ids: dict[str, int] = {}
    last = 0
    for name in names:
        match = _BLOCK.match(name)
        if match:
            ids[name] = last = blocks[match.group(0)]
        elif _is_embedding(name) or (last == 0 and num_blocks > 0):
            ids[name] = 0
        else:
            ids[name] = last if last < num_blocks else num_blocks + 1
    return ids, num_blocks


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float | None = None, lr_scales: dict[str, float] | None = None
) -> list[dict]:
    """Groups by (decay or not, layer, lr scale). 1-D tensors (norms, biases) and tokens/position
    tables get no decay.

    A model may define `layer_id(name) -> int` and `num_layers` to override the ViT-style guess.
    `lr_scales` maps a component of a parameter's dotted name to an lr multiplier (the Stratified
    Transformer's recipe trains everything under `blocks` at 0.1x). Each group carries `lr_scale`,
    which the schedule multiplies in.
    """
    ids, num_blocks = default_layer_ids([name for name, _ in model.named_parameters()])
    if callable(getattr(model, "layer_id", None)):
        num_blocks, layer_of = model.num_layers, model.layer_id
    else:
        layer_of = ids.__getitem__
    groups: dict[tuple[bool, int, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or not _NO_DECAY_TABLES.isdisjoint(name.split("."))
        layer = layer_of(name) if layer_decay is not None else 0
        scale = layer_decay ** (num_blocks + 1 - layer) if layer_decay is not None else 1.0
        for part, factor in (lr_scales or {}).items():
            if part in name.split("."):
                scale *= factor
        group = groups.setdefault(
            (no_decay, layer, scale),
            {"params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale},
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"], cfg.get("layer_decay"), cfg.get("lr_scales"))
    for group in groups:
        group.pop("names")
    name = cfg["name"].lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {cfg['name']!r}")


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warmup from 0 to base_lr, then half a cosine down to min_lr at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineWarmupSchedule:
    """Sets every group's lr = schedule(step) * lr_scale. Stateless apart from the step it is given."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float):
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.base_lr = base_lr
        self.min_lr = min_lr
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        return cosine_with_warmup(step, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)

    def apply(self) -> float:
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("total_steps", "warmup_steps", "base_lr", "min_lr", "step_count")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
