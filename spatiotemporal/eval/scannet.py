"""ScanNet 3D semantic-label evaluation, with the official benchmark's semantics.

As in ScanNet's `evaluate_semantic_label.py`:
- only ground-truth vertices whose nyu40 id is one of the 20 benchmark ids are counted;
- a prediction outside the 20 ids is a false negative for the true class and a false positive
  for no class (here: an extra "other" column of the confusion matrix that no IoU reads);
- IoU = TP / (TP + FP + FN), FP counted over valid ground-truth rows only.
A class with TP + FP + FN = 0 (absent from both) has IoU NaN, as in the official script; mIoU
averages the classes where it is defined and says how many that was.

Predictions are made on grid-sampled fragments; `FragmentVoter` sums softmax over fragments and
test-time augmentations and projects the vote back onto every original vertex.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spatiotemporal.io.errors import InputError

CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
    "bathtub", "otherfurniture",
)  # fmt: skip
VALID_CLASS_IDS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
IGNORE_INDEX = -1

# nyu40 id -> train id (0..19), everything else -> IGNORE_INDEX.
_NYU40_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.int64)
_NYU40_TO_TRAIN[VALID_CLASS_IDS] = np.arange(len(VALID_CLASS_IDS))
_OTHER = len(VALID_CLASS_IDS)  # confusion column for predictions outside the 20 ids


def nyu40_to_train(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    inside = (ids >= 0) & (ids < len(_NYU40_TO_TRAIN))
    out[inside] = _NYU40_TO_TRAIN[ids[inside]]
    return out


def train_to_nyu40(train_ids: np.ndarray) -> np.ndarray:
    """Train ids (0..19) to nyu40 ids; ignored (-1) becomes 0, nyu40's 'unannotated'."""
    train_ids = np.asarray(train_ids, dtype=np.int64)
    out = np.zeros(train_ids.shape, dtype=np.int64)
    valid = train_ids >= 0
    out[valid] = VALID_CLASS_IDS[train_ids[valid]]
    return out


@dataclass
class ScanNetSummary:
    num_scenes: int
    num_vertices: int  # ground-truth vertices with a valid id
    miou: float
    macc: float
    overall_accuracy: float
    num_classes_defined: int
    iou: dict[str, float]
    accuracy: dict[str, float]
    tp: dict[str, int]
    denominator: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def to_markdown(self) -> str:
        lines = [
            f"**ScanNet semantic labels: {self.num_scenes} scenes, {self.num_vertices} evaluated vertices; "
            f"mIoU {100 * self.miou:.2f} (over {self.num_classes_defined} classes), "
            f"mAcc {100 * self.macc:.2f}, OA {100 * self.overall_accuracy:.2f}**",
            "",
            "| class | nyu40 id | IoU | TP / (TP+FP+FN) |",
            "|---|---|---|---|",
        ]
        for name, nyu in zip(CLASS_NAMES, VALID_CLASS_IDS):
            iou = self.iou[name]
            shown = "n/a" if math.isnan(iou) else f"{100 * iou:.2f}"
            lines.append(f"| {name} | {nyu} | {shown} | {self.tp[name]} / {self.denominator[name]} |")
        return "\n".join(lines)


