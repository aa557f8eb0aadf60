"""Clip samplers: exact indices as SlowFast and mmaction2 place them, padding, and timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from spatiotemporal.data import sampling as S


def test_random_clip_starts_cover_exactly_every_valid_offset():
    rng = np.random.default_rng(0)
    starts = {int(S.random_clip(100, 8, 4, rng=rng)[0]) for _ in range(3000)}
    assert starts == set(range(0, 100 - 8 * 4 + 1))


def test_random_clip_is_contiguous_with_the_stride():
    clip = S.random_clip(300, 16, 4, rng=np.random.default_rng(1))
    assert clip.dtype == np.int64
    assert np.array_equal(np.diff(clip), np.full(15, 4))


def test_random_clip_is_reproducible_for_a_seed():
    a = S.random_clip(300, 8, 8, rng=np.random.default_rng(7))
    b = S.random_clip(300, 8, 8, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_short_video_is_padded_by_repeating_the_last_frame_by_default():
    clip = S.random_clip(10, 8, 2, rng=np.random.default_rng(0))
    assert clip.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]


def test_short_video_can_loop_instead():
    clip = S.random_clip(10, 8, 2, rng=np.random.default_rng(0), pad="loop")
    assert clip.tolist() == [0, 2, 4, 6, 8, 0, 2, 4]


def test_slowfast_training_clip_is_a_linspace_from_a_float_start():
    # SlowFast's training draw: start = uniform(0, 300 - 64), frames linspace(start, start + 63, 8)
    # truncated -- 9 frames apart, not 8, as its test views are.
    start = np.random.default_rng(5).uniform(0.0, 300 - 64)
    clip = S.random_clip(300, 8, 8, rng=np.random.default_rng(5), anchor="slowfast")
    assert clip.tolist() == [int(start) + 9 * k for k in range(8)]


def test_slowfast_training_clip_spans_target_fps_frames():
    # A 25 fps video resampled to 30: 8 x 8 frames span 64 * 25 / 30 = 53.3 of its frames.
    clip = S.random_clip(300, 8, 8, rng=np.random.default_rng(0), anchor="slowfast_offset", fps=(25.0, 30.0))
    assert clip[-1] - clip[0] in (52, 53)
    assert np.all(np.diff(clip) >= 7) and np.all(np.diff(clip) <= 8)


def test_slowfast_training_clip_of_a_short_video_repeats_the_last_frame():
    clip = S.random_clip(10, 4, 4, rng=np.random.default_rng(0), anchor="slowfast")
    assert clip.tolist() == [0, 5, 9, 9]  # linspace(0, 15, 4) = 0, 5, 10, 15, clamped


def test_dmvr_training_starts_leave_room_for_the_last_sampled_frame_only():
    rng = np.random.default_rng(0)
    starts = {int(S.random_clip(100, 8, 4, rng=rng, anchor="dmvr")[0]) for _ in range(3000)}
    assert starts == set(range(0, 100 - 7 * 4))  # DMVR: uniform int in [0, 100 - (8 - 1) * 4)


def test_dmvr_and_mmaction2_training_clips_of_a_short_video_loop():
    for anchor in ("dmvr", "mmaction2", "mmaction2_0x"):
        clip = S.random_clip(10, 8, 2, rng=np.random.default_rng(0), anchor=anchor)
        assert clip.tolist() == [0, 2, 4, 6, 8, 0, 2, 4], anchor


def test_only_slowfast_training_clips_resample_frame_rates():
    with pytest.raises(ValueError, match="does not resample"):
        S.random_clip(300, 8, 8, rng=np.random.default_rng(0), anchor="mmaction2", fps=(25.0, 30.0))
    with pytest.raises(ValueError, match="unknown anchor"):
        S.random_clip(300, 8, 8, rng=np.random.default_rng(0), anchor="tsn", pad="loop")


def test_mmaction2_views_span_first_to_last_start():
    # mmaction2 1.x test mode counts a clip as (8 - 1) * 8 + 1 = 57 frames: max_offset = 300 - 57
    # = 243, offsets round(i * 243 / 2) = 0, 122 (121.5 to even), 243; the last view ends on frame 299.
    views = S.uniform_clips(300, 8, 8, 3, anchor="mmaction2")
    assert views[:, 0].tolist() == [0, 122, 243]
    assert views[2].tolist() == [243, 251, 259, 267, 275, 283, 291, 299]


def test_mmaction2_test_span_runs_from_first_to_last_sampled_frame():
    assert S.test_span(8, 8, "mmaction2") == 57
    assert S.test_span(8, 8, "mmaction2_0x") == S.test_span(8, 8, "slowfast") == 64


def test_mmaction2_single_view_is_centred():
    assert S.uniform_clips(300, 8, 8, 1, anchor="mmaction2")[0, 0] == 121


def test_mmaction2_rounds_view_starts_half_to_even():
    # max_offset = 100 - 16 = 84; 84 / 8 = 10.5 per view -> 10.5 rounds to 10, 31.5 to 32.
    starts = S.uniform_clip_starts(100, 16, 9, anchor="mmaction2")
    assert starts.tolist() == [0, 10, 21, 32, 42, 52, 63, 74, 84]


def test_mmaction2_pads_short_videos_by_looping():
    views = S.uniform_clips(30, 8, 8, 2, anchor="mmaction2")
    assert views.tolist() == [[0, 8, 16, 24, 2, 10, 18, 26]] * 2


def test_mmaction2_0x_views_start_at_interval_centres():
    # (300 - 64 + 1) / 3 = 79 per interval; starts int(39.5), int(118.5), int(197.5).
    assert S.uniform_clip_starts(300, 64, 3, anchor="mmaction2_0x").tolist() == [39, 118, 197]


def test_slowfast_views_follow_its_linspace_placement():
    views = S.uniform_clips(300, 8, 8, 10, anchor="slowfast")
    assert views[0].tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    # start = 236 * 1 / 10 = 23.6; linspace(23.6, 86.6, 8) truncated.
    assert views[1].tolist() == [23, 32, 41, 50, 59, 68, 77, 86]
    assert views[9].tolist() == [212, 221, 230, 239, 248, 257, 266, 275]


def test_slowfast_pads_short_videos_by_clamping():
    assert S.uniform_clips(40, 8, 8, 1, anchor="slowfast")[0].tolist() == [0, 9, 18, 27, 36, 39, 39, 39]


def test_slowfast_matches_pytorchvideo_uniform_temporal_subsample(pytorchvideo_functional):
    import torch

    frames = torch.arange(64).view(1, 64, 1, 1).float()
    reference = pytorchvideo_functional.uniform_temporal_subsample(frames, 8, temporal_dim=1).flatten().long()
    assert S.uniform_clips(64, 8, 8, 1, anchor="slowfast")[0].tolist() == reference.tolist()


def test_slowfast_offset_views_start_at_multiples_of_the_floored_step():
    # MViTv2's configs (USE_OFFSET_SAMPLING): delta = 250 - 64 = 186, starts i * floor(186 / 4) = 46 i;
    # frames linspace(s, s + 63, 16) truncated.
    views = S.uniform_clips(250, 16, 4, 5, anchor="slowfast_offset")
    assert views[:, 0].tolist() == [0, 46, 92, 138, 184]
    assert views[0].tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]


def test_slowfast_offset_single_view_is_centred():
    # delta = 300 - 64 = 236 -> floor(236 / 2) = 118.
    assert S.uniform_clips(300, 16, 4, 1, anchor="slowfast_offset")[0, 0] == 118


def test_dmvr_views_truncate_a_linspace_of_starts():
    # ViViT (scenic/DMVR): max_offset = 300 - 64 = 236, linspace(0, 236, 4) = 0, 78.67, 157.33, 236.
    views = S.uniform_clips(300, 32, 2, 4, anchor="dmvr")
    assert views[:, 0].tolist() == [0, 78, 157, 236]
    assert views[1, :3].tolist() == [78, 80, 82]


def test_dmvr_single_view_starts_at_the_first_frame():
    assert S.uniform_clips(300, 32, 2, 1, anchor="dmvr")[0, 0] == 0


def test_dmvr_pads_short_videos_by_looping():
    assert S.uniform_clips(10, 8, 2, 1, anchor="dmvr")[0].tolist() == [0, 2, 4, 6, 8, 0, 2, 4]


def test_unknown_anchor_is_rejected():
    with pytest.raises(ValueError, match="anchor"):
        S.uniform_clips(100, 8, 2, 3, anchor="tsm")


def test_tsn_test_mode_takes_segment_centres():
    # tick = 30 / 8 = 3.75; floor(1.875 + 3.75 i).
    assert S.segment_indices(30, 8, train=False).tolist() == [1, 5, 9, 13, 16, 20, 24, 28]


def test_tsn_train_mode_takes_one_frame_inside_each_segment():
    rng = np.random.default_rng(3)
    for _ in range(200):
        indices = S.segment_indices(30, 8, train=True, rng=rng)
        segment = 30 // 8
        assert all(i * segment <= x < (i + 1) * segment for i, x in enumerate(indices))


def test_tsn_snippets_are_consecutive_frames():
    # TSN: tick = (100 - 3 + 1) / 4 = 24.5, snippet starts floor(12.25 + 24.5 i).
    indices = S.segment_indices(100, 4, frames_per_segment=3, train=False)
    assert indices.tolist() == [12, 13, 14, 36, 37, 38, 61, 62, 63, 85, 86, 87]


def test_tsn_short_video_repeats_frames():
    # tick = 3 / 8: floor(0.1875 + 0.375 i).
    assert S.segment_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_zero_length_video_is_an_error_not_an_empty_clip():
    with pytest.raises(ValueError, match="0 frames"):
        S.random_clip(0, 8, 1, rng=np.random.default_rng(0))


# ---- by timestamp --------------------------------------------------------------------------


def _variable_rate_timestamps() -> np.ndarray:
    """One second at 30 fps, then one second at 10 fps."""
    return np.concatenate([np.arange(30) / 30.0, 1.0 + np.arange(10) / 10.0])


def test_target_fps_samples_by_timestamp_on_variable_rate_video():
    stamps = _variable_rate_timestamps()
    # 8 frames at 4 fps from t=0: t = 0, .25, ..., 1.75 -> the frames shown at those times.
    clip = S.clip_at_time(stamps, 0.0, 8, 1, 4.0)
    assert clip.tolist() == [0, 7, 15, 22, 30, 32, 35, 37]
    # Sampling by index alone would have spread evenly over 40 frames instead.
    assert clip.tolist() != np.linspace(0, 39, 8).astype(int).tolist()


def test_target_fps_on_constant_rate_matches_index_stride():
    stamps = np.arange(300) / 30.0
    clip = S.clip_at_time(stamps, 2.0, 8, 2, 15.0)  # 2 frames at 15 fps = every 4th source frame
    assert clip.tolist() == list(range(60, 60 + 8 * 4, 4))


def test_random_clip_at_fps_stays_inside_the_video():
    stamps = np.arange(90) / 30.0
    rng = np.random.default_rng(0)
    for _ in range(100):
        clip = S.random_clip_at_fps(stamps, 8, 1, 5.0, rng=rng)  # 1.6 s of a 3 s video
        assert clip.min() >= 0 and clip.max() < 90
        assert np.array_equal(np.diff(clip), np.full(7, 6))


def test_uniform_clips_at_fps_spread_over_the_duration():
    stamps = np.arange(300) / 30.0  # 10 s
    views = S.uniform_clips_at_fps(stamps, 4, 1, 2.0, 3)  # 2 s views
    assert views[:, 0].tolist() == [0, 120, 240]


def test_time_past_the_end_repeats_the_last_frame():
    stamps = np.arange(10) / 10.0
    assert S.clip_at_time(stamps, 0.0, 4, 1, 2.0).tolist() == [0, 5, 9, 9]


def test_time_past_the_end_can_loop():
    stamps = np.arange(10) / 10.0
    assert S.clip_at_time(stamps, 0.0, 4, 1, 2.0, pad="loop").tolist() == [0, 5, 0, 5]


def _slowfast_reference_views(num_video_frames, num_frames, stride, num_clips, video_fps, target_fps=30):
    """SlowFast's `decode` with TARGET_FPS written out: a clip spans num_frames * stride frames at
    the target rate, `get_start_end_idx` (use_offset=False) places it, `temporal_sampling` takes
    a float32 linspace over it, clamped and truncated."""
    import torch

    clip_size = stride * num_frames / target_fps * video_fps
    delta = max(num_video_frames - clip_size, 0)
    views = []
    for i in range(num_clips):
        start = delta * i / num_clips
        index = torch.linspace(start, start + clip_size - 1, num_frames)
        views.append(torch.clamp(index, 0, num_video_frames - 1).long().tolist())
    return views


def test_slowfast_resamples_a_25_fps_video_to_30_fps():
    views = S.uniform_clips(300, 8, 32, 3, anchor="slowfast", fps=(25.0, 30.0))
    assert views.tolist() == _slowfast_reference_views(300, 8, 32, 3, 25.0)
    # 8 x 32 frames at 30 fps are 8.53 s: 213 frames of a 25 fps video, not 256.
    assert views[0, -1] == 212


def test_slowfast_resampling_leaves_a_30_fps_video_as_it_is():
    assert np.array_equal(S.uniform_clips(300, 8, 8, 10, anchor="slowfast", fps=(30.0, 30.0)),
                          S.uniform_clips(300, 8, 8, 10, anchor="slowfast"))


def test_slowfast_offset_resampling_floors_the_step_of_the_scaled_slack():
    # MViTv2 (USE_OFFSET_SAMPLING) on 250 frames at 60 fps: the clip spans 64 * 60 / 30 = 128
    # frames, delta = 122, starts i * floor(122 / 4) = 30 i, frames linspace(s, s + 127, 16).
    views = S.uniform_clips(250, 16, 4, 5, anchor="slowfast_offset", fps=(60.0, 30.0))
    assert views[:, 0].tolist() == [0, 30, 60, 90, 120]
    assert views[0, -1] == 127


def test_a_video_of_unknown_frame_rate_is_not_resampled():
    assert np.array_equal(S.uniform_clips(300, 8, 8, 3, anchor="slowfast", fps=(float("nan"), 30.0)),
                          S.uniform_clips(300, 8, 8, 3, anchor="slowfast"))


def test_only_slowfast_anchors_resample_frame_rates():
    with pytest.raises(ValueError, match="does not resample"):
        S.uniform_clips(300, 8, 8, 3, anchor="mmaction2", fps=(25.0, 30.0))
