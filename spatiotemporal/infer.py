"""Inference on single clips and scans, with the model built once and reused for every input.

Video: the model spec says how to preprocess (frames, stride, crop, mean/std) and the paper's
test protocol (T temporal clips x S spatial crops, averaged as softmax scores or logits); the
result is the top-k labels with probabilities. Points: the scan is grid-sampled, predicted, and
the predictions are carried back to every original point.

Batch jobs (`pipelines/`) reuse the pieces here: `clip_views` runs in CPU decode tasks and
`VideoClassifier.predict_views` in the inference actors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from spatiotemporal.data.sampling import Anchor
from spatiotemporal.data.transforms import ClipTransform
from spatiotemporal.io.errors import CheckpointError, InputError
from spatiotemporal.io.resize import Geometry
from spatiotemporal.models.registry import ModelSpec, create_model, get_spec, point_feature_keys
from spatiotemporal.precision import check_precision, choose_precision, model_matmul_shapes, store_autocast_weights
from spatiotemporal.weights import require_weights


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but CUDA is not available")
    return torch.device(device)


def parse_views(text: str | None, spec: ModelSpec) -> tuple[int, int]:
    """'TxS' (e.g. '4x3'), or the spec's own protocol when None."""
    if not text:
        return spec.protocol.temporal_views, spec.protocol.spatial_crops
    try:
        temporal, spatial = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--views must look like TxS (e.g. 4x3), got {text!r}") from None
    if temporal < 1 or spatial not in (1, 3):
        raise ValueError(f"--views {text!r}: need T >= 1 and S in (1, 3)")
    return temporal, spatial


def check_topk(topk: int) -> int:
    """`topk` if it asks for at least one label. Front ends call this before building a model so a
    bad `--topk` is one error line, not an empty answer (0) or a failure per file (< 0)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"--topk must be an integer >= 1, got {topk!r}")
    return topk


@dataclass(frozen=True)
class ClipRecipe:
    """What to cut from a video: `views` = (temporal clips, spatial crops) of `frames` frames."""

    frames: int = 16
    stride: int = 4
    crop: int = 224
    short_side: int | None = None
    views: tuple[int, int] = (1, 1)
    anchor: Anchor = "mmaction2"
    target_fps: float | None = None  # the rate the anchor resamples videos to (SlowFast's TARGET_FPS)
    geometry: Geometry = "slowfast"

    @classmethod
    def from_spec(cls, spec: ModelSpec, views: tuple[int, int]) -> "ClipRecipe":
        """The spec's own test protocol: the views sit and are resized as the paper evaluated."""
        crop = spec.crop_size or 224
        protocol = spec.protocol
        return cls(spec.num_frames or 8, spec.frame_stride or 1, crop, protocol.short_side, views, protocol.anchor,
                   protocol.target_fps, protocol.geometry)


def clip_views(path: str | os.PathLike, recipe: ClipRecipe, timeout_s: float = 30.0, backend: str = "auto") -> np.ndarray:
    """Decode the frames the recipe needs and cut the views: uint8 (T*S, frames, H, W, C).

    The frames are placed by evaluation's `ClipSampling.test_indices` and cut by its
    `ClipTransform.test_views`, so a model sees the same pixels from `infer` and the pipelines as
    from `eval kinetics`. uint8 keeps what crosses process boundaries in a batch job four times
    smaller than float; `views_to_input` normalizes on the consumer side.
    """
    return clip_views_and_backend(path, recipe, timeout_s, backend)[0]


def clip_views_and_backend(path: str | os.PathLike, recipe: ClipRecipe, timeout_s: float = 30.0,
                           backend: str = "auto") -> tuple[np.ndarray, str]:
    """`clip_views`, and the decoder that read the video (batch jobs record it per input).
    `backend` is the reader's (`VideoReader`): "auto" unless a caller pins one."""
    from spatiotemporal.data.kinetics import ClipSampling
    from spatiotemporal.io.video import VideoReader

    temporal, spatial = recipe.views
    sampling = ClipSampling(num_frames=recipe.frames, stride=recipe.stride, num_clips=temporal, anchor=recipe.anchor,
                            anchor_fps=recipe.target_fps)
    transform = ClipTransform(crop_size=recipe.crop, test_short_side=recipe.short_side, num_crops=spatial,
                              geometry=recipe.geometry)
    # A loader that resizes inside its decoder (SlowFast's torchvision one) is followed at decode.
    with VideoReader(path, backend=backend, timeout_s=timeout_s, **transform.test_reader_resize()) as reader:
        if len(reader) < 1:
            raise InputError(path, "the video has no decodable frames")
        frames = torch.as_tensor(reader.get_frames(sampling.test_indices(reader).reshape(-1).tolist()))
        served_by = reader.backend  # after the read, which may have fallen back
    views = transform.test_views(frames, recipe.frames)
    return rearrange(views, "v c t h w -> v t h w c").contiguous().numpy(), served_by


