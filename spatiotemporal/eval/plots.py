"""PNG renderings of evaluation results: confusion matrices and top-down scene labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    plt = _pyplot()
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.3 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=8, wrap=True)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label_colors(ids: np.ndarray, num_ids: int = 41) -> np.ndarray:
    """A fixed colour per label id (tab20 twice), grey for ids that are ignored (< 0)."""
    plt = _pyplot()
    palette = np.concatenate([plt.get_cmap("tab20").colors, plt.get_cmap("tab20b").colors, plt.get_cmap("tab20c").colors])
    colors = palette[np.clip(ids, 0, None) % len(palette)]
    colors[ids < 0] = 0.6
    return colors


def plot_scene_top_down(
    coord: np.ndarray, pred: np.ndarray, gt: np.ndarray, path: str | Path, title: str = "", max_points: int = 60000
) -> Path:
    """Prediction beside ground truth, seen from above; points drawn low to high so tops stay visible."""
    plt = _pyplot()
    order = np.argsort(coord[:, 2])
    if len(order) > max_points:
        order = order[np.linspace(0, len(order) - 1, max_points).astype(int)]
    xy = coord[order, :2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, labels, name in zip(axes, (pred, gt), ("prediction", "ground truth")):
        ax.scatter(xy[:, 0], xy[:, 1], c=label_colors(labels[order]), s=1, linewidths=0)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
