"""`infer` and the pipelines feed a model the same pixels as Kinetics evaluation: the same frames,
resize and crops (bilinear without antialiasing, as SlowFast and mmaction2)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from spatiotemporal.data.sampling import uniform_clips
from spatiotemporal.data.transforms import ClipTransform
from spatiotemporal.infer import ClipRecipe, clip_views
from spatiotemporal.io.video import VideoReader


def _evaluation_views(path, recipe: ClipRecipe) -> np.ndarray:
    """What `KineticsDataset` in test mode cuts, mapped back from normalised float to uint8."""
    temporal, spatial = recipe.views
    transform = ClipTransform(crop_size=recipe.crop, test_short_side=recipe.short_side, num_crops=spatial,
                              mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with VideoReader(path) as reader:
        indices = uniform_clips(len(reader), recipe.frames, recipe.stride, temporal, anchor=recipe.anchor)
        frames = torch.as_tensor(reader.get_frames(indices.reshape(-1).tolist()))
    views = torch.cat([transform.test(clip) for clip in frames.split(recipe.frames)])
    views = (views * 255).round().clamp(0, 255).to(torch.uint8)
    return rearrange(views, "v c t h w -> v t h w c").numpy()


def test_inference_views_of_a_720p_clip_equal_evaluations_pixel_for_pixel(video_dir):
    path = video_dir / "cockatoo.mp4"
    recipe = ClipRecipe(frames=4, stride=8, crop=224, short_side=256, views=(2, 3), anchor="slowfast")
    ours = clip_views(path, recipe)
    assert ours.shape == (6, 4, 224, 224, 3)
    assert np.array_equal(ours, _evaluation_views(path, recipe))


def test_single_crop_views_equal_evaluations_too(video_dir):
    path = video_dir / "flipping_a_pancake.mkv"
    recipe = ClipRecipe(frames=8, stride=4, crop=112, short_side=128, views=(3, 1), anchor="slowfast_offset")
    assert np.array_equal(clip_views(path, recipe), _evaluation_views(path, recipe))
