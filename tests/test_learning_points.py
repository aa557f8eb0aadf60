"""The point models learn synthetic ScanNet.

Each test trains a shipped tiny config, with the budget the config sets, through the real Ray
Train path (`fit`) on 40 synthetic rooms, and reads the mIoU that the ScanNet evaluator reports on
10 held-out rooms: full resolution (grid fragments voted onto every vertex), the official
benchmark's semantics (20 classes, other labels ignored). Issue 5's bar is 70% mIoU.

Issue 5 also asks for this within 10 minutes of CPU time, and the config's budget was sized to
it. The CPU seconds of the whole process tree, Ray's daemons included, are printed but not
asserted: this shared machine runs the same work at up to half speed at some hours, and timings
are measured, not asserted in tests.

Measured on this 2-core machine:
- Point Transformer: mIoU 0.729 on the 10 held-out rooms, 403-480 CPU s for the whole process tree
  (one Ray Train worker on one core, plus Ray's daemons and the driver), 362-411 s wall.
- Stratified Transformer: mIoU 0.709 (the same in every run: `fit` is deterministic here), 483-535
  CPU s for the whole tree, 429-466 s wall (0.27-0.29 s a step; of it the worker's steps ~435 s, the
  evaluation ~40 s, Ray's own processes ~50 s); at slower hours 663-735 CPU s (0.33-0.40 s a
  step), over the 10 minutes. Its margin over the bar is thin: 60 epochs reach 0.700, and other
  seeds and loops moved the mIoU by 0.02-0.04.
The same configs at another hour ran their steps up to 1.4x slower.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spatiotemporal.train.config import load_config
from spatiotemporal.train.loop import fit
from spatiotemporal.train.process_cpu import ProcessTreeCPU

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_ROOMS, TRAIN_SEED = 40, 0
VAL_ROOMS, VAL_SEED = 10, 1000  # another seed: no room is in both splits
SPACING = 0.05  # metres between synthetic vertices; the configs voxelize at 0.08
MIN_MIOU = 0.70

pytestmark = pytest.mark.learning


@pytest.fixture(scope="module")
def synthetic_scannet(tmp_path_factory) -> Path:
    from spatiotemporal.data.scannet import preprocess_raw_scene
    from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
    from spatiotemporal.io.points import write_preprocessed

    base = tmp_path_factory.mktemp("synthetic_scannet")
    root = base / "preprocessed"
    for split, count, seed in (("train", TRAIN_ROOMS, TRAIN_SEED), ("val", VAL_ROOMS, VAL_SEED)):
        raw = base / f"raw_{split}"
        scenes = write_dataset(raw, count, seed=seed, spec=SceneSpec(spacing=SPACING), val_fraction=0)["train"]
        for scene in scenes:
            write_preprocessed(root / split / scene, preprocess_raw_scene(raw / scene))
        shutil.rmtree(raw)
    return root


def train_and_score(config_name: str, root: Path, tmp_path: Path) -> tuple[float, dict]:
    """Trains the shipped config through `fit` and returns (mIoU, the evaluator's JSON report)."""
    config = load_config(CONFIGS / f"{config_name}.yaml", [f"data.root={root}", f"output_dir={tmp_path}"])
    config["train"]["eval_every"] = config["schedule"]["epochs"]
    with ProcessTreeCPU() as cpu:
        final = fit(config)
    run_dir = tmp_path / config["name"]
    print(f"\n{config['name']}: mIoU {final['miou']:.3f}, {cpu.seconds:.0f} CPU s, {cpu.wall:.0f} s wall")
    print((run_dir / "eval_scannet.md").read_text())
    return final["miou"], json.loads((run_dir / "eval_scannet.json").read_text())


def test_tiny_point_transformer_reaches_70_percent_miou_on_held_out_rooms(synthetic_scannet, tmp_path):
    miou, report = train_and_score("point_transformer_tiny_synthetic_scannet", synthetic_scannet, tmp_path)
    assert report["num_scenes"] == VAL_ROOMS
    assert miou >= MIN_MIOU


def test_tiny_stratified_transformer_reaches_70_percent_miou_on_held_out_rooms(synthetic_scannet, tmp_path):
    miou, report = train_and_score("stratified_transformer_tiny_synthetic_scannet", synthetic_scannet, tmp_path)
    assert report["num_scenes"] == VAL_ROOMS
    assert miou >= MIN_MIOU
