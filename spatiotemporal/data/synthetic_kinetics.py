"""A synthetic Kinetics-format dataset whose classes differ only in motion.

Every video shows one textured object over a smooth random background. Shape, colours, size,
orientation, position and opacity are drawn from one distribution for every class, and each
class's motion is built so that the distribution of a single frame, at any time, is the same for
all classes:
  * position lives on a torus (the object wraps around the frame edges), so a uniformly drawn
    start shifted by any motion stays uniform;
  * orientation is uniform on the circle, so rotation keeps it uniform;
  * log-size and opacity follow a sawtooth from a uniform phase (grow, then restart small), so
    they stay uniform over their ranges while the direction of change is the class.
A single frame therefore says nothing about the class; a model has to compare frames. The
motions are large (a sampled frame of an 8-16 frame clip moves several pixels or degrees) so a
tiny video transformer learns them, while a space-only model stays at chance. Train without
horizontal flips: a flip turns "moving right" into "moving left" and clockwise into
counter-clockwise.

Output: `train.csv`, `validate.csv`, `test.csv` (no label column, like the official release) and
`test_labeled.csv` in the official column layout, `classes.json`, and h264 mp4 files named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` under `train/`, `val/`, `test/`. Output is a
pure function of the seed: x264 runs single-threaded, so bytes do not depend on the machine.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from spatiotemporal.data.kinetics import CLASS_INDEX_FILE, ClassIndex, kinetics_stem

# In this order: the first eight are the most distinct and make the default dataset.
MOTIONS: tuple[str, ...] = (
    "moving right",
    "moving left",
    "moving down",
    "moving up",
    "rotating clockwise",
    "rotating counterclockwise",
    "zooming in",
    "zooming out",
    "speeding up",
    "slowing down",
    "appearing",
    "disappearing",
)

# One motion of each kind (two translations along different axes, a zoom, a fade), none the time
# reversal of another: a model tells them apart by comparing frames, whether or not it knows
# their order. The learning tests and the demo train on these. A divided-attention TimeSformer
# trained from scratch sees frame order only through time embeddings that start at zero, and
# within a CI budget it does not learn it: on pairs such as right/left it stays at the axis.
MOTION_KINDS: tuple[str, ...] = ("moving right", "moving down", "zooming in", "appearing")

SPLITS = (("train", "train.csv", "train"), ("val", "validate.csv", "val"), ("test", "test.csv", "test"))

_LOG_SIZE_RANGE = (math.log(0.12), math.log(0.3))  # object half-extent, as a fraction of the frame
_OPACITY_RANGE = (0.3, 1.0)
_SAWTOOTH_CYCLES = 0.6  # per video: one restart at most, and the trend dominates every clip
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


@dataclass(frozen=True)
class SyntheticKineticsConfig:
    """The classes are either `classes`, the first N motions of MOTIONS (8 when neither is
    given), or `motions` by name, for example MOTION_KINDS. After construction both are set:
    `motions` holds the class names, `classes` their count."""

    classes: int | None = None
    videos_per_class: int = 12  # training videos per class
    val_per_class: int | None = None  # default: a quarter of the training count, at least 2
    test_per_class: int | None = None
    frames: int = 32
    size: int = 64
    fps: int = 10
    seed: int = 0
    crf: int = 18
    motions: tuple[str, ...] = ()

    def __post_init__(self):
        # Both are set after construction, so a copy (dataclasses.replace) passes both, agreeing.
        if self.motions and self.classes is not None and self.classes != len(self.motions):
            raise ValueError(
                f"classes={self.classes} disagrees with the {len(self.motions)} motions named; give classes "
                "(the first N motions) or motions (the classes by name)"
            )
        if self.motions:
            unknown = [m for m in self.motions if m not in MOTIONS]
            if unknown:
                raise ValueError(f"unknown motions {unknown}; known: {', '.join(MOTIONS)}")
            if len(set(self.motions)) != len(self.motions):
                raise ValueError(f"motions must be distinct, got {list(self.motions)}")
        count = len(self.motions) if self.motions else 8 if self.classes is None else self.classes
        if not 2 <= count <= len(MOTIONS):
            raise ValueError(f"classes must be in [2, {len(MOTIONS)}], got {count}")
        object.__setattr__(self, "motions", tuple(self.motions) or MOTIONS[:count])
        object.__setattr__(self, "classes", count)
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be even and >= 32 (h264 4:2:0), got {self.size}")
        if self.frames < 4:
            raise ValueError(f"frames must be >= 4, got {self.frames}")
        if self.videos_per_class < 1:
            raise ValueError("videos_per_class must be >= 1")

    def per_class(self, split: str) -> int:
        held_out = max(2, self.videos_per_class // 4)
        return {
            "train": self.videos_per_class,
            "val": self.val_per_class if self.val_per_class is not None else held_out,
            "test": self.test_per_class if self.test_per_class is not None else held_out,
        }[split]

    @property
    def names(self) -> tuple[str, ...]:
        """The motion of each class id."""
        return self.motions


# ---- the scene ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """Everything about a video except its motion, drawn the same way for every class."""

    background: np.ndarray  # (S, S, 3) float in [0, 1]
    shape: int
    body_color: np.ndarray
    mark_color: np.ndarray
    center: np.ndarray  # (2,) x, y in pixels, uniform on the torus
    angle: float  # radians, uniform
    size_phase: float  # uniform in [0, 1): the log-size as a fraction of its range
    opacity_phase: float
    travel: float  # distance covered by translations over the video, pixels
    turn: float  # radians turned by rotations over the video
    heading: float  # direction of the accelerating/decelerating motions


def draw_scene(size: int, rng: np.random.Generator) -> Scene:
    # Mostly grey, lightly tinted: textured enough to need looking at, never object-coloured.
    coarse = rng.uniform(0.25, 0.5, size=(5, 5, 1)) + rng.uniform(-0.05, 0.05, size=(5, 5, 3))
    return Scene(
        background=_upsample(coarse, size),
        shape=int(rng.integers(0, 3)),
        body_color=_bright_color(rng),
        mark_color=_bright_color(rng) * 0.35,
        center=rng.uniform(0.0, size, size=2),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)),
        size_phase=float(rng.uniform()),
        opacity_phase=float(rng.uniform()),
        travel=float(rng.uniform(0.55, 0.8) * size),
        turn=float(rng.uniform(1.0, 1.5) * math.pi),
        heading=float(math.pi / 4 + math.pi / 2 * rng.integers(0, 4) + rng.uniform(-0.2, 0.2)),
    )


def _bright_color(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform()
    rgb = np.clip(np.abs(((hue * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0) - 3.0) - 1.0, 0.0, 1.0)
    return 0.3 + 0.7 * rgb


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small grid to (size, size), for a smooth background."""
    n = coarse.shape[0]
    pos = np.linspace(0.0, n - 1.0, size)
    lo = np.minimum(pos.astype(int), n - 2)
    frac = (pos - lo)[:, None]
    rows = coarse[lo] * (1 - frac[..., None]) + coarse[lo + 1] * frac[..., None]
    cols = rows[:, lo] * (1 - frac[None]) + rows[:, lo + 1] * frac[None]
    return cols.astype(np.float32)


