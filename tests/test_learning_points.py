"""The point models learn synthetic ScanNet.

Each test trains a shipped tiny config, with the budget the config sets, through the real Ray
Train path (`fit`) on 40 synthetic rooms, and reads the mIoU that the ScanNet evaluator reports on
20 held-out rooms: full resolution (grid fragments voted onto every vertex), the official
benchmark's semantics (20 classes, other labels ignored). Issue 5's bar is 70% mIoU; issue 33 asks
each proof to clear it by 0.03 on every kind of CPU, with the result on a plateau of its curve
(each config records its curve), and the printed line says the margin and the CPU kind.

The CPU seconds of the whole process tree, Ray's daemons included, are printed but not asserted:
timings are measured, not asserted in tests. Issue 5 asked for each proof within 10 minutes of
CPU time on one thread; the plateau budgets on two threads take more (below).

Measured on AMD EPYC (AVX512-BF16), 2 cores, one Ray Train worker on both (mIoU on 20 rooms, in
`make test-learning` from a fresh clone):
- Point Transformer, 48 epochs: 0.823 (a curve run: 0.809 after 36), 807 CPU s, 434 s wall, of it
  about 110 s for the evaluation of 20 rooms;
- Stratified Transformer, 90 epochs: 0.766 (a curve run, evaluating every 15 epochs: 0.763 after
  75, 0.772 at the end), 907 CPU s, 476 s wall, of it about 60 s for the evaluation.
Before issue 33, on one thread and 10 rooms, 34 and 70 epochs stopped on the slope: 0.709-0.732,
and an Intel Xeon scored 0.717 and 0.709.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spatiotemporal.train.config import load_config
from spatiotemporal.train.loop import fit
from spatiotemporal.train.process_cpu import ProcessTreeCPU
from tests.learning_margin import margin_line

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_ROOMS, TRAIN_SEED = 40, 0
VAL_ROOMS, VAL_SEED = 20, 1000  # another seed: no room is in both splits
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


def train_and_score(config_name: str, root: Path, tmp_path: Path, *overrides: str) -> tuple[float, dict]:
    """Trains the shipped config through `fit` and returns (mIoU, the evaluator's JSON report)."""
    config = load_config(CONFIGS / f"{config_name}.yaml", [f"data.root={root}", f"output_dir={tmp_path}", *overrides])
    config["train"]["eval_every"] = config["schedule"]["epochs"]
    with ProcessTreeCPU() as cpu:
        final = fit(config)
    run_dir = tmp_path / config["name"]
    proof = f"{config['name']} (data.feed {config['data']['feed']}), mIoU on {VAL_ROOMS} held-out rooms"
    print(f"\n{margin_line(proof, final['miou'], MIN_MIOU)}; {cpu.seconds:.0f} CPU s, {cpu.wall:.0f} s wall")
    print((run_dir / "eval_scannet.md").read_text())
    return final["miou"], json.loads((run_dir / "eval_scannet.json").read_text())


# Fed by Ray Data (data.feed: ray), decode tasks beside the two workers make the DataLoader's
# batches (tests/test_train_feed.py): the proof must pass at the same bar.
@pytest.mark.parametrize("feed", ["loader", "ray"])
def test_tiny_point_transformer_reaches_70_percent_miou_on_held_out_rooms(feed, synthetic_scannet, tmp_path):
    miou, report = train_and_score(
        "point_transformer_tiny_synthetic_scannet", synthetic_scannet, tmp_path, f"data.feed={feed}"
    )
    assert report["num_scenes"] == VAL_ROOMS
    assert miou >= MIN_MIOU


def test_tiny_stratified_transformer_reaches_70_percent_miou_on_held_out_rooms(synthetic_scannet, tmp_path):
    miou, report = train_and_score("stratified_transformer_tiny_synthetic_scannet", synthetic_scannet, tmp_path)
    assert report["num_scenes"] == VAL_ROOMS
    assert miou >= MIN_MIOU