class ScanNetEvaluator:
    """Accumulates a (20, 21) confusion matrix: rows valid ground truth, columns predictions + other."""

    def __init__(self):
        self.confusion = np.zeros((len(VALID_CLASS_IDS), len(VALID_CLASS_IDS) + 1), dtype=np.int64)
        self.num_scenes = 0

    def update(self, pred_nyu40: np.ndarray, gt_nyu40: np.ndarray, name: str = "<scene>") -> None:
        pred = np.asarray(pred_nyu40).reshape(-1)
        gt = np.asarray(gt_nyu40).reshape(-1)
        if pred.shape != gt.shape:
            raise InputError(name, f"{pred.size} predicted values for {gt.size} ground-truth vertices")
        gt_train = nyu40_to_train(gt)
        keep = gt_train >= 0
        pred_train = nyu40_to_train(pred[keep])
        pred_train[pred_train < 0] = _OTHER
        cells = gt_train[keep] * self.confusion.shape[1] + pred_train
        self.confusion += np.bincount(cells, minlength=self.confusion.size).reshape(self.confusion.shape)
        self.num_scenes += 1

    def update_train_ids(self, pred_train: np.ndarray, gt_train: np.ndarray, name: str = "<scene>") -> None:
        """The same, for 0..19 train ids with -1 ignored (what the dataset and model produce)."""
        self.update(train_to_nyu40(pred_train), train_to_nyu40(gt_train), name)

    def merge(self, other: ScanNetEvaluator) -> None:
        self.confusion += other.confusion
        self.num_scenes += other.num_scenes

    def gather(self) -> None:
        import torch
        import torch.distributed as dist

        from spatiotemporal.distributed import collective_device, world_size

        if world_size() == 1:
            return
        counts = torch.as_tensor(np.append(self.confusion.reshape(-1), self.num_scenes))
        # NCCL (the GPU configs' backend) reduces CUDA tensors only.
        counts = counts.to(collective_device())
        dist.all_reduce(counts)
        counts = counts.cpu().numpy()
        self.confusion = counts[:-1].reshape(self.confusion.shape)
        self.num_scenes = int(counts[-1])

    def summary(self) -> ScanNetSummary:
        c = self.confusion
        tp = np.diag(c[:, : len(VALID_CLASS_IDS)]).astype(np.int64)
        fn = c.sum(axis=1) - tp  # includes predictions outside the 20 ids
        fp = c[:, : len(VALID_CLASS_IDS)].sum(axis=0) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
            gt_count = c.sum(axis=1)
            acc = np.where(gt_count > 0, tp / np.maximum(gt_count, 1), np.nan)
        defined = ~np.isnan(iou)
        total = int(c.sum())
        return ScanNetSummary(
            num_scenes=self.num_scenes,
            num_vertices=total,
            miou=float(np.nanmean(iou)) if defined.any() else math.nan,
            macc=float(np.nanmean(acc)) if (~np.isnan(acc)).any() else math.nan,
            overall_accuracy=float(tp.sum() / total) if total else math.nan,
            num_classes_defined=int(defined.sum()),
            iou={n: float(v) for n, v in zip(CLASS_NAMES, iou)},
            accuracy={n: float(v) for n, v in zip(CLASS_NAMES, acc)},
            tp={n: int(v) for n, v in zip(CLASS_NAMES, tp)},
            denominator={n: int(v) for n, v in zip(CLASS_NAMES, denom)},
        )


class FragmentVoter:
    """Sums per-fragment softmax onto the original vertices; every vertex must receive a vote.

    With `voxel_of` (N,), each vertex's voxel, votes are also summed per voxel, and a vertex that
    no fragment covered (when only some fragments were predicted) takes its voxel's vote.
    """

    def __init__(self, num_points: int, num_classes: int = len(VALID_CLASS_IDS), name: str = "<scene>",
                 voxel_of: np.ndarray | None = None):
        self.votes = np.zeros((num_points, num_classes), dtype=np.float64)
        self.name = name
        self.voxel_of = None if voxel_of is None else np.asarray(voxel_of, dtype=np.int64)
        if self.voxel_of is not None:
            self.voxel_votes = np.zeros((int(self.voxel_of.max()) + 1, num_classes), dtype=np.float64)

    def add(self, probabilities: np.ndarray, index: np.ndarray) -> None:
        """`probabilities` (M, C) softmax of one fragment's points; `index` (M,) their original vertex ids."""
        index = np.asarray(index, dtype=np.int64)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        # np.add.at accumulates repeated indices (a vertex in several crops of one fragment).
        np.add.at(self.votes, index, probabilities)
        if self.voxel_of is not None:
            np.add.at(self.voxel_votes, self.voxel_of[index], probabilities)

    def predict(self) -> np.ndarray:
        uncovered = np.flatnonzero(self.votes.sum(axis=1) == 0)
        if uncovered.size:
            if self.voxel_of is None:
                raise InputError(self.name, f"{uncovered.size} vertices got no prediction from any fragment")
            self.votes[uncovered] = self.voxel_votes[self.voxel_of[uncovered]]
        return self.votes.argmax(axis=1)


def pointcept_test_augmentations() -> list:
    """Pointcept's ScanNet test-time augmentations (its `aug_transform`): rotations about z by 0,
    1/2, 1 and 3/2 pi through the centred scene's origin, each at scale 1, 0.95 and 1.05, then x and
    y mirrored: 13 passes whose votes are summed."""
    from spatiotemporal.data import point_transforms as T

    passes = []
    for scale in (None, 0.95, 1.05):
        for angle in (0.0, 0.5, 1.0, 1.5):
            steps = [T.RandomRotate((angle, angle), "z", center=(0.0, 0.0, 0.0), p=1.0)]
            if scale is not None:
                steps.append(T.RandomScale((scale, scale)))
            passes.append(T.Compose(steps))
    passes.append(T.RandomFlip(p=1.0))
    return passes