# ---- the motions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """Per-frame object state, arrays over time."""

    x: np.ndarray
    y: np.ndarray
    angle: np.ndarray
    half_extent: np.ndarray  # pixels
    opacity: np.ndarray


def _sawtooth(phase: float, t: np.ndarray, direction: float) -> np.ndarray:
    return np.mod(phase + direction * _SAWTOOTH_CYCLES * t, 1.0)


def track(motion: str, scene: Scene, t: np.ndarray, size: int) -> Track:
    """The object's state at times t in [0, 1] for one class of motion."""
    ones = np.ones_like(t)
    x, y = scene.center[0] * ones, scene.center[1] * ones
    angle = scene.angle * ones
    size_phase = scene.size_phase * ones
    opacity_phase = scene.opacity_phase * ones
    moves: dict[str, Callable[[], None]] = {}

    def translate(dx: float, dy: float, profile: np.ndarray) -> None:
        nonlocal x, y
        x, y = x + dx * profile, y + dy * profile

    d = scene.travel
    moves["moving right"] = lambda: translate(d, 0.0, t)
    moves["moving left"] = lambda: translate(-d, 0.0, t)
    moves["moving down"] = lambda: translate(0.0, d, t)
    moves["moving up"] = lambda: translate(0.0, -d, t)
    hx, hy = math.cos(scene.heading) * d, math.sin(scene.heading) * d
    moves["speeding up"] = lambda: translate(hx, hy, t**2)
    moves["slowing down"] = lambda: translate(hx, hy, 1.0 - (1.0 - t) ** 2)
    if motion in moves:
        moves[motion]()
    elif motion == "rotating clockwise":  # image y points down, so a growing angle turns clockwise
        angle = scene.angle + scene.turn * t
    elif motion == "rotating counterclockwise":
        angle = scene.angle - scene.turn * t
    elif motion == "zooming in":
        size_phase = _sawtooth(scene.size_phase, t, +1.0)
    elif motion == "zooming out":
        size_phase = _sawtooth(scene.size_phase, t, -1.0)
    elif motion == "appearing":
        opacity_phase = _sawtooth(scene.opacity_phase, t, +1.0)
    elif motion == "disappearing":
        opacity_phase = _sawtooth(scene.opacity_phase, t, -1.0)
    else:
        raise ValueError(f"unknown motion {motion!r}; known: {MOTIONS}")
    low, high = _LOG_SIZE_RANGE
    half_extent = np.exp(low + (high - low) * size_phase) * size
    opacity = _OPACITY_RANGE[0] + (_OPACITY_RANGE[1] - _OPACITY_RANGE[0]) * opacity_phase
    return Track(np.mod(x, size), np.mod(y, size), angle, half_extent, opacity)


