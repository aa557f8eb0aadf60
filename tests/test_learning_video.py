"""The video models learn motion, and only through attention over time.

Synthetic Kinetics classes differ only in motion (a single frame says nothing about the class),
so a model above chance on held-out videos must compare frames. Each test trains a shipped tiny
config on two Ray Train CPU workers and reads the multi-view validation top-1 that the Kinetics
evaluator reports with the model's paper protocol. The space-only TimeSformer, which cannot
compare frames, gets the same data and budget and must stay near chance: the control that makes
the other models' results a statement about their attention over time.

Not here yet: the divided-attention TimeSformer. From scratch, with per-frame patches and its
paper's zero-initialised time embeddings, it learns the axis of the motion (top-1 0.5-0.6 after
1,500-2,000 steps at lr 1.5e-4 to 3e-4) but not its direction within a CI budget: direction is
the one thing a model blind to frame order cannot see, and the time embeddings that would give
it order get no first-order gradient while the model is symmetric (notes on issue 5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics
from spatiotemporal.train.config import load_config
from spatiotemporal.train.loop import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSES = 4
# 64 held-out videos: a chance-level model's top-1 has a standard deviation of 5.4 points, so
# the near-chance bound below sits 3.7 standard deviations above chance.
VAL_PER_CLASS = 16
NEAR_CHANCE_BOUND = 0.45
TRAIN_PER_CLASS = 192
EPOCHS = 15  # 720 steps of 2 workers x 8 clips: ViViT, MViTv2 and Swin each take 1.5-2 min

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_kinetics")
    config = SyntheticKineticsConfig(
        classes=CLASSES, videos_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, test_per_class=2,
        frames=16, size=32,
    )  # fmt: skip
    generate_synthetic_kinetics(root, config)
    return root


def _train(config_name: str, data: Path, out: Path) -> dict:
    """The shipped config on the shared data, evaluated once, at the end."""
    overrides = [f"data.root={data}", f"output_dir={out}", f"schedule.epochs={EPOCHS}", f"train.eval_every={EPOCHS}"]
    return fit(load_config(CONFIGS / config_name, overrides))


def test_space_only_timesformer_stays_near_chance_on_the_same_budget(motion_videos, tmp_path):
    final = _train("timesformer_tiny_space_only_synthetic_kinetics.yaml", motion_videos, tmp_path)
    assert final["num_evaluated"] == CLASSES * VAL_PER_CLASS
    assert final["top1"] <= NEAR_CHANCE_BOUND, final


@pytest.mark.parametrize("config_name", [
    "vivit_tiny_synthetic_kinetics.yaml",
    "mvitv2_tiny_synthetic_kinetics.yaml",
    "swin3d_tiny_synthetic_kinetics.yaml",
])
def test_model_learns_motion(config_name, motion_videos, tmp_path):
    final = _train(config_name, motion_videos, tmp_path)
    assert final["num_evaluated"] == CLASSES * VAL_PER_CLASS
    assert final["top1"] >= 0.80, final
