"""Clip geometry: every video model is built for (num_frames, image_size) by the same two arguments,
its spec carries the geometry it was built and trained for, and inference cuts clips by that spec,
not by the registry's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from spatiotemporal.infer import VideoClassifier
from spatiotemporal.models import create_model, get_spec
from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.config import load_config
from spatiotemporal.train.optim import CosineWarmupSchedule, build_optimizer
from spatiotemporal.train.tasks import VideoTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VIDEO_CONFIGS = sorted(
    p.name for p in CONFIGS.glob("*.yaml") if yaml.safe_load(p.read_text()).get("task", "video") == "video"
)
PANCAKE = "/work/shared/data/video/flipping_a_pancake.mkv"


@pytest.mark.parametrize("name", ["timesformer_tiny", "vivit_tiny", "mvitv2_tiny", "swin3d_tiny"])
def test_every_video_architecture_takes_num_frames_and_image_size_and_its_spec_records_them(name):
    model = create_model(name, num_classes=3, num_frames=4, image_size=64).eval()
    assert (model.num_frames, model.image_size) == (4, 64)
    assert (model.spec.num_frames, model.spec.crop_size) == (4, 64)
    registered = get_spec(name)
    assert model.spec.frame_stride == registered.frame_stride and model.spec.preprocess == registered.preprocess
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 64, 64)).shape == (1, 3)


def test_a_model_built_at_the_registered_geometry_keeps_the_registered_spec():
    assert create_model("vivit_tiny").spec is get_spec("vivit_tiny")


def test_mvitv2_still_takes_its_old_img_size_name_and_refuses_two_different_sizes():
    old = create_model("mvitv2_tiny", num_frames=8, img_size=32)
    new = create_model("mvitv2_tiny", num_frames=8, image_size=32)
    assert old.image_size == new.image_size == 32 and old.spec.crop_size == 32
    assert old.blocks[0].attn.rel_pos_h.shape == new.blocks[0].attn.rel_pos_h.shape
    with pytest.raises(ValueError, match="both img_size=32 and image_size=64"):
        create_model("mvitv2_tiny", img_size=32, image_size=64)


@pytest.mark.parametrize("config_name", VIDEO_CONFIGS)
def test_every_video_config_builds_its_model(config_name):
    config = load_config(CONFIGS / config_name)
    with torch.device("meta"):
        model = create_model(config["model"]["name"], num_classes=4, **config["model"]["kwargs"])
    kwargs = config["model"]["kwargs"]
    size = kwargs.get("image_size", kwargs.get("img_size"))
    if size is not None:
        assert model.image_size == size


def _fine_tuned(tmp_path: Path) -> Path:
    """A checkpoint of ours for timesformer_tiny fine-tuned at 16 frames of 160 px (registered: 8 at 112)."""
    model = create_model("timesformer_tiny", num_classes=5, num_frames=16, image_size=160)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "model_name": "timesformer_tiny",
                "model_kwargs": {"num_frames": 16, "image_size": 160}, "class_names": list("abcde")}, path)
    return path


def test_inference_feeds_the_frames_and_size_a_checkpoint_was_built_for(tmp_path):
    classifier = VideoClassifier("timesformer_tiny", checkpoint=str(_fine_tuned(tmp_path)), device="cpu",
                                 precision="fp32")
    recipe = classifier.recipe
    assert (recipe.frames, recipe.stride, recipe.crop) == (16, 4, 160)
    # A crop other than the paper's is resized to itself, as training tests it.
    assert recipe.short_side is None and recipe.views == (1, 3)
    assert classifier.views_of(PANCAKE).shape == (3, 16, 160, 160, 3)


def test_the_classifier_reads_its_checkpoint_once(tmp_path, monkeypatch):
    path = _fine_tuned(tmp_path)
    reads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    classifier = VideoClassifier("timesformer_tiny", checkpoint=str(path), device="cpu", precision="fp32")
    assert reads == [str(path)] and classifier.class_names == list("abcde")


def test_a_training_checkpoint_records_the_clips_it_was_trained_on_and_inference_cuts_them(tmp_path):
    # swin3d_tiny is registered for 8 frames x stride 4 at 112 px; this config trains 8 x 2 at 32 px.
    config = load_config(CONFIGS / "swin3d_tiny_synthetic_kinetics.yaml")
    model = create_model("swin3d_tiny", num_classes=4, **config["model"]["kwargs"])
    optimizer = build_optimizer(model, config["optim"])
    schedule = CosineWarmupSchedule(optimizer, 10, 1, config["optim"]["lr"], config["schedule"]["min_lr"])
    ckpt.save(tmp_path, [ckpt.rng_state()], ckpt.Position(), model, optimizer, schedule, None, config,
              class_names=["up", "down", "left", "right"], model_meta=VideoTask(config).model_meta())
    saved = torch.load(tmp_path / ckpt.MODEL_FILE, weights_only=False)
    assert saved["clip"] == {"num_frames": 8, "frame_stride": 2, "crop_size": 32, "short_side": 32}
    classifier = VideoClassifier("swin3d_tiny", checkpoint=str(tmp_path / ckpt.MODEL_FILE), device="cpu",
                                 precision="fp32")
    recipe = classifier.recipe
    assert (recipe.frames, recipe.stride, recipe.crop, recipe.short_side) == (8, 2, 32, 32)
    assert classifier.model.config.window_size == (4, 4, 4)
