"""Video transforms: layout, SlowFast/pytorchvideo geometry, per-clip RandAugment, mixup/cutmix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatiotemporal.data import transforms as T


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """A real decoded clip: 8 frames of the Kinetics pancake video, (T, H, W, C) uint8."""
    from spatiotemporal.io.video import VideoReader

    from tests.conftest import SHARED_DATA

    with VideoReader(SHARED_DATA / "video" / "flipping_a_pancake.mkv") as reader:
        return reader.get_frames(range(0, 64, 8))


def test_frames_to_clip_puts_channels_first_then_time(frames):
    clip = T.frames_to_clip(frames)
    assert clip.shape == (3, 8, 240, 426)
    assert clip[2, 5, 17, 300] == frames[5, 17, 300, 2]
    assert torch.equal(T.clip_to_frames(clip), frames)


def test_batched_frames_to_clip(frames):
    batch = T.frames_to_clip(torch.stack([frames, frames.flip(0)]))
    assert batch.shape == (2, 3, 8, 240, 426)
    assert batch[1, 0, 0, 3, 4] == frames[7, 3, 4, 0]


def test_short_side_scale_matches_pytorchvideo(frames, pytorchvideo_functional):
    clip = T.to_float(T.frames_to_clip(frames))
    ours = T.short_side_scale(clip, 128)
    reference = pytorchvideo_functional.short_side_scale(clip, 128)
    assert ours.shape == (3, 8, 128, 227)
    assert torch.equal(ours, reference)


def test_portrait_short_side_is_the_width():
    clip = torch.rand(3, 2, 568, 320)
    assert T.short_side_scale(clip, 160).shape == (3, 2, 284, 160)


def test_uint8_resize_rounds_the_float_result(frames):
    clip = T.frames_to_clip(frames)
    as_uint8 = T.short_side_scale(clip, 100)
    as_float = T.short_side_scale(T.to_float(clip), 100)
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(as_uint8, (as_float * 255).round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("spatial_idx", [0, 1, 2])
def test_uniform_crop_matches_pytorchvideo_landscape(frames, pytorchvideo_functional, spatial_idx):
    clip = T.to_float(T.frames_to_clip(frames))
    assert torch.equal(T.uniform_crop(clip, 200, spatial_idx), pytorchvideo_functional.uniform_crop(clip, 200, spatial_idx))


def test_three_crop_goes_left_centre_right_on_landscape(frames):
    clip = T.frames_to_clip(frames)  # 240 x 426: offsets 0, ceil(186 / 2) = 93, 186
    crops = T.three_crop(clip, 240)
    assert crops.shape == (3, 3, 8, 240, 240)
    for crop, left in zip(crops, (0, 93, 186)):
        assert torch.equal(crop, clip[..., :, left : left + 240])


def test_three_crop_goes_top_centre_bottom_on_portrait():
    clip = torch.randint(0, 255, (3, 2, 568, 320), dtype=torch.uint8)
    crops = T.three_crop(clip, 320)
    for crop, top in zip(crops, (0, 124, 248)):
        assert torch.equal(crop, clip[..., top : top + 320, :])


def test_mmaction2_three_crop_rounds_down_and_steps_twice_the_centre_offset():
    # mmaction2's ThreeCrop on a 256x341 frame, crop 224: slack 117 along the width, so the
    # centre starts at 117 // 2 = 58 and the last crop at 2 * 58 = 116, one pixel short of the
    # edge; the short side is centred at (256 - 224) // 2 = 16. SlowFast would use 59 and 117.
    clip = torch.randint(0, 255, (3, 2, 256, 341), dtype=torch.uint8)
    crops = T.three_crop(clip, 224, geometry="mmaction2")
    for crop, left in zip(crops, (0, 58, 116)):
        assert torch.equal(crop, clip[..., 16:240, left : left + 224])
    assert torch.equal(T.center_crop(clip, 224, geometry="mmaction2"), crops[1])


def test_mmaction2_three_crop_on_portrait_frames_goes_down_the_height():
    clip = torch.randint(0, 255, (3, 2, 341, 256), dtype=torch.uint8)
    crops = T.three_crop(clip, 224, geometry="mmaction2")
    for crop, top in zip(crops, (0, 58, 116)):
        assert torch.equal(crop, clip[..., top : top + 224, 16:240])


def test_short_side_sizes_round_the_long_side_as_each_reference_does():
    # 340x256 to a short side of 224: 340 * 224 / 256 = 297.5. SlowFast floors it; mmcv's
    # rescale_size (mmaction2's Resize(scale=(-1, 224))) adds 0.5 and truncates.
    assert T.short_side_size(256, 340, 224) == (224, 297)
    assert T.short_side_size(256, 340, 224, "mmaction2") == (224, 298)
    assert T.short_side_size(340, 256, 224, "mmaction2") == (298, 224)


def test_the_test_recipe_sizes_and_places_views_by_its_geometry():
    clip = torch.randint(0, 255, (2, 256, 340, 3), dtype=torch.uint8)
    recipe = T.ClipTransform(crop_size=224, geometry="mmaction2", mean=(0.0,) * 3, std=(1.0,) * 3)
    views = recipe.test(clip)
    scaled = T.short_side_scale(T.frames_to_clip(clip), 224, geometry="mmaction2")
    assert scaled.shape[-2:] == (224, 298)
    assert torch.equal(views, T.to_float(T.three_crop(scaled, 224, geometry="mmaction2")))


def test_center_crop_rounds_the_offset_up():
    clip = torch.arange(25.0).view(1, 1, 5, 5)
    assert T.center_crop(clip, 2).flatten().tolist() == [12.0, 13.0, 17.0, 18.0]


def test_random_crop_is_the_same_window_for_every_frame():
    # Each pixel holds its own coordinates, so the crop tells where it was cut in every frame.
    t, h, w = torch.meshgrid(torch.arange(4.0), torch.arange(240.0), torch.arange(426.0), indexing="ij")
    clip = (t * 1e6 + h * 1e3 + w).unsqueeze(0)
    out = T.random_crop(clip, 112, np.random.default_rng(0))
    top, left = int(out[0, 0, 0, 0] // 1e3), int(out[0, 0, 0, 0] % 1e3)
    assert 0 < top <= 240 - 112 and 0 < left <= 426 - 112
    assert torch.equal(out, clip[..., top : top + 112, left : left + 112])


def test_random_resized_crop_falls_back_to_a_centred_crop_within_ratio():
    # No crop of 2-3x the area exists, so torchvision's fallback applies: a wide 100x400 frame
    # gets the full height and width round(100 * 4/3) = 133, centred.
    params = T.random_resized_crop_params(100, 400, (2.0, 3.0), (3 / 4, 4 / 3), np.random.default_rng(0))
    assert params == (0, 133, 100, 133)


def test_random_resized_crop_keeps_area_and_ratio_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_params(240, 426, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= 240 - h and 0 <= left <= 426 - w
        assert 0.08 * 0.9 <= h * w / (240 * 426) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_random_resized_crop_output_size(frames):
    out = T.random_resized_crop(T.frames_to_clip(frames), 96, np.random.default_rng(2))
    assert out.shape == (3, 8, 96, 96) and out.dtype == torch.uint8


def test_hflip_mirrors_every_frame(frames):
    clip = T.frames_to_clip(frames)
    assert torch.equal(T.hflip(clip)[..., 0], clip[..., -1])


def test_normalize_uses_per_channel_mean_and_std():
    clip = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
    clip[1] = 255
    out = T.normalize(clip, T.IMAGENET_MEAN, T.IMAGENET_STD)
    assert out[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229)
    assert out[1, 1, 3, 3].item() == pytest.approx((1 - 0.456) / 0.224)


def test_normalize_works_on_batches_and_view_stacks():
    batch = torch.full((5, 3, 2, 4, 4), 0.45)
    assert torch.allclose(T.normalize(batch, T.KINETICS_MEAN, T.KINETICS_STD), torch.zeros(()))


# ---- RandAugment -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(T._RAND_AUGMENT_OPS))
def test_every_rand_augment_op_treats_all_frames_alike(frames, name):
    clip = T.frames_to_clip(torch.stack([frames[0], frames[3], frames[0]]))[..., :96, :128]
    top, signed = T._RAND_AUGMENT_OPS[name]
    op = T.AugmentOp(name, 5.0 if name == "Posterize" else top * 0.5)
    out = T.apply_rand_augment(clip, [op])
    assert out.shape == clip.shape and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])  # identical frames stay identical
    single = T.apply_rand_augment(clip[:, 1:2], [op])
    assert torch.equal(out[:, 1:2], single)  # one draw for the clip == that op on each frame


def test_rand_augment_magnitude_scales_like_torchvision():
    ops = T.sample_rand_augment(np.random.default_rng(0), num_ops=200, magnitude=30, num_magnitude_bins=31)
    by_name = {op.name: abs(op.magnitude) for op in ops}
    assert by_name["Rotate"] == 30.0 and by_name["Posterize"] == 4.0 and by_name["Solarize"] == 0.0


def test_rand_augment_changes_the_clip(frames):
    clip = T.frames_to_clip(frames)
    out = T.rand_augment(clip, np.random.default_rng(5), num_ops=2, magnitude=15)
    assert not torch.equal(out, clip)


def test_rand_augment_needs_uint8():
    with pytest.raises(TypeError, match="uint8"):
        T.apply_rand_augment(torch.rand(3, 2, 8, 8), [T.AugmentOp("Identity", 0.0)])


# ---- mixup / cutmix --------------------------------------------------------------------------


def test_mixup_blends_each_clip_with_its_reversed_partner():
    clips = torch.rand(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    mixed, targets = T.mixup(clips, labels, num_classes=4, lam=0.3, smoothing=0.0)
    assert torch.allclose(mixed[0], 0.3 * clips[0] + 0.7 * clips[3])
    assert targets[0].tolist() == pytest.approx([0.3, 0.0, 0.0, 0.7])


def test_mix_targets_apply_label_smoothing_like_timm():
    targets = T.mix_targets(torch.tensor([0, 1]), num_classes=4, lam=1.0, smoothing=0.1)
    # off = 0.1 / 4, on = 1 - 0.1 + off
    assert targets[0].tolist() == pytest.approx([0.925, 0.025, 0.025, 0.025])
    assert targets.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_cutmix_pastes_one_box_through_time_and_corrects_lam():
    clips = torch.stack([torch.zeros(3, 4, 32, 32), torch.ones(3, 4, 32, 32)])
    labels = torch.tensor([0, 1])
    mixed, targets, lam = T.cutmix(clips, labels, num_classes=2, lam=0.75, rng=np.random.default_rng(1))
    pasted = mixed[0, 0, 0]  # clip 0 got ones where the box is
    assert torch.equal(mixed[0, :, 0], mixed[0, :, 3])  # the same box in every frame
    assert pasted.mean().item() == pytest.approx(1.0 - lam)
    assert targets[0].tolist() == pytest.approx([lam, 1.0 - lam])


def test_mixup_cutmix_on_a_batch_gives_soft_targets(frames):
    clips = T.normalize(T.frames_to_clip(torch.stack([frames] * 4))[..., :64, :64], T.KINETICS_MEAN, T.KINETICS_STD)
    labels = torch.tensor([0, 2, 2, 1])
    rng = np.random.default_rng(0)
    for _ in range(6):
        mixed, targets = T.mixup_cutmix(clips, labels, num_classes=3, rng=rng)
        assert mixed.shape == clips.shape and targets.shape == (4, 3)
        assert torch.allclose(targets.sum(1), torch.ones(4))


# ---- recipes ---------------------------------------------------------------------------------


def test_train_recipe_gives_a_normalised_float_clip(frames):
    recipe = T.ClipTransform(crop_size=112, train_short_side=(128, 160), rand_augment=(2, 9))
    out = recipe.train(frames, np.random.default_rng(0))
    assert out.shape == (3, 8, 112, 112) and out.dtype == torch.float32
    assert -3.0 < out.mean().item() < 3.0


def test_train_recipe_is_reproducible_for_a_seed(frames):
    recipe = T.ClipTransform(crop_size=112, train_short_side=(128, 160), random_resized_crop=True)
    a = recipe.train(frames, np.random.default_rng(4))
    b = recipe.train(frames, np.random.default_rng(4))
    assert torch.equal(a, b)


def test_test_recipe_gives_three_crops(frames):
    views = T.ClipTransform(crop_size=112).test(frames)
    assert views.shape == (3, 3, 8, 112, 112)
    one = T.ClipTransform(crop_size=112, num_crops=1).test(frames)
    assert torch.equal(one[0], views[1])
