"""Training configs: YAML files with defaults filled in and `dotted.key=value` overrides on top."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

# Every key a config may set, with its default. A key not listed here is a typo and is rejected.
DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "output_dir": "runs",
    "task": "video",  # "video" (clip classification) or "points" (per-point segmentation)
    # weights: a catalogue entry (`spatiotemporal weights list`) to fine-tune from, e.g. k400.
    "model": {"name": None, "num_classes": None, "weights": None, "kwargs": {}},
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
        # Training clips: "random" (an integer start, frames `stride` apart, as mmaction2 draws them;
        # a video shorter than the clip repeats its last frame) or
        # "protocol" (drawn as the code base of the model's test protocol draws them: SlowFast's
        # float start, linspace frames and TARGET_FPS for TimeSformer and MViTv2, DMVR's offsets
        # for ViViT, mmaction2's looping for Video Swin), what the paper configs use.
        "train_sampling": "random",
        # How samples reach the workers: "loader" (a torch DataLoader in each Ray Train worker,
        # decoding on its own CPUs) or "ray" (Ray Data tasks decode on any node of the cluster and
        # stream batches to each worker; see feed.py).
        "feed": "loader",
        # feed ray: what one decode task holds, e.g. {CPU: 1, decode: 1} for a custom resource only
        # CPU-only nodes advertise. A resource no node offers falls back to the cluster's CPUs.
        "decode_resources": {"CPU": 1},
        "decode_tasks": 2,  # feed ray: decode tasks at once per training worker
        "feed_prefetch": 2,  # feed ray: batches held ready for each worker's next steps
        "feed_memory_mb": 512,  # feed ray: object-store memory each worker's stream may hold
        "feed_stall_s": 600,  # feed ray: a stream with no progress this long fails the workers
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
        # Restarts from the latest checkpoint after a worker or node fails; None: 3 on a cluster
        # joined by address or of several nodes, 0 on a local one (see failures.py); -1: no limit.
        "max_failures": None,
    },
    # None: the model spec's protocol. short_side: the test resize; by default the protocol's when
    # the crop is the spec's own (the paper's setting), else data.short_side. tta (points): sum
    # Pointcept's 13 test-time augmentations, 13 times the work.
    "eval": {"views": None, "aggregation": None, "short_side": None, "tta": False, "batch_size": 8},
    "ray": {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}, "address": None},
}
TRAIN_SAMPLING = ("random", "protocol")
FEEDS = ("loader", "ray")
# Mappings that take whatever keys they are given (model constructor arguments, Ray resources,
# name component -> lr multiplier); a file or override replaces them whole.
FREE_FORM = frozenset({"model.kwargs", "ray.resources_per_worker", "optim.lr_scales", "data.decode_resources"})
# The type of each setting whose default is None (unset); the others have their default's type.
NULLABLE = {
    "model.name": str, "model.num_classes": int, "model.weights": str,
    "data.root": str, "data.num_frames": int, "data.frame_stride": int, "data.crop_size": int, "data.short_side": int,
    "optim.layer_decay": float,
    "train.clip_grad": float, "train.ema_decay": float, "train.crash_at_step": int, "train.max_failures": int,
    "eval.views": str, "eval.aggregation": str, "eval.short_side": int,
    "ray.address": str,
}  # fmt: skip
# YAML 1.1 (PyYAML) reads a float only with a dot and a signed exponent: 3e-4 and 1.0e4 stay strings.
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file (or override) and the setting."""


def _numbers(value: Any) -> Any:
    """Numbers written with an exponent, which YAML 1.1 leaves as strings, as floats (in lists and
    mappings too: model kwargs such as drop_path_rate: 1e-1)."""
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def _default(path: str) -> Any:
    node: Any = DEFAULTS
    for key in path.split("."):
        node = node[key]
    return node


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value)


def _checked(path: str, value: Any, source: str) -> Any:
    """`value` for the setting `path` after the number conversion, or a ConfigError saying what
    type the setting takes."""
    value = _numbers(value)
    default = _default(path)
    expected = NULLABLE.get(path, type(default)) if default is None else type(default)
    if value is None:
        if default is None:
            return None
        raise ConfigError(f"{source}: {path} cannot be null (default {default!r})")
    if expected is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif expected is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif expected is float:
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif expected is str:
        ok, what = isinstance(value, str), "a string"
    elif expected is list:
        ok, what = isinstance(value, list) and len(value) == len(default), f"a list of {len(default)}"
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        what += " numbers"
    else:
        ok, what = True, ""
    if not ok:
        raise ConfigError(f"{source}: {path} must be {what}, not {_describe(value)}")
    return value