def view_input_shape(spec: ModelSpec) -> tuple[int, ...]:
    """The shape of one view as the model takes it: (1, C, T, H, W), or (1, T, C, H, W)."""
    frames, size = spec.num_frames or 8, spec.crop_size or 224
    if spec.preprocess.layout == "BTCHW":
        return 1, frames, spec.in_channels, size, size
    return 1, spec.in_channels, frames, size, size


def views_to_input(views: np.ndarray | torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 (..., V, T, H, W, C) -> normalized float in the model's layout, (V, C, T, H, W) by default."""
    x = torch.as_tensor(views).float().div_(255)
    mean = torch.tensor(spec.preprocess.mean, dtype=x.dtype)
    std = torch.tensor(spec.preprocess.std, dtype=x.dtype)
    x = (x - mean) / std
    if spec.preprocess.layout == "BTCHW":
        return rearrange(x, "... t h w c -> ... t c h w")
    return rearrange(x, "... t h w c -> ... c t h w")


def aggregate_views(logits: torch.Tensor, aggregation: str) -> torch.Tensor:
    """(V, K) view logits -> (K,) class probabilities, averaged the way the paper evaluated."""
    if aggregation == "logits":
        return logits.mean(0).softmax(-1)
    return logits.softmax(-1).mean(0)


def class_names_for(num_classes: int, checkpoint: str | None = None) -> list[str]:
    """Names from the checkpoint when it carries them, else Kinetics (400/600), else class_<i>."""
    from spatiotemporal.convert import read_checkpoint_meta
    from spatiotemporal.meta import head_class_names, kinetics_class_names

    names = read_checkpoint_meta(checkpoint).get("class_names") if checkpoint is not None else None
    kinetics = [kinetics_class_names(num_classes)] if num_classes in (400, 600) else []
    try:
        return head_class_names(num_classes, names, kinetics)
    except ValueError as err:
        raise CheckpointError(checkpoint, str(err)) from None


@dataclass
class VideoPrediction:
    path: str
    labels: list[str]
    probs: list[float]
    class_ids: list[int]
    embedding: np.ndarray | None = None


class VideoClassifier:
    """A video model built once: clips in, top-k labels with probabilities out."""

    def __init__(
        self,
        model: str,
        checkpoint: str | None = None,
        views: str | tuple[int, int] | None = None,
        device: str = "auto",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        precision: str = "auto",
        weights: str | dict | None = None,
        random_weights: bool = False,
    ):
        self.spec = get_spec(model)
        if self.spec.family != "video":
            raise ValueError(f"{model} is a {self.spec.family} model, not a video model")
        # A model with neither weights nor a checkpoint predicts noise: only when asked for.
        require_weights(model, checkpoint, weights, random_weights)
        if num_classes is None and class_names:
            num_classes = len(class_names)
        self.device = resolve_device(device)
        check_precision(precision)  # before the model is built: a bad precision costs nothing
        if checkpoint is not None:
            from spatiotemporal.convert import read_checkpoint

            # Read once: the model's kwargs, its weights and its class names all come from it.
            checkpoint = read_checkpoint(checkpoint)
        # create_model takes the class count a checkpoint of ours records when none is given.
        # `weights`: a catalogue entry (spatiotemporal.weights), fetched into the cache on first use.
        self.model = create_model(model, num_classes=num_classes, pretrained=checkpoint,
                                  weights=weights).eval().to(self.device)
        # The spec as built: clips of the frames and size the model was built (and trained) for.
        self.spec = self.model.spec
        # `auto` on a CPU times bf16 against fp32 at this model's own matmul shapes (cached).
        self.precision_choice = choose_precision(
            precision, self.device, lambda: model_matmul_shapes(self.model, view_input_shape(self.spec)))
        self.dtype = self.precision_choice.dtype
        if self.dtype != torch.float32:
            store_autocast_weights(self.model, self.dtype)
        self.num_classes = self.model.num_classes
        self.class_names = class_names or class_names_for(self.num_classes, checkpoint)
        self.views = views if isinstance(views, tuple) else parse_views(views, self.spec)

    @property
    def precision(self) -> str:
        """What the model computes in: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    @property
    def recipe(self) -> ClipRecipe:
        return ClipRecipe.from_spec(self.spec, self.views)

    def views_of(self, path: str | os.PathLike) -> np.ndarray:
        return clip_views(path, self.recipe)

    @torch.inference_mode()
    def predict_views(
        self, views: np.ndarray, topk: int = 5, embed: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """uint8 (B, V, T, H, W, C) -> top-k (B, k) ids and probs, and (B, D) embeddings if asked."""
        check_topk(topk)
        batch, count = views.shape[:2]
        x = views_to_input(views, self.spec).to(self.device)
        x = rearrange(x, "b v ... -> (b v) ...")
        # Autocast rather than a bf16 model: norms, softmax and the residual stream stay fp32, and
        # views are aggregated from fp32 logits. Only the matmul weights are stored in bf16.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            if embed:
                features = self.model.forward_features(x)
                logits = self.model.head(features) if hasattr(self.model, "head") else self.model(x)
            else:
                features, logits = None, self.model(x)
        logits = rearrange(logits.float(), "(b v) k -> b v k", b=batch, v=count)
        probs = torch.stack([aggregate_views(view_logits, self.spec.protocol.aggregation) for view_logits in logits])
        top = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        embedding = None
        if features is not None:
            embedding = rearrange(features.float(), "(b v) d -> b v d", b=batch, v=count).mean(1).cpu().numpy()
        return top.indices.cpu().numpy(), top.values.cpu().numpy(), embedding

    def predict(self, path: str | os.PathLike, topk: int = 5) -> VideoPrediction:
        ids, probs, _ = self.predict_views(self.views_of(path)[None], topk)
        return VideoPrediction(
            path=os.fspath(path),
            labels=[self.class_names[i] for i in ids[0]],
            probs=[float(p) for p in probs[0]],
            class_ids=[int(i) for i in ids[0]],
        )


# ------------------------------------------------------------------------------------- points


# Pointcept's ScanNet test grid: the voxel size for a model that records none of its own.
DEFAULT_VOXEL_SIZE = 0.02


@dataclass
class PointPrediction:
    path: str
    cloud: dict  # the input as read (numpy; coord relative to its `origin`), for writing a labeled copy
    segment: np.ndarray  # (N,) class index into `class_names` for every original point
    class_names: tuple[str, ...]
    fragments: int

    @property
    def is_scannet20(self) -> bool:
        """Whether the classes are the ScanNet benchmark's 20, in benchmark order."""
        from spatiotemporal.data.scannet import CLASS_NAMES

        return tuple(self.class_names) == CLASS_NAMES

    @property
    def nyu40(self) -> np.ndarray:
        """Per-point nyu40 ids: the ScanNet benchmark's submission format. Only the ScanNet
        20-class label set has them; any other is a ValueError that says what the classes are."""
        from spatiotemporal.data.scannet import NYU40_IDS

        if not self.is_scannet20:
            shown = ", ".join(self.class_names[:4]) + (", ..." if len(self.class_names) > 4 else "")
            raise ValueError(f"{self.path}: nyu40 ids exist only for the ScanNet 20-class label set; "
                             f"this model predicts {len(self.class_names)} classes ({shown})")
        return np.asarray(NYU40_IDS, dtype=np.int64)[self.segment]

    @property
    def label_kind(self) -> str:
        """What `label_ids` holds: "nyu40" for the ScanNet label set, else "class_index"."""
        return "nyu40" if self.is_scannet20 else "class_index"

    @property
    def label_ids(self) -> np.ndarray:
        """Per-point ids for a labeled file: nyu40 ids where they exist, else class indices."""
        return self.nyu40 if self.is_scannet20 else self.segment.astype(np.int64)

    def counts(self) -> dict[str, int]:
        """Points per predicted class, largest first, classes with no points left out."""
        bins = np.bincount(self.segment, minlength=len(self.class_names))
        order = np.argsort(-bins, kind="stable")
        return {self.class_names[i]: int(bins[i]) for i in order if bins[i] > 0}


def point_class_names(model, meta: dict, checkpoint: str | None = None) -> tuple[str, ...]:
    """Names of a built point model's classes: the checkpoint's own (`meta` is its
    `read_checkpoint_meta`), else ScanNet's 20 for a 20-class head of a 20-class (ScanNet)
    spec, else class_<i>, one per output of the model."""
    from spatiotemporal.data.scannet import CLASS_NAMES
    from spatiotemporal.meta import head_class_names

    scannet = [CLASS_NAMES] if model.spec.num_classes == len(CLASS_NAMES) else []
    try:
        return tuple(head_class_names(model.num_classes, meta.get("class_names"), scannet))
    except ValueError as err:
        raise CheckpointError(checkpoint, str(err)) from None


def trained_voxel_size(model, meta: dict) -> tuple[float | None, str]:
    """(the input voxel size a point model was trained at, where that is recorded), or
    (None, "") when nothing records it: the checkpoint's `grid_size` (training's data.grid_size),
    else the model config's own `grid_size` (the Stratified Transformer's KPConv scale)."""
    if meta.get("grid_size") is not None:
        return float(meta["grid_size"]), "the checkpoint"
    grid = getattr(getattr(model, "config", None), "grid_size", None)
    if grid is not None:
        return float(grid), f"the {model.spec.name} config"
    return None, ""


class PointSegmenter:
    """A point-cloud model built once: scans in, a class for every original point out.

    Test-time protocol as Pointcept runs ScanNet: the scene's floor goes to z=0 and its xy
    centre to the origin, it is voxelized at `voxel_size`, and each test fragment (one point per
    voxel, the fragments together covering every point) is predicted; softmax scores are summed
    back onto the points each fragment came from. `max_fragments` (None or 0 = all) caps the
    fragments for speed; points that no predicted fragment covered take their voxel's mean score,
    so every point is labeled even from a single fragment.

    `voxel_size` None means the one the model was trained at (`trained_voxel_size`, else
    DEFAULT_VOXEL_SIZE); a different one given explicitly is used, with a one-line warning on
    stderr, since the model's receptive fields are sized in voxels.
    """

    def __init__(
        self,
        model: str,
        checkpoint: str | None = None,
        device: str = "auto",
        voxel_size: float | None = None,
        max_fragments: int | None = None,
        weights: str | dict | None = None,
        random_weights: bool = False,
    ):
        import sys

        from spatiotemporal.convert import read_checkpoint, read_checkpoint_meta

        self.spec = get_spec(model)
        if self.spec.family != "points":
            raise ValueError(f"{model} is a {self.spec.family} model, not a point-cloud model")
        require_weights(model, checkpoint, weights, random_weights)  # no silent random predictions
        if voxel_size is not None and not voxel_size > 0:
            raise ValueError(f"--voxel-size must be a positive number of metres, got {voxel_size}")
        self.device = resolve_device(device)
        if checkpoint is not None:
            checkpoint = read_checkpoint(checkpoint)  # read once: metadata and weights come from it
        meta = read_checkpoint_meta(checkpoint) if checkpoint is not None else {}
        self.model = create_model(model, pretrained=checkpoint, weights=weights).eval().to(self.device)
        self.feature_keys = point_feature_keys(self.model)
        self.class_names = point_class_names(self.model, meta, checkpoint)
        trained, source = trained_voxel_size(self.model, meta)
        if voxel_size is None:
            voxel_size = trained if trained is not None else DEFAULT_VOXEL_SIZE
        elif trained is not None and not np.isclose(voxel_size, trained, rtol=1e-6, atol=0):
            print(f"warning: voxel size {voxel_size} m differs from the {trained} m that {source} records "
                  f"for {model}; predictions may degrade", file=sys.stderr, flush=True)
        self.voxel_size, self.max_fragments = float(voxel_size), max_fragments

    @torch.inference_mode()
    def predict(self, path: str | os.PathLike, cloud: dict | None = None) -> PointPrediction:
        from spatiotemporal.eval.scannet import predict_scene
        from spatiotemporal.io.points import estimate_normals, read_points

        cloud = read_points(path) if cloud is None else cloud
        if "color" not in cloud:
            raise InputError(path, "the model needs per-point colour, and this cloud has none")
        if "normal" in self.feature_keys and "normal" not in cloud:
            cloud = {**cloud, "normal": estimate_normals(cloud)}
        segment, fragments = predict_scene(self.model, cloud, self.voxel_size, self.max_fragments, name=os.fspath(path))
        return PointPrediction(path=os.fspath(path), cloud=cloud, segment=segment, class_names=self.class_names,
                               fragments=fragments)


def output_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One distinct file-name stem per input, for the labeled PLY and PNG that `infer --out`
    writes: the name without its suffix (`room.ply` -> `room`); where inputs share one, their
    paths below the folder they have in common (`a/room.ply`, `b/room.ply` -> `a__room`,
    `b__room`); and `-2`, `-3`, ... for what still clashes (one file given twice)."""
    stems = [_plain_stem(path) for path in paths]
    for group in _clashing_groups(stems):
        absolute = {i: Path(os.path.abspath(paths[i])) for i in group}
        base = Path(os.path.commonpath(list(absolute.values())))
        for i, path in absolute.items():
            parts = path.relative_to(base).parts
            if parts:  # empty when one path is given twice; _numbered tells those apart
                stems[i] = "__".join(parts[:-1] + (_plain_stem(path),))
    return _numbered(stems)


def _plain_stem(path: str | os.PathLike) -> str:
    return Path(os.path.abspath(path)).name.rsplit(".", 1)[0] or "scan"


def _clashing_groups(stems: list[str]) -> list[list[int]]:
    # Case-folded: `Room` and `room` are one file on macOS and Windows file systems.
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        groups.setdefault(stem.casefold(), []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def _numbered(stems: list[str]) -> list[str]:
    used: set[str] = set()
    names = []
    for stem in stems:
        name, number = stem, 1
        while name.casefold() in used:
            number += 1
            name = f"{stem}-{number}"
        used.add(name.casefold())
        names.append(name)
    return names


def class_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, one per class, from matplotlib's qualitative maps; past their 40
    colours (ScanNet200-sized heads) they repeat rather than run out."""
    import matplotlib

    colors = np.concatenate([matplotlib.colormaps["tab20"].colors, matplotlib.colormaps["tab20b"].colors])
    return (np.asarray(colors[np.arange(num_classes) % len(colors)]) * 255).round().astype(np.uint8)


def write_labeled_ply(prediction: PointPrediction, path: str | os.PathLike) -> None:
    """The input points coloured by predicted class, with `prediction.label_ids` as a `label`
    property: for the ScanNet label set the nyu40 id (ScanNet's labels.ply layout, so viewers and
    scripts for ScanNet read it), for any other the class index (`prediction.label_kind`).
    Coordinates are the input's own, the cloud's `origin` added back (double where float would
    round them, see `write_ply`)."""
    from spatiotemporal.io.points import write_ply

    palette = class_palette(len(prediction.class_names))
    cloud = {"coord": prediction.cloud["coord"], "origin": prediction.cloud.get("origin", np.zeros(3)),
             "label": prediction.label_ids}
    write_ply(path, cloud, label_key="label", colors=palette[prediction.segment])


def render_top_down(prediction: PointPrediction, path: str | os.PathLike, max_points: int = 200_000) -> None:
    """A top-down PNG of the predicted classes; higher points are drawn last so tables and
    furniture stay visible over the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    coord = np.asarray(prediction.cloud["coord"])
    keep = np.arange(len(coord))
    if len(keep) > max_points:
        keep = np.random.default_rng(0).choice(len(coord), max_points, replace=False)
    keep = keep[np.argsort(coord[keep, 2], kind="stable")]
    palette = class_palette(len(prediction.class_names)) / 255.0
    fig, ax = plt.subplots(figsize=(9, 7), dpi=120)
    ax.scatter(coord[keep, 0], coord[keep, 1], c=palette[prediction.segment[keep]], s=0.3, linewidths=0)
    ax.set_aspect("equal")
    # Drawn relative to the cloud's origin: a georeferenced scan's axes would otherwise read in
    # millions of metres with the room a speck of rounding.
    origin = np.asarray(prediction.cloud.get("origin", np.zeros(3)), dtype=np.float64)
    ax.set_xlabel("x (m)" if origin[0] == 0 else f"x - {origin[0]:.15g} (m)")
    ax.set_ylabel("y (m)" if origin[1] == 0 else f"y - {origin[1]:.15g} (m)")
    ax.set_title(f"{Path(prediction.path).name}: predicted classes (top-down)")
    counts = prediction.counts()
    handles = [
        Patch(color=palette[prediction.class_names.index(name)], label=f"{name} ({n})") for name, n in counts.items()
    ]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
