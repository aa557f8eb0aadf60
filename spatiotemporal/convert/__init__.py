"""Checkpoint layouts: detect which layout a file holds and map its keys onto our models.

A layout module exposes `NAME`, `matches(state_dict, arch) -> bool` and
`to_ours(state_dict, arch) -> dict`. `arch` is the model class's `arch` attribute
("timesformer", "vivit", "mvitv2", "video_swin", ...). Layouts are tried in order; ours last.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Mapping

import torch

from spatiotemporal.io.errors import REASON_MAX_CHARS, CheckpointError, name_list, some_names
from spatiotemporal.io.torch_files import NOT_A_TORCH_FILE, is_torch_file

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


# Keys our training checkpoints keep beside the weights, so a path alone rebuilds the model;
# `grid_size` (point models: the input voxel size trained at) is what inference voxelizes at, and
# `clip` (video models: num_frames, frame_stride, crop_size, short_side trained and tested at) is
# what inference cuts clips with.
META_KEYS = ("model_name", "model_kwargs", "class_names", "num_classes", "grid_size", "clip")


class Checkpoint:
    """A checkpoint file read once: path-like (its path), so every reader here takes it in place of
    the path and reads nothing again. Build one with `read_checkpoint`."""

    def __init__(self, path: str | os.PathLike, obj):
        self.path, self.obj = os.fspath(path), obj

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r})"


def read_checkpoint(path: str | os.PathLike | Checkpoint) -> Checkpoint:
    """The file at `path`, read whole into memory for the metadata and weight readers to share."""
    return path if isinstance(path, Checkpoint) else Checkpoint(path, _read_object(path))


def _read_object(path: str | os.PathLike, mmap: bool = False):
    if isinstance(path, Checkpoint):
        return path.obj
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        elif not is_torch_file(path):
            raise CheckpointError(path, f"cannot read checkpoint: {NOT_A_TORCH_FILE}")
        else:
            obj = load_torch_file(path, mmap=mmap)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is an unreadable checkpoint
        raise CheckpointError(path, f"cannot read checkpoint: {err}") from err
    return obj


def load_torch_file(path: str | os.PathLike, mmap: bool = False):
    """`torch.load` of a whole file onto the CPU. Errors are torch's own.

    `mmap` memory-maps a file torch wrote in its zip format (older pickles load whole): the weights
    stay on disk until touched, so reading a checkpoint for its metadata (a job's driver, a resume
    check) costs little. Only for such reads: mapped tensors stay backed by the file, so weights
    loaded from them later would be whatever the file holds then (another checkpoint copied over
    it), or kill the process with SIGBUS (a file truncated to be rewritten in place).
    """
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
    return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """How a checkpoint says its model was built (empty for foreign layouts): META_KEYS present."""
    if os.fspath(path).endswith(".safetensors"):
        return {}
    obj = _read_object(path, mmap=True)  # nothing of it outlives this call but the metadata
    if not isinstance(obj, Mapping):
        return {}
    meta = {k: obj[k] for k in META_KEYS if obj.get(k) is not None}
    if "class_names" in meta and "num_classes" not in meta:
        meta["num_classes"] = len(meta["class_names"])
    return meta


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    obj = _read_object(path)
    path = os.fspath(path)
    while isinstance(obj, Mapping) and not any(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            start = "no state dict found; top-level keys: "
            keys = some_names(sorted(map(str, obj)), REASON_MAX_CHARS - len(start))
            raise CheckpointError(path, f"{start}{keys}")
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


def known_layout(state_dict: Mapping[str, torch.Tensor], arch: str, path: str = "<memory>"):
    """`detect_layout`, or a CheckpointError listing the first keys when no layout matches."""
    layout = detect_layout(state_dict, arch)
    if layout is None:
        start = f"unknown checkpoint layout for a {arch} model (keys: "
        sample = some_names(list(state_dict), REASON_MAX_CHARS - len(start) - 1)
        raise CheckpointError(path, f"{start}{sample})")
    return layout


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str, path: str = "<memory>"):
    layout = known_layout(state_dict, arch, path)
    return layout.NAME, layout.to_ours(dict(state_dict), arch)


class LoadReport(str):
    """What `load_pretrained` returns: the detected layout's name (a str, as it always was), carrying
    the keys that were not loaded: `missing`, `unexpected`, `mismatched` (in shape), and `reasons`
    (key -> why a table could not be fitted to the model)."""

    def __new__(cls, layout: str, missing=(), unexpected=(), mismatched=(), reasons: Mapping[str, str] | None = None):
        report = super().__new__(cls, layout)
        report.missing, report.unexpected = tuple(missing), tuple(unexpected)
        report.mismatched, report.reasons = tuple(mismatched), dict(reasons or {})
        return report

    @property
    def layout(self) -> str:
        return str.__str__(self)

    @property
    def complete(self) -> bool:
        """Every key of the model was loaded, and every key of the checkpoint used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, max_chars: int | None = None) -> str:
        """The keys left out, in one line: 'missing keys: a, b, ... (33 in all); unexpected keys:
        ...; shape mismatch keys: ...; key: why it could not be fitted'.

        Each kind lists its first 20 keys, and every reason. Within `max_chars` (an error's reason,
        which a user reads as one line) every kind still says how many keys it has, and as many
        keys and reasons are named as fit: first one key of each kind, then reasons and further
        keys in turn."""
        groups = [(label, keys) for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                                                    ("shape mismatch", self.mismatched)) if keys]
        reasons = [f"{key}: {reason}" for key, reason in self.reasons.items()]

        def described(shown: list[int], explained: int) -> str:
            parts = [f"{label} keys: {name_list(keys, count)}" for (label, keys), count in zip(groups, shown)]
            parts += reasons[:explained]
            if explained < len(reasons):
                left_out = len(reasons) - explained
                parts.append(f"{left_out} more reason{'s' if left_out > 1 else ''} left out")
            return "; ".join(parts)

        if max_chars is None:
            return described([min(len(keys), 20) for _, keys in groups], len(reasons))
        shown, explained = [0] * len(groups), 0

        def widened(index: int) -> bool:
            nonlocal shown
            wider = shown[:index] + [shown[index] + 1] + shown[index + 1 :]
            if shown[index] < len(groups[index][1]) and len(described(wider, explained)) <= max_chars:
                shown = wider
                return True
            return False

        for index in range(len(groups)):
            widened(index)
        grown = True
        while grown:
            grown = explained < len(reasons) and len(described(shown, explained + 1)) <= max_chars
            explained += grown
            grown = any([widened(index) for index in range(len(groups))]) or grown
        return described(shown, explained)


