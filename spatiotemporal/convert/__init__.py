"""Checkpoint layouts: detect which layout a file holds and map its keys onto our models.

A layout module exposes `NAME`, `matches(state_dict, arch) -> bool` and
`to_ours(state_dict, arch) -> dict`. `arch` is the model class's `arch` attribute
("timesformer", "vivit", "mvitv2", "video_swin", ...). Layouts are tried in order; ours last.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

import torch

from spatiotemporal.io.errors import CheckpointError

LAYOUT_MODULES = (
    "spatiotemporal.convert.torchvision",
    "spatiotemporal.convert.hf",
    "spatiotemporal.convert.official_timesformer",
    "spatiotemporal.convert.official_slowfast",
    "spatiotemporal.convert.official_videoswin",
    "spatiotemporal.convert.ours",
)

# Wrappers that training frameworks put around the weights.
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "module")


# Keys our training checkpoints keep beside the weights, so a path alone rebuilds the model.
META_KEYS = ("model_name", "model_kwargs", "class_names", "num_classes")


def _read_object(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable checkpoint
        raise CheckpointError(path, f"cannot read checkpoint: {err}") from err
    return obj


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """How a checkpoint says its model was built (empty for foreign layouts): META_KEYS present."""
    if os.fspath(path).endswith(".safetensors"):
        return {}
    obj = _read_object(path)
    if not isinstance(obj, Mapping):
        return {}
    meta = {k: obj[k] for k in META_KEYS if obj.get(k) is not None}
    if "class_names" in meta and "num_classes" not in meta:
        meta["num_classes"] = len(meta["class_names"])
    return meta


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    obj = _read_object(path)
    while isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(path, f"no state dict found; top-level keys: {sorted(obj)[:10]}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"expected a state dict, found {type(obj).__name__}")
    # DDP prefixes every key with 'module.'.
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


def _layouts():
    out = []
    for name in LAYOUT_MODULES:
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    return out


def detect_layout(state_dict: Mapping[str, torch.Tensor], arch: str):
    for layout in _layouts():
        if layout.matches(state_dict, arch):
            return layout
    return None


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str, path: str = "<memory>"):
    layout = detect_layout(state_dict, arch)
    if layout is None:
        sample = ", ".join(list(state_dict)[:8])
        raise CheckpointError(path, f"unknown checkpoint layout for a {arch} model (keys: {sample}, ...)")
    return layout.NAME, layout.to_ours(dict(state_dict), arch)


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> str:
    """Load `path` into `model` in place; returns the detected layout's name.

    With strict=True, any missing or unexpected key raises a CheckpointError listing them.
    """
    arch = getattr(model, "arch", None)
    if arch is None:
        raise TypeError(f"{type(model).__name__} has no `arch` attribute; cannot pick a converter")
    state_dict = read_state_dict(path)
    layout_name, ours = convert_state_dict(state_dict, arch, os.fspath(path))
    # A model may adapt a checkpoint to its own configuration (e.g. resize position tables).
    adapt = getattr(model, "adapt_checkpoint", None)
    if adapt is not None:
        ours = adapt(ours)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    mismatched = sorted(
        k for k in set(expected) & set(ours) if tuple(expected[k].shape) != tuple(ours[k].shape)
    )
    if strict and (missing or unexpected or mismatched):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label} keys: {shown}")
        raise CheckpointError(path, f"{layout_name} checkpoint does not fit {arch}: " + "; ".join(parts))
    usable = {k: v for k, v in ours.items() if k in expected and k not in mismatched}
    model.load_state_dict(usable, strict=False)
    return layout_name