def predict_scene(model, cloud: dict, grid_size: float, max_fragments: int | None = None,
                  name: str = "<scene>", augmentations: Sequence[Callable] | None = None) -> tuple[np.ndarray, int]:
    """Train ids (0..19 for the ScanNet heads) for every point of `cloud`, Pointcept's test
    protocol, and how many fragments were predicted.

    `cloud`: per-point arrays or tensors as read (coord, colour 0..255, and normals if the model
    takes them). Coordinates relative to the cloud's `origin`, as the readers hold them, are what
    keeps a georeferenced scan's points apart in float32; the origin itself plays no part, since
    the scene is shifted floor to z = 0 and xy-centred anyway. It is then voxelized at
    `grid_size` into test fragments that together cover every point; each is centred,
    colour-normalised and predicted with the model's own input features, and the softmax is
    summed back onto the points (`FragmentVoter`). `augmentations` (None: one pass as the scene
    is) transform the centred scene before voxelizing, one pass each, all voting together;
    `pointcept_test_augmentations()` is Pointcept's set, what its published numbers use.
    `max_fragments` (None or 0 = all) caps the fragments of each pass for speed; points then
    uncovered take their voxel's vote.
    """
    import torch

    from spatiotemporal.data import point_transforms as T
    from spatiotemporal.models.registry import point_feature_keys

    scene = T.CenterShift(apply_z=True)(T.to_tensors(cloud))
    device = next(model.parameters()).device
    keys = point_feature_keys(model)
    voter, predicted = None, 0
    with torch.inference_mode():
        for augment in augmentations or [None]:
            fragments = T.GridSample(grid_size, "test")(scene if augment is None else augment(scene))
            capped = bool(max_fragments) and len(fragments) > max_fragments
            fragments = fragments[:max_fragments] if capped else fragments
            for fragment in fragments:
                fragment = T.NormalizeColor()(T.CenterShift(apply_z=False)(fragment))
                coord = fragment["coord"].float().to(device)
                offset = torch.tensor([len(coord)], device=device)
                logits = model(coord, T.point_features(fragment, keys).to(device), offset)
                if voter is None:  # the head's width, whatever the model was trained for
                    voter = FragmentVoter(len(scene["coord"]), logits.shape[1], name,
                                          voxel_of=fragments[0]["inverse"].numpy() if capped else None)
                voter.add(torch.softmax(logits.float(), -1).cpu().numpy(), fragment["index"].numpy())
            predicted += len(fragments)
    return voter.predict(), predicted


def write_submission(path: str | Path, nyu40_ids: np.ndarray) -> Path:
    """The benchmark's submission format: one nyu40 id per line, one line per vertex."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(nyu40_ids, dtype=np.int64).reshape(-1), fmt="%d")
    return path


def read_ids(path: str | Path) -> np.ndarray:
    """Per-vertex nyu40 ids from a submission `.txt` or a raw ScanNet `*.labels.ply`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix == ".ply":
        from plyfile import PlyData

        try:
            vertex = PlyData.read(str(path))["vertex"]
        except Exception as err:  # noqa: BLE001 - any parser failure is an unreadable file
            raise InputError(path, f"cannot read PLY: {err}") from err
        if "label" not in vertex.data.dtype.names:
            raise InputError(path, f"PLY has no per-vertex 'label' (properties: {vertex.data.dtype.names})")
        return np.asarray(vertex["label"], dtype=np.int64)
    try:
        ids = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as err:
        raise InputError(path, f"not one integer id per line: {err}") from err
    if ids.ndim != 1:
        raise InputError(path, f"expected one id per line, found {ids.shape[1]} columns")
    return ids


def _gt_file(gt_dir: Path, scene: str) -> Path:
    for candidate in (gt_dir / f"{scene}.txt", gt_dir / f"{scene}_vh_clean_2.labels.ply", gt_dir / scene / f"{scene}_vh_clean_2.labels.ply"):
        if candidate.is_file():
            return candidate
    raise InputError(gt_dir / f"{scene}.txt", f"no ground truth for predicted scene {scene} (.txt or _vh_clean_2.labels.ply)")


def evaluate_submission(pred_dir: str | Path, gt_dir: str | Path, scenes: Sequence[str] | None = None) -> ScanNetSummary:
    """Evaluate `<scene>.txt` predictions against `<scene>.txt` or raw `labels.ply` ground truth."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction directory does not exist")
    if scenes is None:
        scenes = sorted(p.stem for p in pred_dir.glob("*.txt") if p.name != "semantic_label_evaluation.txt")
    if not scenes:
        raise InputError(pred_dir, "no <scene>.txt prediction files")
    evaluator = ScanNetEvaluator()
    for scene in scenes:
        pred_file = pred_dir / f"{scene}.txt"
        evaluator.update(read_ids(pred_file), read_ids(_gt_file(gt_dir, scene)), str(pred_file))
    return evaluator.summary()
