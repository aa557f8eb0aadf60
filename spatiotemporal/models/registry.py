"""One registry for every model: `create_model(name, **kw)` and `list_models()`.

A model file registers its configurations as data (a `ModelSpec` per name). The spec carries what
inference and evaluation need besides the weights: input size, preprocessing, and the paper's test
protocol, so the evaluator and the CLI never guess them.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# Model files, imported on first use of the registry so `import spatiotemporal` stays cheap.
MODEL_MODULES = (
    "spatiotemporal.models.timesformer",
    "spatiotemporal.models.vivit",
    "spatiotemporal.models.mvitv2",
    "spatiotemporal.models.video_swin",
    "spatiotemporal.models.point_transformer",
    "spatiotemporal.models.stratified_transformer",
)


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 frames become model input: x = (frames / 255 - mean) / std, laid out as `layout`."""

    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    layout: str = "BCTHW"


@dataclass(frozen=True)
class TestProtocol:
    """The paper's Kinetics test views: temporal clips x spatial crops, and how views are averaged."""

    temporal_views: int = 1
    spatial_crops: int = 1
    aggregation: str = "softmax"  # or "logits" (ViViT/scenic, TimeSformer)
    short_side: int | None = None  # resize before cropping, at the spec's crop size; None means crop_size
    anchor: str = "mmaction2"  # where the temporal views sit: a `spatiotemporal.data.sampling.Anchor`
    # The frame rate the test code resamples every video to before placing views (SlowFast's
    # TARGET_FPS); None: frames are taken as the video has them.
    target_fps: float | None = None
    # How views are sized, resized and cropped: a `spatiotemporal.io.resize.Geometry`, named by the
    # loader whose resize the views copy ("slowfast", "slowfast_decoder", "mmaction2", "dmvr").
    geometry: str = "slowfast"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "video" or "points"
    builder: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 400
    num_frames: int | None = None
    frame_stride: int | None = None
    crop_size: int | None = None
    in_channels: int = 3
    preprocess: Preprocess = Preprocess()
    protocol: TestProtocol = TestProtocol()
    published_params_m: float | None = None  # millions, with `num_classes` outputs
    params_source: str = ""
    description: str = ""
    # Older names of constructor arguments (old name -> name), still accepted from configs and checkpoints.
    kwarg_aliases: dict[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def split_config_overrides(config, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(config with the overrides that name its fields applied, the remaining overrides).

    Lets a YAML `model.kwargs` change an architecture's config (a window size, a dropout) as well
    as its constructor arguments; YAML lists become the tuples the configs hold.
    """
    names = {f.name for f in dataclasses.fields(config)}
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k in names}
    rest = {k: v for k, v in overrides.items() if k not in names}
    return dataclasses.replace(config, **changes), rest


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_model_modules() -> None:
    global _loaded
    if _loaded:
        return
    for module_name in MODEL_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # A model file not written yet in a partial tree; any other missing import is a bug.
            if err.name != module_name:
                raise
    _loaded = True


def list_models(family: str | None = None) -> list[str]:
    _load_model_modules()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def get_spec(name: str) -> ModelSpec:
    _load_model_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def canonical_kwargs(spec: ModelSpec, kwargs: dict[str, Any], where: str = "the arguments") -> dict[str, Any]:
    """`kwargs` with the spec's old argument names replaced by the current ones."""
    out = dict(kwargs)
    for old, new in spec.kwarg_aliases.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ValueError(f"{spec.name}: {where} gives both {old}={value!r} and {new}={out[new]!r}")
            out[new] = value
    return out


def built_spec(spec: ModelSpec, kwargs: dict[str, Any], clip: dict[str, Any] | None = None,
               explicit: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of a video model as built: its clip geometry follows the model's `num_frames` and
    `image_size` (from overrides or a checkpoint's kwargs), then a checkpoint's record of the clips
    it was trained on (`clip`), then frames and size given explicitly. Unchanged: `spec` itself.

    A crop other than the paper's is not resized to the paper's short side (training's rule too):
    its test resize is the checkpoint's, or the crop itself.
    """
    if spec.family != "video":
        return spec
    geometry = {"num_frames": spec.num_frames, "frame_stride": spec.frame_stride,
                "crop_size": spec.crop_size, "short_side": spec.protocol.short_side}

    def set_crop(size: int | None) -> None:
        if size is not None and size != geometry["crop_size"]:
            geometry.update(crop_size=size, short_side=None)

    geometry["num_frames"] = kwargs.get("num_frames", geometry["num_frames"])
    set_crop(kwargs.get("image_size"))
    clip = clip or {}
    for key in ("num_frames", "frame_stride"):
        if clip.get(key) is not None:
            geometry[key] = clip[key]
    set_crop(clip.get("crop_size"))
    if "short_side" in clip:
        geometry["short_side"] = clip["short_side"]
    explicit = explicit or {}
    if explicit.get("num_frames") is not None:
        geometry["num_frames"] = explicit["num_frames"]
    set_crop(explicit.get("image_size"))
    built_kwargs = {k: v for k, v in kwargs.items() if k != "num_classes"}
    if all(getattr(spec, k) == geometry[k] for k in ("num_frames", "frame_stride", "crop_size")) and (
        spec.protocol.short_side == geometry["short_side"]
    ) and built_kwargs == spec.kwargs:
        return spec
    return dataclasses.replace(
        spec,
        kwargs=built_kwargs,
        num_frames=geometry["num_frames"],
        frame_stride=geometry["frame_stride"],
        crop_size=geometry["crop_size"],
        protocol=dataclasses.replace(spec.protocol, short_side=geometry["short_side"]),
    )


def recorded_kwargs(spec: ModelSpec, meta: dict, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constructor arguments a model of `spec` is built with: the spec's own, then the
    `model_kwargs` a checkpoint of ours records (`meta`), then explicit overrides, under current names."""
    return {
        **canonical_kwargs(spec, spec.kwargs, "the spec"),
        **canonical_kwargs(spec, meta.get("model_kwargs") or {}, "the checkpoint's model_kwargs"),
        **canonical_kwargs(spec, overrides or {}, "the arguments"),
    }


def _published_weights(name: str, weights: str | dict, pretrained: Any, num_classes: int | None,
                       overrides: dict[str, Any]) -> tuple[Any, int | None, dict[str, Any]]:
    """(the catalogue entry's local file, its class count, its constructor arguments under the
    explicit ones): what `weights=` means, fetched into the cache on first use."""
    from spatiotemporal.weights import local_weights

    if pretrained is not None:
        raise ValueError(f"{name}: give weights= (a catalogue entry) or pretrained= (a file), not both")
    entry, path = local_weights(weights, model=name)
    return path, entry.num_classes if num_classes is None else num_classes, {**entry.model_kwargs, **overrides}


def _plan(name: str, num_classes: int | None, pretrained: Any, overrides: dict[str, Any],
          weights: str | dict | None = None, meta_only: bool = False):
    """(checkpoint read once or None, builder kwargs, spec as built) for `create_model`'s arguments.

    `meta_only` (the spec alone, nothing loaded): a file's metadata is read memory-mapped rather than
    the whole file, and published weights are not opened at all: the catalogue entry says how their
    model is built (its classes and `model_kwargs`; their foreign layouts record nothing of ours).
    The checkpoint returned is then None."""
    spec = get_spec(name)
    published = weights is not None
    if published:
        pretrained, num_classes, overrides = _published_weights(name, weights, pretrained, num_classes, overrides)
    meta = {}
    if pretrained is not None:
        from spatiotemporal.convert import read_checkpoint, read_checkpoint_meta

        if not meta_only:
            pretrained = read_checkpoint(pretrained)  # read once, for the metadata and the weights
            meta = read_checkpoint_meta(pretrained)
        elif not published:
            meta = read_checkpoint_meta(pretrained)  # memory-mapped: the weights stay on disk
    if meta_only:
        pretrained = None
    overrides = canonical_kwargs(spec, overrides, "the arguments")
    kwargs = recorded_kwargs(spec, meta, overrides)
    if num_classes is None:
        num_classes = meta.get("num_classes", spec.num_classes)
    kwargs["num_classes"] = num_classes
    return pretrained, kwargs, built_spec(spec, kwargs, meta.get("clip"), overrides)


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: Any = None,
    strict: bool = True,
    weights: str | dict | None = None,
    **overrides: Any,
):
    """Build a registered model. `pretrained` is a checkpoint path in any supported layout (or one
    already read by `spatiotemporal.convert.read_checkpoint`); `weights` names a published checkpoint
    of the catalogue instead, by its tag ("k400") or whole name ("mvitv2_s.k400"), downloaded into
    the cache and hash-checked on first use (`spatiotemporal.weights`), or what a Ray driver's
    `spatiotemporal.weights.share_weights` described for its workers.

    Our training checkpoints record the overrides, classes and clip geometry they were trained with;
    those are applied before explicit arguments, so a fine-tuned tiny model loads from its path alone.
    Every video model takes `num_frames` and `image_size`; `model.spec` is the registered spec with the
    clip geometry the model was built and trained for, which is what inference feeds it.
    """
    pretrained, kwargs, spec = _plan(name, num_classes, pretrained, overrides, weights)
    model = spec.builder(**kwargs)
    model.spec = spec
    model.num_classes = kwargs["num_classes"]
    if pretrained is not None:
        from spatiotemporal.convert import load_pretrained

        load_pretrained(model, pretrained, strict=strict)
    return model


def resolved_spec(name: str, pretrained: Any = None, weights: str | dict | None = None,
                  **overrides: Any) -> ModelSpec:
    """`create_model(name, pretrained=..., **overrides).spec` without building the model: for a front
    end that cuts clips before (or away from) where the model is built. A checkpoint's metadata is
    read memory-mapped; published weights are fetched into the cache (so a missing file is an error
    here) but not read: their catalogue entry gives the classes and arguments."""
    return _plan(name, None, pretrained, overrides, weights, meta_only=True)[2]


def model_skeleton(name: str, pretrained: Any = None, weights: str | dict | None = None, **overrides: Any):
    """The architecture `create_model(name, pretrained=..., weights=..., **overrides)` builds, on the
    meta device: the same constructor arguments and `spec` (resolved as `resolved_spec` resolves
    them), no weights and no memory. For what needs a model's layers and shapes alone (the
    precision probe's matmul shapes) where the model itself is built elsewhere."""
    import torch

    _, kwargs, spec = _plan(name, None, pretrained, overrides, weights, meta_only=True)
    with torch.device("meta"):
        model = spec.builder(**kwargs)
    model.spec = spec
    model.num_classes = kwargs["num_classes"]
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def point_feature_keys(model) -> tuple[str, ...]:
    """The per-point entries a point model reads, in order (its class's `feature_keys`: Point
    Transformer colour + normal as Pointcept's ScanNet config, Stratified Transformer coord +
    colour as the reference). Sees through DistributedDataParallel and torch.compile wrappers."""
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    try:
        return tuple(type(inner).feature_keys)
    except AttributeError:
        raise TypeError(f"{type(inner).__name__} declares no point feature_keys") from None