# ---- rendering ------------------------------------------------------------------------------


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Signed distance (in object units) to an axis-aligned box; negative inside."""
    f32 = np.float32
    cu, cv, hu, hv = f32((u0 + u1) / 2), f32((v0 + v1) / 2), f32((u1 - u0) / 2), f32((v1 - v0) / 2)
    return np.maximum(np.abs(u - cu) - hu, np.abs(v - cv) - hv)


def _body(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shapes with no rotational symmetry (an L, a T, a key), so any turn is visible."""
    if shape == 0:
        return np.minimum(_box(u, v, -1, 1, 0.4, 1), _box(u, v, -1, -0.4, -1, 1))
    if shape == 1:
        return np.minimum(_box(u, v, -1, 1, -1, -0.45), _box(u, v, -0.3, 0.3, -0.45, 1))
    disc = np.hypot(u + np.float32(0.45), v) - np.float32(0.55)
    return np.minimum(np.minimum(disc, _box(u, v, -0.1, 1, -0.17, 0.17)), _box(u, v, 0.55, 0.8, 0.17, 0.6))


_SHAPE_RADIUS = math.sqrt(2.0)  # every shape fits in the unit square around its centre


def render(scene: Scene, state: Track, size: int) -> np.ndarray:
    """uint8 frames (T, S, S, 3) of an object following `state` over the scene's background.

    Each frame is drawn only in a window around the object; window indices wrap modulo the
    frame size, which puts the object on a torus (it leaves one edge and enters the opposite).
    """
    f32 = np.float32
    background = scene.background
    body_color, mark_color = scene.body_color.astype(f32), scene.mark_color.astype(f32)
    out = np.empty((len(state.x), size, size, 3), dtype=np.uint8)
    base = np.clip(background * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for k in range(len(state.x)):
        scale = f32(state.half_extent[k])
        reach = int(math.ceil(scale * _SHAPE_RADIUS)) + 1
        cx, cy = int(math.floor(state.x[k])), int(math.floor(state.y[k]))
        cols = np.arange(cx - reach, cx + reach + 1)
        rows = np.arange(cy - reach, cy + reach + 1)
        dx = (cols.astype(f32) + f32(0.5) - f32(state.x[k]))[None, :]
        dy = (rows.astype(f32) + f32(0.5) - f32(state.y[k]))[:, None]
        cos, sin = f32(math.cos(state.angle[k])), f32(math.sin(state.angle[k]))
        u = (cos * dx + sin * dy) / scale
        v = (cos * dy - sin * dx) / scale
        body = np.clip(f32(0.5) - _body(scene.shape, u, v) * scale, 0.0, 1.0)  # 1-pixel soft edge
        mark = np.clip(f32(0.5) - (np.hypot(u - f32(0.55), v - f32(0.7)) - f32(0.22)) * scale, 0.0, 1.0)
        alpha = f32(state.opacity[k])
        window = np.ix_(np.mod(rows, size), np.mod(cols, size))
        patch = background[window]
        patch = patch + (alpha * body)[..., None] * (body_color - patch)
        patch = patch + (alpha * body * mark)[..., None] * (mark_color - patch)
        out[k] = base
        out[k][window] = np.clip(patch * f32(255.0) + f32(0.5), 0, 255).astype(np.uint8)
    return out


def render_video(motion: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, S, S, 3) frames of one video of `motion`."""
    scene = draw_scene(size, rng)
    t = np.linspace(0.0, 1.0, frames)
    return render(scene, track(motion, scene, t, size), size)


# ---- writing --------------------------------------------------------------------------------


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """h264 yuv420p mp4, single-threaded and without x264's assembly, so the bytes are the same on
    every run and machine."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        # x264's assembly gave different bytes from run to run, for the same frames, on an AVX-512 Xeon
        # (2 of 5 regenerations); its C path is deterministic, and machine-independent besides.
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _youtube_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_ID_ALPHABET, size=11))


