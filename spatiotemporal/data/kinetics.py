"""Kinetics-format video datasets: annotation formats, the class index, and a torch Dataset that
yields training clips or all test views.

Annotations read here:
  * the official CSVs, `label,youtube_id,time_start,time_end,split[,is_cc]`; the split is
    `train`, `val`/`validate` or `test`, and the test CSV may have no label column. Files are
    named `{youtube_id}_{time_start:06d}_{time_end:06d}.<any ext>` anywhere under the root
    (split folders, class folders, or both);
  * list files with one `path label` per line (paths may contain spaces; the label is the last
    field, a class name or an integer index);
  * class-per-folder trees, `root/<class>/<video>`.

Nothing is dropped silently: annotation rows without a file, and files that fail to decode, are
counted and listed in the dataset's `report`. Training skips a broken video (it draws another and
says so in the sample); evaluation returns the sample marked with its error.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from spatiotemporal.data import sampling
from spatiotemporal.data.transforms import ClipTransform, normalize
from spatiotemporal.io.errors import InputError
from spatiotemporal.io.video import VideoReader
from spatiotemporal.meta import kinetics_class_names

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp"})
CLASS_INDEX_FILE = "classes.json"

Mode = Literal["train", "test"]


class AnnotationError(InputError):
    """An annotation file is malformed or does not match the dataset."""


# ---- records and the class index -------------------------------------------------------------


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video. `key` names it in reports; `path` is None when the file is missing."""

    key: str
    path: str | None
    label: str | None  # class name; None in the unlabelled test split
    split: str | None = None


@dataclass(frozen=True)
class ClassIndex:
    """Class names in index order. Built from annotations it is the sorted unique labels."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Iterable[str | None]) -> ClassIndex:
        return cls(tuple(sorted({label for label in labels if label is not None})))

    @classmethod
    def kinetics(cls, num_classes: int = 400) -> ClassIndex:
        return cls(kinetics_class_names(num_classes))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClassIndex:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise AnnotationError(path, f"cannot read the class index ({error})") from error
        names = data["classes"] if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise AnnotationError(path, "a class index is a JSON list of names or {'classes': [...]}")
        return cls(tuple(names))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"classes": list(self.names)}, indent=1) + "\n")
        return path

    def __len__(self) -> int:
        return len(self.names)

    def index(self, label: str) -> int:
        try:
            return self._lookup[label]
        except KeyError:
            # Folder trees often spell "air drumming" as "air_drumming".
            spaced = label.replace("_", " ")
            if spaced in self._lookup:
                return self._lookup[spaced]
            raise KeyError(f"label {label!r} is not one of the {len(self.names)} classes") from None

    @property
    def _lookup(self) -> dict[str, int]:
        lookup = self.__dict__.get("_lookup_cache")
        if lookup is None:
            lookup = {name: i for i, name in enumerate(self.names)}
            object.__setattr__(self, "_lookup_cache", lookup)
        return lookup


def resolve_classes(
    classes: ClassIndex | Sequence[str] | str | os.PathLike | None,
    records: Sequence[VideoRecord],
    annotation_dir: Path | None = None,
) -> ClassIndex:
    """A class index from: an index, a list of names, "kinetics400"/"kinetics600", a JSON file,
    or (None) the `classes.json` beside the annotation, else the sorted labels of the records."""
    if isinstance(classes, ClassIndex):
        return classes
    if isinstance(classes, str) and classes in ("kinetics400", "kinetics600"):
        return ClassIndex.kinetics(int(classes.removeprefix("kinetics")))
    if isinstance(classes, (str, os.PathLike)):
        return ClassIndex.load(classes)
    if classes is not None:
        return ClassIndex(tuple(classes))
    if annotation_dir is not None and (annotation_dir / CLASS_INDEX_FILE).is_file():
        return ClassIndex.load(annotation_dir / CLASS_INDEX_FILE)
    return ClassIndex.from_labels(r.label for r in records)


# ---- annotation formats ----------------------------------------------------------------------


def kinetics_stem(youtube_id: str, time_start: int, time_end: int) -> str:
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def normalize_split(split: str | None) -> str | None:
    if split is None:
        return None
    split = split.strip().lower()
    return "val" if split in ("val", "validate", "validation") else split


def index_video_files(root: str | os.PathLike) -> dict[str, str]:
    """Map each video file's stem to its path, scanning `root` once (extension ignored)."""
    found: dict[str, str] = {}
    for directory, _, files in os.walk(root):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                found.setdefault(stem, os.path.join(directory, name))
    return found


