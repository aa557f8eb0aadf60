"""Training records: one JSON object per line, the same scalars in TensorBoard, and a curves PNG."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path


class MetricsLog:
    """Appends rows to metrics.jsonl and TensorBoard. On resume, rows past the restored step are dropped
    first so the log reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        events = run_dir / "tensorboard"
        if resume_step is None:
            # A start from step 0 (also a restart before the run's first checkpoint) logs anew.
            self.path.unlink(missing_ok=True)
            shutil.rmtree(events, ignore_errors=True)
        elif self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        # TensorBoard hides the events at and after `purge_step`; the rows of resume_step are kept.
        self.tensorboard = SummaryWriter(str(events), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key not in ("step", "epoch", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(f"{row.get('split', 'train')}/{key}", value, row["step"])
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, png_path: Path) -> Path:
    """Train loss and accuracy against steps, with validation points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split") == "train"]
    val = [r for r in rows if r.get("split") == "val"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val and "loss" in val[0]:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    if train and "accuracy" in train[0]:
        ax_acc.plot([r["step"] for r in train], [r["accuracy"] for r in train], label="train accuracy")
    for key in ("top1", "miou", "top1_all"):
        if val and key in val[0]:
            ax_acc.plot([r["step"] for r in val], [r[key] for r in val], "o-", label=f"val {key}")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