def synthetic_video(config: SyntheticKineticsConfig, split_id: int, class_id: int, i: int) -> tuple[str, int, np.ndarray]:
    """(youtube_id, time_start, uint8 frames) of video i of a class in a split.

    One generator per video: any video can be regenerated alone, and changing the counts of one
    split does not reshuffle the others.
    """
    rng = np.random.default_rng([config.seed, split_id, class_id, i])
    youtube_id = _youtube_id(rng)
    time_start = int(rng.integers(0, 300))
    return youtube_id, time_start, render_video(config.names[class_id], config.frames, config.size, rng)


@dataclass
class SyntheticKineticsResult:
    root: Path
    classes: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def generate_synthetic_kinetics(
    out: str | Path, config: SyntheticKineticsConfig = SyntheticKineticsConfig(), progress: bool = True
) -> SyntheticKineticsResult:
    """Write the dataset under `out` (see the module docstring) and return what was written."""
    from tqdm import tqdm

    started = time.perf_counter()
    root = Path(out)
    names = config.names
    class_index = ClassIndex.from_labels(names)
    class_index.save(root / CLASS_INDEX_FILE)
    result = SyntheticKineticsResult(root, class_index.names)
    jobs = [
        (split_id, folder, class_id, i)
        for split_id, (folder, _, _) in enumerate(SPLITS)
        for class_id in range(len(names))
        for i in range(config.per_class(folder))
    ]
    rows: dict[str, list[dict[str, str]]] = {folder: [] for folder, _, _ in SPLITS}
    seconds = math.ceil(config.frames / config.fps)
    for split_id, folder, class_id, i in tqdm(jobs, desc="synthetic kinetics", unit="video", disable=not progress):
        youtube_id, time_start, frames = synthetic_video(config, split_id, class_id, i)
        stem = kinetics_stem(youtube_id, time_start, time_start + seconds)
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_mp4(root / folder / f"{stem}.mp4", frames, config.fps, config.crf)
        rows[folder].append(
            {
                "label": names[class_id],
                "youtube_id": youtube_id,
                "time_start": str(time_start),
                "time_end": str(time_start + seconds),
                "split": SPLITS[split_id][2],
            }
        )
    for folder, filename, _ in SPLITS:
        labeled = sorted(rows[folder], key=lambda r: (r["label"], r["youtube_id"]))
        fields = ["label", "youtube_id", "time_start", "time_end", "split"]
        if folder == "test":
            _write_csv(root / "test_labeled.csv", fields, labeled)
            fields = fields[1:]
        _write_csv(root / filename, fields, labeled)
        result.counts[folder] = len(labeled)
    result.seconds = time.perf_counter() - started
    return result


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_preview(root: str | Path, config: SyntheticKineticsConfig, path: str | Path, frames_shown: int = 8) -> Path:
    """A PNG with one row per class: evenly spaced frames of the first training video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = config.names
    fig, axes = plt.subplots(len(names), frames_shown, figsize=(frames_shown * 1.1, len(names) * 1.15), squeeze=False)
    picks = np.linspace(0, config.frames - 1, frames_shown).round().astype(int)
    for class_id, name in enumerate(names):
        _, _, video = synthetic_video(config, 0, class_id, 0)
        for col, frame in enumerate(picks):
            ax = axes[class_id, col]
            ax.imshow(video[frame])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if class_id == 0:
                ax.set_title(f"frame {frame}", fontsize=7)
    fig.suptitle("synthetic-kinetics: one training video per class", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
