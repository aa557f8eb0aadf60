"""Kinetics evaluation and inference cut each model's test views as its paper's code did: where
the temporal views sit, the resize before cropping, and how the views' scores are combined."""

from __future__ import annotations

import numpy as np
import pytest

from spatiotemporal.data import sampling
from spatiotemporal.infer import ClipRecipe, parse_views
from spatiotemporal.models.registry import get_spec
from spatiotemporal.train.config import load_config
from spatiotemporal.train.tasks import VideoTask

PAPER_PROTOCOLS = {
    # name: (anchor, short side before cropping, aggregation)
    "timesformer_base": ("slowfast", 224, "logits"),
    "vivit_b_fe": ("dmvr", 256, "logits"),
    "mvitv2_s": ("slowfast_offset", 256, "softmax"),
    "swin3d_t": ("mmaction2_0x", 224, "softmax"),
}
# name: (the frame rate videos are resampled to, how views are sized and cropped)
PAPER_RATES_AND_GEOMETRY = {
    "timesformer_base": (30.0, "slowfast"),  # SlowFast's DATA.TARGET_FPS
    "vivit_b_fe": (None, "dmvr"),  # DMVR's resize_smallest: TensorFlow's bilinear, truncated
    "mvitv2_s": (30.0, "slowfast_decoder"),  # SlowFast's torchvision decoder resizes (swscale area)
    "swin3d_t": (None, "mmaction2"),  # mmcv's Resize(scale=(-1, 224)) and mmaction2's ThreeCrop
}


def _test_set(task: VideoTask, video, tmp_path):
    listing = tmp_path / "val.txt"
    listing.write_text(f"{video} 0\n")
    return task.dataset_at(listing, "test")


@pytest.mark.parametrize("name", sorted(PAPER_PROTOCOLS))
def test_evaluation_at_the_papers_crop_uses_the_papers_views_and_resize(name, shared_data, tmp_path):
    anchor, short_side, aggregation = PAPER_PROTOCOLS[name]
    # The shipped Kinetics-400 configs set data.short_side 256 for training's scale jitter.
    task = VideoTask(load_config(data={"model": {"name": name}, "data": {"short_side": 256}}))
    dataset = _test_set(task, shared_data / "video" / "flipping_a_pancake.mkv", tmp_path)
    assert dataset.clip.anchor == anchor
    assert dataset.transform.test_short_side == short_side
    assert task.aggregation == aggregation
    assert (dataset.clip.anchor_fps, dataset.transform.geometry) == PAPER_RATES_AND_GEOMETRY[name]


def test_a_config_cropping_at_another_size_keeps_its_own_resize(shared_data, tmp_path):
    config = {"model": {"name": "timesformer_tiny"}, "data": {"crop_size": 32, "short_side": 40}}
    dataset = _test_set(VideoTask(load_config(data=config)), shared_data / "video" / "flipping_a_pancake.mkv", tmp_path)
    assert dataset.transform.test_short_side == 40


def test_eval_short_side_overrides_the_protocol(shared_data, tmp_path):
    config = {"model": {"name": "swin3d_t"}, "eval": {"short_side": 256}}
    dataset = _test_set(VideoTask(load_config(data=config)), shared_data / "video" / "flipping_a_pancake.mkv", tmp_path)
    assert dataset.transform.test_short_side == 256


@pytest.mark.parametrize("name", sorted(PAPER_PROTOCOLS))
def test_inference_cuts_the_same_views_as_evaluation(name):
    spec = get_spec(name)
    recipe = ClipRecipe.from_spec(spec, parse_views(None, spec))
    anchor, short_side, _ = PAPER_PROTOCOLS[name]
    assert (recipe.anchor, recipe.short_side) == (anchor, short_side)
    assert (recipe.target_fps, recipe.geometry) == PAPER_RATES_AND_GEOMETRY[name]


@pytest.mark.parametrize(
    "name, expected",
    [
        # cockatoo.mp4 runs at 20 fps: 8 x 32 frames at 30 fps span 170.7 of its frames, and
        # SlowFast's linspace(0, 169.67, 8) truncated gives these.
        ("timesformer_base", [[0, 24, 48, 72, 96, 121, 145, 169]]),
        # 16 x 4 at 30 fps span 42.7 frames; delta 237.3, offsets i * floor(237.3 / 4) = 59 i.
        ("mvitv2_s", [[s + k for k in (0, 2, 5, 8, 11, 13, 16, 19, 22, 25, 27, 30, 33, 36, 38, 41)]
                      for s in (0, 59, 118, 177, 236)]),
    ],
)
def test_slowfast_models_see_a_20_fps_video_as_if_resampled_to_30(name, expected, shared_data, tmp_path):
    from spatiotemporal.io.video import VideoReader

    task = VideoTask(load_config(data={"model": {"name": name}}))
    path = shared_data / "video" / "cockatoo.mp4"
    dataset = _test_set(task, path, tmp_path)
    with VideoReader(path, backend="pyav") as reader:
        assert reader.metadata.fps == 20.0
        indices = dataset._frame_indices(reader, np.random.default_rng(0))
    assert indices.tolist() == expected


def test_timesformer_views_are_the_official_loaders_frames():
    # TimeSformer-B: one 8x32 view of a 300-frame video; SlowFast's decoder without offset starts at
    # 0 and takes linspace(0, 255, 8) truncated.
    spec = get_spec("timesformer_base")
    views = sampling.uniform_clips(300, spec.num_frames, spec.frame_stride, 1, anchor=spec.protocol.anchor)
    assert np.array_equal(views[0], [0, 36, 72, 109, 145, 182, 218, 255])
