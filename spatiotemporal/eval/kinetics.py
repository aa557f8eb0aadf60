"""The Kinetics evaluator: multi-view aggregation, top-k, class accuracies, and honest accounting.

Papers differ in how they treat videos that could not be downloaded or decoded: some report
accuracy over the videos they evaluated, others over the whole annotated val set. The summary
gives both, with the val-set size, so a number can be compared with the paper it claims to match.

The evaluator is fed incrementally with `(video_ids, per-view logits)`. Views are keyed by
(video id, view index), so the duplicates a padding distributed sampler produces count once, and
`gather()` merges the state of every DDP rank before `summary()`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

AGGREGATIONS = ("softmax", "logits")


@dataclass
class KineticsSummary:
    num_annotated: int
    num_evaluated: int
    num_missing: int
    views_per_video: int
    aggregation: str
    top1: float  # over evaluated videos
    top5: float
    top1_all: float  # over all annotated videos; missing ones count as wrong
    top5_all: float
    mean_class_accuracy: float
    per_class_accuracy: dict[str, float]
    class_counts: dict[str, int]
    incomplete_videos: dict[str, int]  # video id -> views seen, when fewer than views_per_video
    missing: dict[str, str]  # video id -> reason
    confusion: list[list[int]] = field(repr=False, default_factory=list)
    class_names: list[str] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def header(self) -> str:
        return (
            f"Kinetics val: {self.num_annotated} annotated videos, {self.num_evaluated} evaluated, "
            f"{self.num_missing} missing or undecodable; {self.views_per_video} views per video, "
            f"{self.aggregation} aggregation"
        )

    def to_markdown(self, max_classes: int = 50) -> str:
        lines = [
            f"**{self.header()}**",
            "",
            "| metric | over evaluated videos | over all annotated (missing = wrong) |",
            "|---|---|---|",
            f"| top-1 | {100 * self.top1:.2f}% | {100 * self.top1_all:.2f}% |",
            f"| top-5 | {100 * self.top5:.2f}% | {100 * self.top5_all:.2f}% |",
            f"| mean class accuracy | {100 * self.mean_class_accuracy:.2f}% | |",
        ]
        if self.per_class_accuracy and len(self.per_class_accuracy) <= max_classes:
            lines += ["", "| class | videos | accuracy |", "|---|---|---|"]
            for name, acc in self.per_class_accuracy.items():
                lines.append(f"| {name} | {self.class_counts[name]} | {100 * acc:.1f}% |")
        if self.missing:
            lines += ["", f"Missing or undecodable ({len(self.missing)}):"]
            lines += [f"- {vid}: {reason}" for vid, reason in sorted(self.missing.items())]
        if self.incomplete_videos:
            lines += ["", f"Videos evaluated with fewer than {self.views_per_video} views: {len(self.incomplete_videos)}"]
        return "\n".join(lines)

    def plot_confusion(self, path: str | Path) -> Path | None:
        """A row-normalised confusion-matrix PNG; skipped (None) above 50 classes, where it is unreadable."""
        if not self.confusion or len(self.confusion) > 50:
            return None
        from spatiotemporal.eval.plots import plot_confusion_matrix

        return plot_confusion_matrix(np.asarray(self.confusion), self.class_names, path, title=self.header())


class KineticsEvaluator:
    def __init__(
        self,
        num_classes: int,
        views_per_video: int = 1,
        aggregation: str = "softmax",
        class_names: Sequence[str] | None = None,
        annotated: dict[str, int] | None = None,
    ):
        """`annotated` maps every video id of the val set to its label; ids never fed count as missing."""
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.views_per_video = views_per_video
        self.aggregation = aggregation
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.annotated = dict(annotated) if annotated is not None else None
        self._views: dict[str, dict[int, np.ndarray]] = {}
        self._labels: dict[str, int] = {}
        self._missing: dict[str, str] = {}

    def update(
        self,
        video_ids: Sequence[str],
        logits: torch.Tensor | np.ndarray,
        labels: Sequence[int] | torch.Tensor,
        view_indices: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """Add views. `logits` is (B, C) with `view_indices` (one view per row, default 0), or
        (B, V, C) holding views 0..V-1 of each video."""
        scores = torch.as_tensor(logits).detach().float().cpu().numpy()
        labels = [int(x) for x in (labels.tolist() if torch.is_tensor(labels) else labels)]
        if scores.ndim == 2:
            scores = scores[:, None]
            views = [[int(v)] for v in (view_indices if view_indices is not None else [0] * len(video_ids))]
        elif scores.ndim == 3:
            if view_indices is not None:
                raise ValueError("view_indices is only for (B, C) logits; (B, V, C) holds views 0..V-1")
            views = [list(range(scores.shape[1]))] * len(video_ids)
        else:
            raise ValueError(f"logits must be (B, C) or (B, V, C), got shape {tuple(scores.shape)}")
        if scores.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {scores.shape[-1]} classes, the evaluator {self.num_classes}")
        if not (len(video_ids) == len(labels) == scores.shape[0]):
            raise ValueError(f"{len(video_ids)} ids, {len(labels)} labels, {scores.shape[0]} rows of logits")
        for vid, label, row, view_ids in zip(video_ids, labels, scores, views):
            vid = str(vid)
            if self._labels.setdefault(vid, label) != label:
                raise ValueError(f"video {vid} was given labels {self._labels[vid]} and {label}")
            per_video = self._views.setdefault(vid, {})
            for view, view_scores in zip(view_ids, row):
                per_video.setdefault(view, view_scores)  # a padded duplicate must not count twice

    def mark_missing(self, video_id: str, reason: str, label: int | None = None) -> None:
        self._missing[str(video_id)] = reason
        if label is not None:
            self._labels.setdefault(str(video_id), int(label))

    def state(self) -> dict:
        return {"views": self._views, "labels": self._labels, "missing": self._missing}

    def merge(self, state: dict) -> None:
        for vid, views in state["views"].items():
            per_video = self._views.setdefault(vid, {})
            for view, scores in views.items():
                per_video.setdefault(view, scores)
        for vid, label in state["labels"].items():
            self._labels.setdefault(vid, label)
        self._missing.update(state["missing"])

    def gather(self) -> None:
        """Merge every DDP rank's state into every rank (no-op outside torch.distributed)."""
        import torch.distributed as dist

        from spatiotemporal.distributed import world_size

        if world_size() == 1:
            return
        states: list[dict | None] = [None] * world_size()
        dist.all_gather_object(states, self.state())
        for state in states:
            self.merge(state)

    def _aggregate(self, views: dict[int, np.ndarray]) -> np.ndarray:
        stacked = np.stack([views[k] for k in sorted(views)]).astype(np.float64)
        if self.aggregation == "softmax":
            stacked = np.exp(stacked - stacked.max(axis=-1, keepdims=True))
            stacked /= stacked.sum(axis=-1, keepdims=True)
        return stacked.mean(axis=0)

    def summary(self) -> KineticsSummary:
        # A video that decoded somewhere counts as evaluated even if another rank failed on it.
        missing = {vid: r for vid, r in self._missing.items() if vid not in self._views}
        if self.annotated is not None:
            for vid in self.annotated:
                if vid not in self._views and vid not in missing:
                    missing[vid] = "never evaluated"
        evaluated = sorted(self._views)
        num_annotated = len(self.annotated) if self.annotated is not None else len(evaluated) + len(missing)
        k = min(5, self.num_classes)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        top1 = top5 = 0
        for vid in evaluated:
            label = self._labels[vid]
            scores = self._aggregate(self._views[vid])
            # Ties resolve to the lower class id, like torch.topk on CPU for equal values.
            order = np.argsort(-scores, kind="stable")
            confusion[label, order[0]] += 1
            top1 += int(order[0] == label)
            top5 += int(label in order[:k])
        counts = confusion.sum(axis=1)
        present = counts > 0
        per_class = {
            self.class_names[c]: float(confusion[c, c] / counts[c]) for c in range(self.num_classes) if present[c]
        }
        # mmaction2 averages over every class that is a label or a top-1 prediction, so a class that
        # is only ever predicted counts as 0. On a full validation set every class is a label and
        # this is the plain mean of the per-class accuracies; on a partial one it is lower.
        counted_classes = int((present | (confusion.sum(axis=0) > 0)).sum())
        n = len(evaluated)
        return KineticsSummary(
            num_annotated=num_annotated,
            num_evaluated=n,
            num_missing=len(missing),
            views_per_video=self.views_per_video,
            aggregation=self.aggregation,
            top1=top1 / n if n else math.nan,
            top5=top5 / n if n else math.nan,
            top1_all=top1 / num_annotated if num_annotated else math.nan,
            top5_all=top5 / num_annotated if num_annotated else math.nan,
            mean_class_accuracy=sum(per_class.values()) / counted_classes if per_class else math.nan,
            per_class_accuracy=per_class,
            class_counts={self.class_names[c]: int(counts[c]) for c in range(self.num_classes) if present[c]},
            incomplete_videos={
                vid: len(v) for vid, v in self._views.items() if len(v) < self.views_per_video
            },
            missing=missing,
            confusion=confusion.tolist(),
            class_names=self.class_names,
        )
