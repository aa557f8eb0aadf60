"""The point models learn synthetic ScanNet.

Each test trains a shipped tiny config, with the budget the config sets, through the real Ray
Train path (`fit`) on 40 synthetic rooms, and reads the mIoU that the ScanNet evaluator reports on
10 held-out rooms: full resolution (grid fragments voted onto every vertex), the official
benchmark's semantics (20 classes, other labels ignored). Issue 5's bar is 70% mIoU.

Issue 5 also asks for this within 10 minutes of CPU time, and the config's budget was sized to
it. The CPU seconds of the whole process tree, Ray's daemons included, are printed but not
asserted: this shared machine runs the same work at up to half speed at some hours, and timings
are measured, not asserted in tests.

Measured on this 2-core machine: mIoU 0.729 on the 10 held-out rooms, 480 CPU s for the whole
process tree (one Ray Train worker on one core, plus Ray's daemons and the driver), 411 s wall.
The same config at another hour ran its steps about 1.5x slower.

Not shown here: the tiny Stratified Transformer. On the same data it has not reached the bar
within the budget: its shipped config scored mIoU 0.66 after 578 CPU s of training; the registered
tiny model reached 0.73 only after 90 epochs, about 1200 CPU s (measurements in its config).
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


def test_tiny_point_transformer_reaches_70_percent_miou_on_held_out_rooms(synthetic_scannet, tmp_path):
    config = load_config(
        CONFIGS / "point_transformer_tiny_synthetic_scannet.yaml",
        [f"data.root={synthetic_scannet}", f"output_dir={tmp_path}"],
    )
    config["train"]["eval_every"] = config["schedule"]["epochs"]
    with ProcessTreeCPU() as cpu:
        final = fit(config)
    run_dir = tmp_path / config["name"]
    report = json.loads((run_dir / "eval_scannet.json").read_text())
    print(f"\n{config['name']}: mIoU {final['miou']:.3f}, {cpu.seconds:.0f} CPU s, {cpu.wall:.0f} s wall")
    print((run_dir / "eval_scannet.md").read_text())
    assert report["num_scenes"] == VAL_ROOMS
    assert final["miou"] >= MIN_MIOU, final