def read_kinetics_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike, files: dict[str, str] | None = None
) -> list[VideoRecord]:
    """Records of an official Kinetics CSV, each resolved to its file under `root` (or None)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AnnotationError(csv_path, f"cannot read the CSV ({error})") from error
    if not rows:
        raise AnnotationError(csv_path, "the CSV has no rows")
    required = {"youtube_id", "time_start", "time_end"}
    missing = required - set(rows[0])
    if missing:
        raise AnnotationError(csv_path, f"missing columns {sorted(missing)}; expected label,youtube_id,time_start,time_end,split")
    files = index_video_files(root) if files is None else files
    records = []
    for line, row in enumerate(rows, start=2):
        try:
            stem = kinetics_stem(row["youtube_id"], int(float(row["time_start"])), int(float(row["time_end"])))
        except (TypeError, ValueError) as error:
            raise AnnotationError(csv_path, f"line {line}: bad time_start/time_end ({error})") from error
        label = (row.get("label") or "").strip() or None
        records.append(VideoRecord(stem, files.get(stem), label, normalize_split(row.get("split"))))
    return records


def read_list_file(list_path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[VideoRecord]:
    """Records of a `path label` list; relative paths are under `root` (default: the list's folder)."""
    list_path = Path(list_path)
    base = Path(root) if root is not None else list_path.parent
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationError(list_path, f"cannot read the list ({error})") from error
    records = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # the path keeps its spaces; the label is the last field
        if len(parts) != 2:
            raise AnnotationError(list_path, f"line {number}: expected 'path label', got {line!r}")
        rel, label = parts
        path = base / rel
        records.append(VideoRecord(rel, str(path) if path.is_file() else None, label))
    return records


def read_class_folders(root: str | os.PathLike) -> list[VideoRecord]:
    """Records of a `root/<class>/<video>` tree."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(root, "not a directory")
    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
                records.append(VideoRecord(str(path.relative_to(root)), str(path), class_dir.name))
    if not records:
        raise AnnotationError(root, "no videos found in class folders")
    return records


# ---- the report ------------------------------------------------------------------------------


@dataclass
class DatasetReport:
    """Every video the dataset could not use, with the reason."""

    total: int = 0
    missing: list[dict[str, str]] = field(default_factory=list)
    undecodable: list[dict[str, str]] = field(default_factory=list)

    def add_missing(self, record: VideoRecord) -> None:
        self.missing.append({"key": record.key, "reason": "no video file found for this annotation"})

    def add_undecodable(self, record: VideoRecord, reason: str) -> None:
        if not any(entry["key"] == record.key for entry in self.undecodable):
            self.undecodable.append({"key": record.key, "path": record.path or "", "reason": reason})

    @property
    def usable(self) -> int:
        return self.total - len(self.missing) - len(self.undecodable)

    def summary(self) -> str:
        return (
            f"{self.total} annotated videos: {self.usable} usable, {len(self.missing)} missing, "
            f"{len(self.undecodable)} undecodable"
        )

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self) | {"usable": self.usable}, indent=1) + "\n")
        return path


# ---- the dataset -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSampling:
    """Which frames make a clip, as data: T frames every `stride` (at `target_fps` when set);
    testing takes `num_clips` views placed as `anchor` places them, at `anchor_fps` for the
    SlowFast anchors (their TARGET_FPS frame-rate resampling) when set. Training draws one clip at
    a random start, as the anchor's code base draws it when `train_as_anchor`; else at an integer
    start with frames `stride` apart (mmaction2's draw), a short video repeating its last frame."""

    num_frames: int = 8
    stride: int = 8
    target_fps: float | None = None
    num_clips: int = 10
    anchor: sampling.Anchor = "mmaction2"
    anchor_fps: float | None = None
    train_as_anchor: bool = False

    def train_indices(self, rng: np.random.Generator, num_video_frames: int, video_fps: float,
                      timestamps: Callable[[], np.ndarray]) -> np.ndarray:
        """One training clip's frame indices in a video of `num_video_frames` at `video_fps`
        (`timestamps` gives the frames' times, read only when sampling by time). The decoding
        dataset and its cached copy both draw here, so caching changes no sample."""
        if self.target_fps is not None:
            return sampling.random_clip_at_fps(timestamps(), self.num_frames, self.stride, self.target_fps, rng=rng)
        if not self.train_as_anchor:
            return sampling.random_clip(num_video_frames, self.num_frames, self.stride, rng=rng)
        fps = (video_fps, self.anchor_fps) if self.anchor_fps is not None else None
        return sampling.random_clip(num_video_frames, self.num_frames, self.stride, rng=rng, anchor=self.anchor,
                                    fps=fps)

    def test_indices(self, reader: VideoReader) -> np.ndarray:
        """The test views' frame indices in `reader`'s video: (num_clips, num_frames). Evaluation
        and inference both cut their views here."""
        if self.target_fps is not None:
            stamps = reader.frame_timestamps()
            return sampling.uniform_clips_at_fps(stamps, self.num_frames, self.stride, self.target_fps, self.num_clips)
        video_fps = reader.metadata.fps
        video_size = None
        if self.anchor == "slowfast_offset":  # SlowFast's torchvision loader: the header's fps x duration
            timing = reader.stream_timing
            video_size = sampling.torchvision_video_size(timing.duration_ticks, timing.time_base, timing.guessed_rate)
            video_fps = sampling.torchvision_fps(timing.guessed_rate) or video_fps  # sizes the clip too
        fps = (video_fps, self.anchor_fps) if self.anchor_fps is not None else None
        return sampling.uniform_clips(len(reader), self.num_frames, self.stride, self.num_clips, anchor=self.anchor,
                                      fps=fps, video_size=video_size)


class KineticsDataset(torch.utils.data.Dataset):
    """Clips from Kinetics-format data.

    mode "train": one random clip per video -> sample["video"] float (C, T, H, W).
    mode "test": all `num_clips` temporal x `num_crops` spatial views -> (V, C, T, H, W), views
    ordered clip-major. Each sample is a dict with video, label (-1 when unlabelled), index, key
    and error ("" when fine), so a DataLoader with workers collates it and evaluation can report
    failures that happened in a worker (the report of a worker process is not the parent's).
    A broken video in training is replaced by a random other one (`skip_broken`, the error
    text rides along in the sample) or raises; in testing it comes back with zero views and
    its error set, for the evaluator to count.

    `decode_short_side` has the reader resize frames as they are decoded, so frames held in a
    cache are small. The reader resizes with the transforms' own function (`io.resize.resize`),
    so in testing, where it must equal the test short side, the views are the very pixels the
    full-size path makes. Any other size would resize twice (to it, then to the test size), and
    two bilinear passes with a rounding to uint8 between them are not one; testing refuses it.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: ClassIndex,
        *,
        mode: Mode = "train",
        clip: ClipSampling = ClipSampling(),
        transform: ClipTransform = ClipTransform(),
        seed: int | None = None,
        backend: str = "auto",
        decode_short_side: int | None = None,
        skip_broken: bool = True,
        max_retries: int = 10,
    ):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if mode == "test":
            transform.test_reader_resize(decode_short_side)  # refuses a size that would resize twice
        self.classes = classes
        self.mode = mode
        self.clip = clip
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.backend = backend
        self.decode_short_side = decode_short_side
        self.skip_broken = skip_broken
        self.max_retries = max_retries
        self.report = DatasetReport(total=len(records))
        self.records: list[VideoRecord] = []
        for record in records:
            if record.path is None:
                self.report.add_missing(record)
            else:
                self.records.append(record)
        self.labels = [self._label_index(r) for r in self.records]
        if self.report.missing:
            warnings.warn(f"{self.report.summary()}; see dataset.report", RuntimeWarning, stacklevel=2)

    # -- constructors for each annotation format

    @classmethod
    def from_csv(cls, csv_path: str | os.PathLike, root: str | os.PathLike, *, classes=None, **kwargs) -> KineticsDataset:
        records = read_kinetics_csv(csv_path, root)
        return cls(records, resolve_classes(classes, records, Path(csv_path).parent), **kwargs)

    @classmethod
    def from_list_file(cls, list_path: str | os.PathLike, root=None, *, classes=None, **kwargs) -> KineticsDataset:
        records = read_list_file(list_path, root)
        # Integer labels index themselves; with a classes.json beside the list (mmaction2's `path
        # index` lists of Kinetics) they index its names, however few of the classes the list holds.
        index_beside = (Path(list_path).parent / CLASS_INDEX_FILE).is_file()
        if classes is None and not index_beside and all(r.label.isdigit() for r in records):
            count = max(int(r.label) for r in records) + 1
            classes = [str(i) for i in range(count)]
        return cls(records, resolve_classes(classes, records, Path(list_path).parent), **kwargs)

    @classmethod
    def from_folders(cls, root: str | os.PathLike, *, classes=None, **kwargs) -> KineticsDataset:
        records = read_class_folders(root)
        return cls(records, resolve_classes(classes, records, Path(root)), **kwargs)

    # -- bookkeeping

    def _label_index(self, record: VideoRecord) -> int:
        if record.label is None:
            return -1
        if record.label.isdigit() and record.label not in self.classes.names:
            return int(record.label)
        return self.classes.index(record.label)

    def set_epoch(self, epoch: int) -> None:
        """Training clips are a function of (seed, epoch, index); call once per epoch."""
        self.epoch = epoch

    def _rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def verify(self, full_decode: bool = True, progress: bool = True) -> DatasetReport:
        """Check every video once; undecodable ones go to the report (and out of training).

        `full_decode` decodes every frame, the only way to find a file broken in the middle;
        without it only the container and stream headers are read (fast, catches missing
        streams and unreadable files).
        """
        from tqdm import tqdm

        from spatiotemporal.io.video import probe_video

        kept, labels = [], []
        for record, label in tqdm(
            list(zip(self.records, self.labels)), desc="verifying videos", disable=not progress, unit="video"
        ):
            try:
                if full_decode:
                    with VideoReader(record.path, backend=self.backend) as reader:
                        reader.check_every_frame_decodes()
                elif probe_video(record.path).num_frames < 1:
                    raise InputError(record.path, "no frames")
            except InputError as error:
                self.report.add_undecodable(record, error.reason)
                if self.mode == "train":
                    continue
            kept.append(record)
            labels.append(label)
        self.records, self.labels = kept, labels
        return self.report

    def __len__(self) -> int:
        return len(self.records)

    # -- reading clips

    def _frame_indices(self, reader: VideoReader, rng: np.random.Generator) -> np.ndarray:
        c = self.clip
        if self.mode == "test":
            return c.test_indices(reader)
        return c.train_indices(rng, len(reader), reader.metadata.fps, reader.frame_timestamps)

    def _load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        record = self.records[index]
        with VideoReader(record.path, backend=self.backend, **self._reader_resize()) as reader:
            indices = self._frame_indices(reader, rng)
            frames = reader.get_frames(indices.reshape(-1))
        if self.mode == "train":
            return self.transform.train(frames, rng)
        views = self.transform.test_views(frames, self.clip.num_frames)  # (num_clips * num_crops, C, T, H, W)
        return normalize(views, self.transform.mean, self.transform.std)

    def _reader_resize(self) -> dict:
        """How the reader resizes: test frames as the protocol's loader (its geometry), which for a
        decoder-side resize ("slowfast_decoder") means at decode even without a cache size; training
        frames as the training transforms and the cached training set size them (SlowFast's)."""
        if self.mode == "train":
            return {"short_side": self.decode_short_side, "geometry": "slowfast"}
        return self.transform.test_reader_resize(self.decode_short_side)

    def _empty_views(self) -> torch.Tensor:
        c, t = len(self.transform.mean), self.clip.num_frames
        size = self.transform.crop_size
        views = self.clip.num_clips * self.transform.num_crops
        return torch.zeros(views, c, t, size, size)

    def __getitem__(self, index: int) -> dict:
        if self.mode == "test":
            return self._test_item(index)
        return self.train_item(index, self._load)

    def train_item(self, index: int, load: Callable[[int, np.random.Generator], torch.Tensor]) -> dict:
        """The training sample of `index`: `load(index, rng)`'s clip, or, for a broken video, that
        of another drawn at random (`skip_broken`), its error riding along. `load` is where clips
        come from: decoded from the file (`_load`) or cut from frames held in memory."""
        errors: list[str] = []
        current = index
        for attempt in range(self.max_retries + 1):
            rng = self._rng(index, attempt)
            try:
                video = load(current, rng)
            except InputError as error:
                self.report.add_undecodable(self.records[current], error.reason)
                errors.append(str(error))
                if not self.skip_broken:
                    raise
            else:
                return self._item(current, video, "\n".join(errors))
            warnings.warn(f"skipping {errors[-1]}", RuntimeWarning, stacklevel=2)
            current = int(rng.integers(0, len(self.records)))
        raise InputError(
            self.records[index].path or self.records[index].key,
            f"{len(errors)} videos in a row failed to decode, last: {errors[-1]}",
        )

    def _test_item(self, index: int) -> dict:
        """Evaluation never substitutes a video: a failure comes back marked, with empty views."""
        try:
            video = self._load(index, self._rng(index))
        except InputError as error:
            self.report.add_undecodable(self.records[index], error.reason)
            message = str(error)
        else:
            return self._item(index, video, "")
        return self._item(index, self._empty_views(), message)

    def _item(self, index: int, video: torch.Tensor, error: str) -> dict:
        return {
            "video": video,
            "label": self.labels[index],
            "index": index,
            "key": self.records[index].key,
            "error": error,
        }

