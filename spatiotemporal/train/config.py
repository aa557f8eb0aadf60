"""Training configs: YAML files with defaults filled in and `dotted.key=value` overrides on top."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# Every key a config may set, with its default. A key not listed here is a typo and is rejected.
DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "output_dir": "runs",
    "task": "video",  # "video" (clip classification) or "points" (per-point segmentation)
    "model": {"name": None, "num_classes": None, "kwargs": {}},
    "data": {
        "root": None,  # dataset directory (synthetic Kinetics / Pointcept-layout ScanNet)
        "train_split": "train",
        "val_split": "val",
        "batch_size": 8,
        "loader_workers": 0,  # torch DataLoader workers per Ray worker
        "cache": True,  # keep decoded videos in memory (small datasets)
        "num_frames": None,  # None: the model spec's
        "frame_stride": None,
        "crop_size": None,
        "short_side": None,
        "grid_size": 0.04,  # points: voxel size in metres
        "max_points": 20000,  # points: crop a training scene to at most this many voxels
        "augment": True,
        "hflip": True,  # off for data whose classes are directions of motion
    },
    "optim": {
        "name": "adamw",  # or "sgd"
        "lr": 1e-3,  # for the global batch (all workers, after accumulation)
        "weight_decay": 0.05,
        "momentum": 0.9,
        "betas": [0.9, 0.999],
        "layer_decay": None,  # e.g. 0.75 for ViT-style fine-tuning
        "lr_scales": {},  # name component -> lr multiplier, e.g. {blocks: 0.1}
    },
    "schedule": {"epochs": 10, "warmup_epochs": 1.0, "min_lr": 1e-6},
    "train": {
        "label_smoothing": 0.0,
        "lovasz_weight": 0.0,  # points: weight of the Lovasz-softmax term added to cross-entropy
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "mix_prob": 1.0,
        "clip_grad": None,
        "accum_steps": 1,
        "sync_batchnorm": False,  # batch norm statistics over every worker's batch (point models)
        "bf16": False,
        "activation_checkpointing": False,
        "ema_decay": None,
        "eval_every": 1,  # epochs
        "checkpoint_every": 0,  # steps; 0 = only at epoch ends
        "log_every": 10,  # steps between JSONL rows
        "crash_at_step": None,  # testing aid: the workers die after this many steps
    },
    # None: the model spec's protocol. short_side: the test resize; by default the protocol's when
    # the crop is the spec's own (the paper's setting), else data.short_side. tta (points): sum
    # Pointcept's 13 test-time augmentations, 13 times the work.
    "eval": {"views": None, "aggregation": None, "short_side": None, "tta": False, "batch_size": 8},
    "ray": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}, "address": None},
}


def _merge(base: dict, override: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in base:
            raise KeyError(f"unknown config key {path!r}; known here: {', '.join(sorted(base))}")
        # Free-form mappings (model kwargs, Ray resources) take whatever they are given.
        if isinstance(base[key], dict) and isinstance(value, dict) and base[key] and key != "resources_per_worker":
            out[key] = _merge(base[key], value, path + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"override {text!r}: {key!r} is not a section")
            node = node[key]
        free_form = keys[-2:-1] in (["kwargs"], ["resources_per_worker"], ["lr_scales"])
        if keys[-1] not in node and not free_form:
            raise KeyError(f"override {text!r}: unknown key {keys[-1]!r}")
        node[keys[-1]] = value
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> dict:
    """Defaults <- YAML file (or `data`) <- overrides. Unknown keys raise KeyError naming them."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        raw = yaml.safe_load(path.read_text()) or {}
    if data is not None:
        raw = _merge(_merge(DEFAULTS, raw), data) if raw else data
    config = _merge(DEFAULTS, raw)
    config = apply_overrides(config, overrides or [])
    if not config["model"]["name"]:
        raise ValueError("the config names no model (model.name)")
    if config["task"] not in ("video", "points"):
        raise ValueError(f"task must be 'video' or 'points', not {config['task']!r}")
    return config


def parse_views(text: str | None) -> tuple[int, int] | None:
    """'4x3' -> (4 temporal clips, 3 spatial crops)."""
    if text is None:
        return None
    try:
        t, s = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"views must look like 4x3 (temporal x spatial), not {text!r}") from None
    return t, s
