"""A short end-to-end run for `spatiotemporal demo`: make synthetic data, train a tiny model on
Ray Train, evaluate it with the papers' protocols, and print the evaluator reports.

`run_demo(out_dir, quick=True)` does the video part (tiny TimeSformer on synthetic Kinetics) and
the points part (tiny Point Transformer on synthetic ScanNet). Quick mode is a smoke run of a few
minutes on two CPU cores: it shows every stage working, not a converged model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _video_data(root: Path, quick: bool) -> Path:
    from spatiotemporal.data.synthetic_kinetics import MOTION_KINDS, SyntheticKineticsConfig, generate_synthetic_kinetics

    if not (root / "train.csv").exists():
        per_class = 16 if quick else 192  # full: the data the learning tests train on
        config = SyntheticKineticsConfig(motions=MOTION_KINDS, videos_per_class=per_class, frames=16, size=32)
        generate_synthetic_kinetics(root, config)
    return root


def _points_data(root: Path, quick: bool) -> Path:
    from spatiotemporal.data.scannet import preprocess_raw_scene
    from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
    from spatiotemporal.io.points import write_preprocessed

    raw = root.parent / (root.name + "_raw")
    if not (root / "train").is_dir():
        splits = write_dataset(raw, 4 if quick else 20, seed=0, spec=SceneSpec(spacing=0.05), val_fraction=0.25, progress=True)
        for split, scenes in splits.items():
            for scene in scenes:
                write_preprocessed(root / split / scene, preprocess_raw_scene(raw / scene))
    return root


def prepare_demo_run(run_dir: Path) -> bool:
    """Whether a demo run continues: yes when it has a checkpoint. Without one (a first demo that
    was interrupted) the demo's own run directory is cleared, so the run starts over."""
    from spatiotemporal.train.checkpoint import latest_checkpoint

    if latest_checkpoint(run_dir) is not None:
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def fit_demo_run(config: dict) -> dict:
    from spatiotemporal.train.loop import fit

    return fit(config, resume=prepare_demo_run(Path(config["output_dir"]) / config["name"]))


# What a finished run leaves for a person to look at, in the order worth reading.
RUN_OUTPUTS = (
    "eval_kinetics.md", "eval_scannet.md", "confusion.png", "*_top_down.png", "curves.png", "submission",
    "metrics.jsonl", "tensorboard",
)  # fmt: skip


def run_outputs(run_dir: Path) -> list[Path]:
    """The reports and pictures a run directory holds (see RUN_OUTPUTS)."""
    return [path for pattern in RUN_OUTPUTS for path in sorted(Path(run_dir).glob(pattern))]


def run_video_demo(out_dir: str | Path, quick: bool = True) -> dict:
    from spatiotemporal.train.config import load_config

    out_dir = Path(out_dir)
    data = _video_data(out_dir / "synthetic_kinetics", quick)
    config = load_config(
        REPO_CONFIGS / "timesformer_tiny_synthetic_kinetics.yaml",
        [f"output_dir={out_dir / 'runs'}", f"data.root={data}", "name=demo_timesformer",
         *(["schedule.epochs=3", "train.eval_every=3"] if quick else [])],  # full: the config's own budget
    )  # fmt: skip
    final = fit_demo_run(config)
    print((out_dir / "runs" / "demo_timesformer" / "eval_kinetics.md").read_text())
    return final


def run_points_demo(out_dir: str | Path, quick: bool = True) -> dict:
    from spatiotemporal.train.config import load_config

    out_dir = Path(out_dir)
    data = _points_data(out_dir / "synthetic_scannet", quick)
    config = load_config(
        REPO_CONFIGS / "point_transformer_tiny_synthetic_scannet.yaml",
        [f"output_dir={out_dir / 'runs'}", f"data.root={data}", "name=demo_point_transformer",
         *(["schedule.epochs=2", "train.eval_every=2", "data.max_points=2000"] if quick else [])],
    )  # fmt: skip
    final = fit_demo_run(config)
    print((out_dir / "runs" / "demo_point_transformer" / "eval_scannet.md").read_text())
    return final


def run_demo(out_dir: str | Path, quick: bool = True, points: bool = True) -> dict:
    """Video then points; returns each part's final validation metrics. Re-running continues
    (resumes) the runs in `out_dir` that reached a checkpoint, and starts the others over."""
    results = {"video": run_video_demo(out_dir, quick)}
    if points:
        results["points"] = run_points_demo(out_dir, quick)
    return results