def _merge(base: dict, override: Any, source: str, where: str = "") -> dict:
    """`base` with the settings of `override` (from `source`, a file name or an override) on top,
    each checked: known key, type of its default, sections as mappings."""
    if not isinstance(override, dict):
        what = f"section {where[:-1]}" if where else "a config"
        found = "a list" if isinstance(override, list) else _describe(override)
        raise ConfigError(f"{source}: {what} must be a mapping of settings (key: value), not {found}")
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in base:
            known = f"known in {where[:-1]}" if where else "known sections and settings"
            raise ConfigError(f"{source}: unknown config key {path}; {known}: {', '.join(sorted(base))}")
        if path in FREE_FORM:
            value = {} if value is None else _numbers(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path} must be a mapping, not {_describe(value)}")
            out[key] = copy.deepcopy(value)
        elif isinstance(base[key], dict):
            if value is not None:  # a section left empty (every setting commented out) keeps its defaults
                out[key] = _merge(base[key], value, source, path + ".")
        else:
            out[key] = copy.deepcopy(_checked(path, value, source))
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(error)})") from None
    return key.split("."), _numbers(value)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        source = f"override {text!r}"
        node = config
        for i, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"{source}: {key!r} is not a section")
            node = node[key]
        path, last = ".".join(keys), keys[-1]
        parent = ".".join(keys[:-1])
        if parent in FREE_FORM:
            node[last] = value
        elif last not in node:
            raise ConfigError(f"{source}: unknown key {last!r}")
        else:
            node[last] = _merge({last: node[last]}, {last: value}, source, parent + "." if parent else "")[last]
    return config


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def read_config_file(path: str | Path) -> dict:
    """A config file's settings, not yet merged with the defaults. Every failure is one line
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(error)}") from None
    return {} if raw is None else raw


def merged_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> dict:
    """Defaults <- YAML file <- `data` <- overrides, every setting checked against DEFAULTS (known
    key, its type), without the model registry: torch-free, so a command can read settings such as
    ray.address before it loads torch. Raises ConfigError (a ValueError) or FileNotFoundError
    naming the file or override and the setting."""
    config = DEFAULTS
    if path is not None:
        config = _merge(config, read_config_file(path), str(path))
    if data is not None:
        config = _merge(config, data, "the config" if path is None else "the given settings")
    return apply_overrides(config, overrides or [])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> dict:
    """`merged_config`, and the model must be registered and of the task's kind. Raises
    ConfigError (a ValueError) naming the file or override and the setting."""
    from spatiotemporal.models.registry import get_spec

    config = merged_config(path, overrides, data)
    source = "the config" if path is None else str(path)
    name = config["model"]["name"]
    if not name:
        raise ConfigError(f"{source}: names no model (model.name)")
    if config["task"] not in ("video", "points"):
        raise ConfigError(f"{source}: task must be 'video' or 'points', not {config['task']!r}")
    for key, choices in (("train_sampling", TRAIN_SAMPLING), ("feed", FEEDS)):
        if config["data"][key] not in choices:
            raise ConfigError(f"{source}: data.{key} must be one of {', '.join(choices)}, not {config['data'][key]!r}")
    for key, least in (("decode_tasks", 1), ("feed_prefetch", 0), ("feed_memory_mb", 1), ("feed_stall_s", 1)):
        if config["data"][key] < least:
            raise ConfigError(f"{source}: data.{key} must be at least {least}, not {config['data'][key]!r}")
    for resource, amount in config["data"]["decode_resources"].items():
        if resource in ("GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{source}: data.decode_resources.{resource}: decode tasks take CPUs and resources "
                              "the nodes advertise, not GPUs or memory")  # fmt: skip
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{source}: data.decode_resources.{resource} must be a number >= 0, not {amount!r}")
    try:
        spec = get_spec(name)
    except KeyError as error:
        raise ConfigError(f"{source}: model.name: {error.args[0]}") from None
    if spec.family != config["task"]:
        raise ConfigError(
            f"{source}: model {name} is a {spec.family} model but task is {config['task']!r}; set task: {spec.family}"
        )
    if config["model"]["weights"]:
        from spatiotemporal.weights import get_entry

        try:  # the name only: the file is fetched when the run starts
            entry = get_entry(config["model"]["weights"], model=name)
            # The release's own arguments (TimeSformer-L's 64-frame SSv2 model), under the config's:
            # the clips cut, the model built and what its checkpoints record all read them here.
            kwargs = with_entry_kwargs(spec, config["model"]["kwargs"], entry)
        except ValueError as error:
            raise ConfigError(f"{source}: model.weights: {error}") from None
        config["model"] = {**config["model"], "kwargs": kwargs}
    return config


def with_entry_kwargs(spec, kwargs: dict, entry, previous=None) -> dict:
    """A config's `model.kwargs` with the catalogue entry's `model_kwargs` under them (the config's
    explicit arguments win, under old names too). `previous`: the entry those kwargs were merged
    with before, whose arguments are taken out first (a config of one release evaluating another)."""
    from spatiotemporal.models.registry import canonical_kwargs

    kwargs = dict(kwargs)
    if previous is not None and previous.name != entry.name:
        kwargs = {k: v for k, v in kwargs.items() if k not in previous.model_kwargs or previous.model_kwargs[k] != v}
    given = canonical_kwargs(spec, kwargs, "model.kwargs")
    return {**{k: v for k, v in entry.model_kwargs.items() if k not in given}, **kwargs}


def check_data_root(config: dict, source: str | Path | None = None) -> Path:
    """The dataset directory, resolved, checked before any worker is started: set, present, and for
    points holding the split folders. `source`: the config file, named in the error."""
    data = config["data"]
    where = f"{source}: " if source is not None else ""
    if data["root"] is None:
        raise ConfigError(f"{where}data.root is not set: give the dataset (data.root=PATH)")
    root = Path(data["root"]).expanduser().resolve()
    if not root.exists():
        raise ConfigError(f"{where}data.root {root}: no such file or directory")
    if config["task"] == "points":
        for key in ("train_split", "val_split"):
            if not (root / data[key]).is_dir():
                raise ConfigError(f"{where}data.root {root}: no {data[key]}/ folder of preprocessed scenes (data.{key})")
    return root


def parse_views(text: str | None) -> tuple[int, int] | None:
    """'4x3' -> (4 temporal clips, 3 spatial crops)."""
    if text is None:
        return None
    try:
        t, s = (int(x) for x in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"views must look like 4x3 (temporal x spatial), not {text!r}") from None
    return t, s
