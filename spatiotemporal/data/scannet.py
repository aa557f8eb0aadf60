"""ScanNet v2 semantic segmentation: the 20 benchmark classes, label maps, split lists, raw-scene
preprocessing and a dataset over the Pointcept-style preprocessed layout
(`{root}/{split}/{scene}/coord.npy, color.npy, normal.npy, segment20.npy, instance.npy`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from spatiotemporal import meta
from spatiotemporal.io.errors import PointCloudError
from spatiotemporal.io.points import (
    estimate_normals,
    read_preprocessed,
    read_scannet_scene,
)

IGNORE_INDEX = -1

# The ScanNet benchmark's 20 classes in benchmark order, with their nyu40 ids.
CLASSES: tuple[tuple[str, int], ...] = (
    ("wall", 1),
    ("floor", 2),
    ("cabinet", 3),
    ("bed", 4),
    ("chair", 5),
    ("sofa", 6),
    ("table", 7),
    ("door", 8),
    ("window", 9),
    ("bookshelf", 10),
    ("picture", 11),
    ("counter", 12),
    ("desk", 14),
    ("curtain", 16),
    ("refrigerator", 24),
    ("shower curtain", 28),
    ("toilet", 33),
    ("sink", 34),
    ("bathtub", 36),
    ("otherfurniture", 39),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
NYU40_IDS: tuple[int, ...] = tuple(nyu40 for _, nyu40 in CLASSES)
NUM_CLASSES = len(CLASSES)

# nyu40 ids are 0..40 (0 = unannotated); anything larger in a corrupt file is also ignored.
_NYU40_TO_SEGMENT20 = np.full(41, IGNORE_INDEX, dtype=np.int64)
_NYU40_TO_SEGMENT20[list(NYU40_IDS)] = np.arange(NUM_CLASSES)


def nyu40_to_segment20(nyu40: np.ndarray) -> np.ndarray:
    """Map nyu40 ids to benchmark ids 0..19; every other id becomes IGNORE_INDEX."""
    nyu40 = np.asarray(nyu40, dtype=np.int64)
    inside = (nyu40 >= 0) & (nyu40 < len(_NYU40_TO_SEGMENT20))
    return np.where(inside, _NYU40_TO_SEGMENT20[np.clip(nyu40, 0, 40)], IGNORE_INDEX)


@cache
def raw_category_to_nyu40() -> dict[str, int]:
    """ScanNet's raw annotation category -> nyu40 id, from the shipped
    scannetv2-labels.combined.tsv."""
    with meta.meta_path("scannetv2-labels.combined.tsv").open() as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {row["raw_category"]: int(row["nyu40id"]) for row in rows if row["nyu40id"]}


def category_nyu40(category: str) -> int:
    """nyu40 id of a raw category; 0 (unannotated) when the tsv does not know it."""
    return raw_category_to_nyu40().get(category, 0)


def split_scenes(split: str) -> tuple[str, ...]:
    """The official ScanNet v2 scene ids of 'train', 'val' or 'test'."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"ScanNet splits are train, val and test, not {split!r}")
    return meta.scannet_split(split)


def read_split_file(path: str | Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


def preprocess_raw_scene(scene_dir: str | Path) -> dict:
    """A raw ScanNet scene -> the arrays of the preprocessed layout: coord, color, normal
    (open3d), segment (20 classes) and instance, where the scene has labels.

    Semantic labels come from labels.ply's nyu40 `label`; when only the aggregation is present
    (no labels.ply), each object's raw category is mapped to nyu40 through the tsv instead.
    """
    raw = read_scannet_scene(scene_dir)
    # The origin rides along so a far-off scene keeps its georeference (`origin.npy`).
    cloud = {"coord": raw["coord"], "color": raw["color"], "origin": raw["origin"]}
    cloud["normal"] = estimate_normals(raw)
    if "nyu40" in raw:
        cloud["segment"] = nyu40_to_segment20(raw["nyu40"])
    elif "instance" in raw:
        ids = np.array([category_nyu40(c) for c in raw["instance_category"]] + [0], np.int64)
        cloud["segment"] = nyu40_to_segment20(ids[raw["instance"]])  # -1 indexes the trailing 0
    if "instance" in raw:
        cloud["instance"] = raw["instance"]
    if not np.isfinite(cloud["normal"]).all():
        raise PointCloudError(scene_dir, "normal estimation produced non-finite values")
    return cloud


def is_prepared_scene(folder: Path) -> bool:
    """A finished scene folder of the preprocessed layout. `prepare scannet` writes each scene
    into a hidden `.{scene}.partial` folder first, which an interrupted run leaves behind
    half-written; hidden folders are never scenes."""
    return not folder.name.startswith(".") and (folder / "coord.npy").is_file()


class ScanNetDataset:
    """Scenes of one split of the preprocessed layout, as dicts of arrays.

    Each item holds `coord`, `color` (float32 0..255), `normal`, `segment` (int64, -1 ignore),
    `instance` (int64, -1 none) where stored, and `name`. A `transform` (see
    `spatiotemporal.data.point_transforms`) is applied last; without one items are numpy.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[dict], dict | list[dict]] | None = None,
        scenes: Sequence[str] | None = None,
        loop: int = 1,
    ):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.loop = loop
        split_dir = self.root / split
        if scenes is None:
            if not split_dir.is_dir():
                raise PointCloudError(split_dir, "split folder does not exist")
            scenes = sorted(p.name for p in split_dir.iterdir() if is_prepared_scene(p))
        self.scenes = list(scenes)
        if not self.scenes:
            raise PointCloudError(split_dir, "no preprocessed scenes (no */coord.npy)")

    def __len__(self) -> int:
        return len(self.scenes) * self.loop

    def load(self, index: int) -> dict:
        name = self.scenes[index % len(self.scenes)]
        cloud = read_preprocessed(self.root / self.split / name)
        cloud["name"] = name
        return cloud

    def __getitem__(self, index: int):
        cloud = self.load(index)
        if self.transform is None:
            return cloud
        name = cloud.pop("name")
        out = self.transform(cloud)
        for item in out if isinstance(out, list) else [out]:
            item["name"] = name
        return out