def checkpoint_source(checkpoint: Checkpoint, layout, arch: str) -> dict:
    """How the checkpoint's own model was built, as far as it can be told: constructor arguments such
    as num_frames, image_size, patch/tubelet size and variant. Ours: the registered spec it names with
    the model_kwargs it records; a foreign layout: what its module's `source_kwargs(path, arch)` reads
    (HF: the config.json saved beside the weights). Empty when nothing says."""
    meta = read_checkpoint_meta(checkpoint)
    if meta.get("model_name"):
        from spatiotemporal.models.registry import get_spec, recorded_kwargs

        try:
            spec = get_spec(meta["model_name"])
        except KeyError:
            return dict(meta.get("model_kwargs") or {})
        return recorded_kwargs(spec, meta)
    describe = getattr(layout, "source_kwargs", None)
    return dict(describe(checkpoint.path, arch) or {}) if describe is not None else {}


def _adapted(model, ours: dict, source: dict, path, strict: bool) -> tuple[dict, dict[str, str]]:
    """`model.adapt_checkpoint(ours, source)`. A table it cannot fit is an error naming the key; with
    strict=False it is kept out of the adaptation, and its reason returned (the loader then leaves
    it out as a mismatch)."""
    from spatiotemporal.tokens.pos_embed import PositionTableError

    adapt = getattr(model, "adapt_checkpoint", None)
    if adapt is None:
        return ours, {}
    held: dict[str, torch.Tensor] = {}
    reasons: dict[str, str] = {}
    while True:
        try:
            adapted = adapt({k: v for k, v in ours.items() if k not in held}, source)
        except PositionTableError as err:
            if strict or err.key is None or err.key in held:
                raise CheckpointError(path, str(err)) from None
            held[err.key], reasons[err.key] = ours[err.key], err.reason
            continue
        return {**adapted, **held}, reasons


def load_pretrained(model: torch.nn.Module, path, strict: bool = True) -> LoadReport:
    """Load `path` (or a `Checkpoint` already read) into `model` in place; returns a LoadReport: the
    detected layout's name, with the keys that were not loaded.

    The model adapts the checkpoint to its own configuration first (position tables of another grid,
    an image model's patch embedding), told how the checkpoint's model was built when the checkpoint
    says (`checkpoint_source`). With strict=True, any missing, unexpected or mismatched key raises a
    CheckpointError listing them; with strict=False the keys that fit are loaded and one warning lists
    the others in the same words.
    """
    arch = getattr(model, "arch", None)
    if arch is None:
        raise TypeError(f"{type(model).__name__} has no `arch` attribute; cannot pick a converter")
    checkpoint = read_checkpoint(path)
    path = checkpoint.path
    state_dict = read_state_dict(checkpoint)
    layout = known_layout(state_dict, arch, path)
    layout_name, ours = layout.NAME, layout.to_ours(dict(state_dict), arch)
    ours, reasons = _adapted(model, ours, checkpoint_source(checkpoint, layout, arch), path, strict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    # A table the model could not fit is left out even where its shape happens to match.
    mismatched = sorted(
        k for k in set(expected) & set(ours) if tuple(expected[k].shape) != tuple(ours[k].shape) or k in reasons
    )
    report = LoadReport(layout_name, missing, unexpected, mismatched, reasons)
    if not report.complete:
        message = f"{layout_name} checkpoint does not fit {arch}"
        if strict:
            raise CheckpointError(path, f"{message}: {report.describe(REASON_MAX_CHARS - len(message) - 2)}")
        warnings.warn(f"{path}: {message}; loaded the rest (strict=False), left out {report.describe()}",
                      stacklevel=2)
    usable = {k: v for k, v in ours.items() if k in expected and k not in mismatched}
    model.load_state_dict(usable, strict=False)
    return report
