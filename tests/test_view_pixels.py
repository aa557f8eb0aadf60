"""Kinetics test views are the pixels of each paper's own test loader: its resize kernel, its
rounding of the resized long side and its clip starts, written out here from the original
sources (cited per test) and compared exactly."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest
import torch

from spatiotemporal.data.kinetics import ClassIndex, ClipSampling, KineticsDataset, VideoRecord
from spatiotemporal.data.transforms import ClipTransform, frames_to_clip, short_side_scale
from spatiotemporal.io.resize import resize_short_side, short_side_size
from spatiotemporal.io.video import VideoReader
from tests import video_fixtures

PANCAKE = "flipping_a_pancake.mkv"


def _decoded_frames(path, count: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                return frames
    return frames


# ---- MViTv2: SlowFast with DECODING_BACKEND torchvision resizes inside the decoder -------------


def _torchvision_decoder_size(width: int, height: int, min_dimension: int) -> tuple[int, int]:
    """(width, height) as torchvision's video reader sizes a frame for `video_min_dimension`
    (torchvision/csrc/io/decoder/util.cpp, `setFormatDimensions`: the short side at the minimum,
    the other `round(double(long * min) / short)`, C's round, half away from zero)."""
    if width > height:
        return int(math.floor(width * min_dimension / height + 0.5)), min_dimension
    return min_dimension, int(math.floor(height * min_dimension / width + 0.5))


def test_mvitv2_frames_are_resized_in_the_decoder_by_swscale_area_on_the_shared_clip(video_dir):
    """slowfast/datasets/kinetics.py passes the test short side as `max_spatial_scale`, which
    decoder.py `torchvision_decode` hands torchvision as `video_min_dimension`; torchvision converts
    each decoded frame to RGB24 and resizes it in one sws_scale call with SWS_AREA, which PyAV's
    `reformat(..., interpolation="AREA")` makes from the same decoded frame."""
    path = video_dir / PANCAKE
    expected = [
        frame.reformat(*_torchvision_decoder_size(frame.width, frame.height, 256), format="rgb24",
                       interpolation="AREA").to_ndarray()
        for frame in _decoded_frames(path, 12)
    ]
    with VideoReader(path, short_side=256, geometry="slowfast_decoder") as reader:
        frames = reader.get_frames(range(12))
        assert reader.backend == "pyav"
    assert frames.shape == (12, 256, 454, 3)  # 426 * 256 / 240 = 454.4, rounded
    np.testing.assert_array_equal(frames.numpy(), np.stack(expected))


@pytest.mark.parametrize("size", ["230x144", "202x114", "334x190", "144x230", "500x282", "176x144"])
def test_mvitv2_long_side_is_rounded_as_torchvision_rounds_it(tmp_path, size):
    """The long side is round(w * 256 / h) (230x144: 408.9 -> 409, where floor gives 408), and the
    centre crop of the 224 view sits where SlowFast's `uniform_crop` puts it in that frame
    (ceil((409 - 224) / 2) = 93)."""
    width, height = map(int, size.split("x"))
    video = video_fixtures.testsrc(tmp_path / f"{size}.mp4", frames=4, size=size, fps=30)
    expected = [
        frame.reformat(*_torchvision_decoder_size(width, height, 256), format="rgb24", interpolation="AREA").to_ndarray()
        for frame in _decoded_frames(video, 4)
    ]
    with VideoReader(video, short_side=256, geometry="slowfast_decoder") as reader:
        frames = reader.get_frames(range(4))
    np.testing.assert_array_equal(frames.numpy(), np.stack(expected))
    out_w, out_h = _torchvision_decoder_size(width, height, 256)
    assert short_side_size(height, width, 256, "slowfast_decoder") == (out_h, out_w)
    view = ClipTransform(crop_size=224, test_short_side=256, num_crops=1, geometry="slowfast_decoder").test_crops(frames)
    top, left = math.ceil((out_h - 224) / 2), math.ceil((out_w - 224) / 2)
    assert torch.equal(view[0], frames_to_clip(frames)[..., top : top + 224, left : left + 224])


def test_mvitv2_evaluation_and_inference_resize_in_the_decoder_without_a_cache(video_dir):
    """Both the evaluation dataset (no decode_short_side) and `infer.clip_views` read MViTv2's
    test frames through the decoder-side resize: their views are crops of the swscale area frames."""
    from spatiotemporal.infer import ClipRecipe, clip_views

    path = video_dir / PANCAKE
    transform = ClipTransform(crop_size=224, test_short_side=256, num_crops=1, geometry="slowfast_decoder")
    clip = ClipSampling(num_frames=4, stride=2, num_clips=2, anchor="slowfast_offset")
    item = KineticsDataset([VideoRecord("p", str(path), "a")], ClassIndex(("a",)), mode="test", clip=clip,
                           transform=transform)[0]
    assert item["error"] == ""
    recipe = ClipRecipe(frames=4, stride=2, crop=224, short_side=256, views=(2, 1), anchor="slowfast_offset",
                        geometry="slowfast_decoder")
    views = torch.from_numpy(clip_views(path, recipe))  # (V, T, H, W, C) uint8
    with VideoReader(path) as reader:
        indices = clip.test_indices(reader).reshape(-1)
    decoded = _decoded_frames(path, int(indices.max()) + 1)
    area = torch.from_numpy(np.stack([decoded[i].reformat(454, 256, format="rgb24", interpolation="AREA").to_ndarray()
                                      for i in indices]))
    expected = area[:, 16:240, 115:339].reshape(2, 4, 224, 224, 3)  # ceil((454 - 224) / 2) = 115
    assert torch.equal(views, expected)
    mean, std = torch.tensor(transform.mean), torch.tensor(transform.std)
    normalised = (expected.float() / 255 - mean) / std
    torch.testing.assert_close(item["video"], normalised.permute(0, 4, 1, 2, 3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pixel_format, swscale_range", [("yuv420p", "MPEG"), ("yuvj420p", "JPEG")])
def test_mvitv2_frames_keep_torchvision_colours_whatever_the_stream_tags(tmp_path, pixel_format, swscale_range):
    """torchvision/csrc/io/decoder/video_sampler.cpp builds its swscale context with
    `sws_getContext(..., SWS_AREA, ...)` and never calls `sws_setColorspaceDetails`, so swscale
    converts with its defaults: BT.601 coefficients, and the range its `handle_jpeg` infers from the
    pixel format (full for yuvj*, limited otherwise). A stream tagged BT.709 converts the same way;
    converting by the tags instead moves most values by 1-3 grey levels."""
    video = video_fixtures.testsrc(
        tmp_path / f"bt709_{pixel_format}.mp4", frames=3, size="230x144", fps=30,
        extra=("-pix_fmt", pixel_format, "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"),
    )
    decoded = _decoded_frames(video, 3)
    assert (decoded[0].format.name, decoded[0].colorspace) == (pixel_format, 1)  # AVCOL_SPC_BT709
    size = _torchvision_decoder_size(230, 144, 256)
    expected = np.stack([frame.reformat(*size, format="rgb24", interpolation="AREA", src_colorspace="ITU601",
                                        src_color_range=swscale_range).to_ndarray() for frame in decoded])
    by_tags = np.stack([frame.reformat(*size, format="rgb24", interpolation="AREA").to_ndarray() for frame in decoded])
    assert not np.array_equal(expected, by_tags)  # the clip does tell the two apart
    with VideoReader(video, short_side=256, geometry="slowfast_decoder") as reader:
        frames = reader.get_frames(range(3))
    np.testing.assert_array_equal(frames.numpy(), expected)


# ---- MViTv2: clip starts within SlowFast's float video length -------------------------------


def stream_timing(path):
    """The header's timing as the reader's probe recorded it."""
    with VideoReader(path) as reader:
        return reader.stream_timing


def test_mvitv2_clip_starts_use_the_float_video_length_of_torchvision_probe(tmp_path):
    """slowfast/datasets/decoder.py `torchvision_decode`: video_size = video_fps * video_duration,
    both floats from torchvision's probe (`_fill_info`: duration = float(ticks) * (num / float(den));
    fps stored as float32). For 124 frames at 30 fps, time base 1/15360: 63488 * (1 / 15360) * 30
    = 123.99999999999999, not 124. `get_start_end_idx` with use_offset: delta = size - 16 * 4,
    start_i = i * floor(delta / (5 - 1)) = i * floor(14.99...) = 14 i, not 15 i."""
    video = video_fixtures.testsrc(tmp_path / "124.mp4", frames=124, size="96x64", fps=30, extra=("-video_track_timescale", "15360"))
    timing = stream_timing(video)
    assert (timing.duration_ticks, timing.time_base, timing.guessed_rate) == (63488, Fraction(1, 15360), 30)
    reference_size = float(np.float32(30.0)) * (float(63488) * (1 / float(15360)))
    assert reference_size == 123.99999999999999
    reference_starts = [i * math.floor(max(reference_size - 64, 0) / 4) for i in range(5)]
    clip = ClipSampling(num_frames=16, stride=4, num_clips=5, anchor="slowfast_offset", anchor_fps=30.0)
    with VideoReader(video) as reader:
        assert len(reader) == 124
        starts = clip.test_indices(reader)[:, 0]
    assert starts.tolist() == reference_starts == [0, 14, 28, 42, 56]


def test_mvitv2_clip_starts_take_the_header_timing_from_the_readers_probe(tmp_path, monkeypatch):
    """The reader's probe already read the header's timing: placing the views opens no container."""
    import spatiotemporal.io.video as video_module

    video = video_fixtures.testsrc(tmp_path / "124.mp4", frames=124, size="96x64", fps=30, extra=("-video_track_timescale", "15360"))
    clip = ClipSampling(num_frames=16, stride=4, num_clips=5, anchor="slowfast_offset", anchor_fps=30.0)
    with VideoReader(video) as reader:

        def no_open(*args, **kwargs):
            raise AssertionError("the video was opened again")

        monkeypatch.setattr(video_module, "_open_container", no_open)
        monkeypatch.setattr(video_module.av, "open", no_open)
        starts = clip.test_indices(reader)[:, 0]
    assert starts.tolist() == [0, 14, 28, 42, 56]


def test_mvitv2_clip_span_uses_the_probed_rate_not_the_average_rate(tmp_path):
    """slowfast/datasets/decoder.py sizes the clip with the same fps as the video:
    `torchvision_decode` has `fps = video_meta["video_fps"]` (the guessed rate, float32) and
    `clip_size = sampling_rate * num_frames / target_fps * fps`, and `decode` cuts the clip with the
    fps that function returns; `temporal_sampling` takes `linspace(start, start + clip_size - 1,
    num_frames).long()`. A 170-frame clip at 30 fps with a 10-frame gap after frame 99 has a guessed
    rate of 30 and an average of 85/3: the clip spans 4 * 16 / 30 * 30 = 64 frames, not 60.4.
    (SlowFast decodes each view's pts window, so views past the gap would hold other frames
    whatever the span; the two before it are compared.)"""
    video = video_fixtures.testsrc(
        tmp_path / "vfr.mp4", frames=170, size="96x64", fps=30,
        extra=("-vf", "setpts=PTS+gte(N\\,100)*10/(30*TB)", "-fps_mode", "passthrough",
               "-video_track_timescale", "15360"),
    )
    timing = stream_timing(video)
    assert (timing.duration_ticks, timing.time_base, timing.guessed_rate) == (92160, Fraction(1, 15360), 30)
    fps = float(np.float32(30.0))
    video_size = fps * (float(92160) * (1 / float(15360)))  # 180.0
    clip_size = 4 * 16 / 30 * fps  # 64.0
    starts = [i * math.floor(max(video_size - clip_size, 0) / 4) for i in range(5)]
    clip = ClipSampling(num_frames=16, stride=4, num_clips=5, anchor="slowfast_offset", anchor_fps=30.0)
    with VideoReader(video) as reader:
        assert (len(reader), reader.metadata.fps) == (170, 85 / 3)
        views = clip.test_indices(reader)
    assert views[:, 0].tolist() == starts == [0, 29, 58, 87, 116]
    for view, start in zip(views[:2], starts[:2]):
        assert view.tolist() == torch.linspace(start, start + clip_size - 1, 16).long().tolist()
    assert views[0].tolist() == [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]


# ---- Video Swin: mmcv's imresize is OpenCV's uint8 bilinear ----------------------------------


def _mmcv_resize(frames: np.ndarray, short_side: int) -> np.ndarray:
    """mmaction2 0.x `Resize(scale=(-1, 224))` (mmaction/datasets/pipelines/augmentations.py):
    scale (inf, 224) -> mmcv `rescale_size`: factor 224 / short, each side int(side * factor + 0.5);
    mmcv/image/geometric.py `imresize`: cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)."""
    height, width = frames.shape[1:3]
    factor = short_side / min(height, width)
    size = (int(width * factor + 0.5), int(height * factor + 0.5))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR) for frame in frames])


@pytest.fixture(scope="module")
def pancake_frames(video_dir) -> torch.Tensor:
    with VideoReader(video_dir / PANCAKE) as reader:
        return reader.get_frames(range(0, 96, 12))


def test_swin_views_are_opencv_bilinear_on_the_shared_clip(pancake_frames):
    expected = _mmcv_resize(pancake_frames.numpy(), 224)
    np.testing.assert_array_equal(resize_short_side(pancake_frames, 224, "mmaction2").numpy(), expected)
    # The test transform resizes the whole (C, T, H, W) clip at once: the same pixels.
    scaled = ClipTransform(crop_size=224, test_short_side=224, num_crops=3, geometry="mmaction2").test_crops(pancake_frames)
    np.testing.assert_array_equal(scaled[1].permute(1, 2, 3, 0).numpy(), expected[:, :, 87 : 87 + 224])  # (398-224)//2


@pytest.mark.parametrize("size", [(240, 426), (97, 131), (131, 97), (101, 101), (180, 320), (239, 425), (77, 333),
                                  (333, 77), (200, 223), (223, 200), (150, 299), (121, 215), (240, 300), (99, 100),
                                  (64, 400), (225, 226), (111, 187), (187, 111), (143, 255), (239, 239), (57, 91),
                                  (91, 57)])
def test_swin_views_are_opencv_bilinear_on_generated_sizes(pancake_frames, size):
    """Odd and even sizes, up- and downscaled, portrait and landscape: the frames are real pixels
    of the shared clip cut to each size."""
    height, width = size
    frames = pancake_frames[:3, :height, :width].contiguous()
    expected = _mmcv_resize(frames.numpy(), 224)
    np.testing.assert_array_equal(resize_short_side(frames, 224, "mmaction2").numpy(), expected)
    clip = short_side_scale(frames_to_clip(frames), 224, geometry="mmaction2")  # (C, T, H, W): plane by plane
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), expected)


@pytest.fixture(scope="module")
def cockatoo_frames(video_dir) -> torch.Tensor:
    with VideoReader(video_dir / "cockatoo.mp4") as reader:
        return reader.get_frames(range(0, 30, 10))  # 720x1280


@pytest.mark.parametrize("height, width, short_side", [(448, 800, 224), (448, 896, 224), (720, 1280, 360),
                                                       (300, 500, 150), (360, 640, 180), (480, 640, 240),
                                                       (450, 450, 225), (602, 314, 157)])
def test_swin_views_are_opencv_bilinear_at_exact_halvings(cockatoo_frames, height, width, short_side):
    """At exactly half the size OpenCV's INTER_LINEAR turns into its fast area path, whose rounding
    depends on the channel count (resize.cpp: `(a + b + c + d + 2) >> 2` for 1, 3 and 4 channels,
    `saturate_cast(sum * 0.25f)` beyond): the views are mmcv's 3-channel calls, frame by frame,
    whichever layout the frames come in."""
    frames = cockatoo_frames[:, :height, :width].contiguous()
    expected = _mmcv_resize(frames.numpy(), short_side)
    assert expected.shape[1:3] == (height // 2, width // 2)
    np.testing.assert_array_equal(resize_short_side(frames, short_side, "mmaction2").numpy(), expected)
    clip = short_side_scale(frames_to_clip(frames), short_side, geometry="mmaction2")
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), expected)


# ---- ViViT: DMVR's resize_smallest truncates TensorFlow's float bilinear ---------------------


def _dmvr_resize_smallest(frames: np.ndarray, min_resize: int) -> np.ndarray:
    """dmvr/processors.py `resize_smallest`: output_h = max(min_resize, h * min_resize // w) (and w
    likewise), `tf.image.resize` (bilinear, half-pixel centres, no antialias: image_ops_impl.py
    `resize_images_v2` -> `resize_bilinear(half_pixel_centers=True)`), then `tf.cast` to uint8, which
    truncates. The kernel (tensorflow/core/kernels/image/resize_bilinear_op.cc), in float32:
    in = (out + 0.5) * (in_size / out_size) - 0.5, lower = max(floor(in), 0), upper = min(ceil(in),
    in_size - 1), lerp = in - floor(in); top = tl + (tr - tl) * dx, bottom = bl + (br - bl) * dx,
    value = top + (bottom - top) * dy."""
    height, width = frames.shape[1:3]
    out_h, out_w = max(min_resize, height * min_resize // width), max(min_resize, width * min_resize // height)

    def positions(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)
        source = [(np.float32(i) + np.float32(0.5)) * scale - np.float32(0.5) for i in range(out_size)]
        return [(max(int(np.floor(s)), 0), min(int(np.ceil(s)), in_size - 1), np.float32(s - np.floor(s))) for s in source]

    values = frames.astype(np.float32)
    out = np.empty((frames.shape[0], out_h, out_w, frames.shape[3]), dtype=np.uint8)
    columns = positions(width, out_w)
    left = np.array([c[0] for c in columns])
    right = np.array([c[1] for c in columns])
    dx = np.array([c[2] for c in columns], dtype=np.float32)[:, None]
    for y, (top, bottom, dy) in enumerate(positions(height, out_h)):
        tl, tr, bl, br = values[:, top, left], values[:, top, right], values[:, bottom, left], values[:, bottom, right]
        upper = tl + (tr - tl) * dx
        lower = bl + (br - bl) * dx
        out[:, y] = (upper + (lower - upper) * dy).astype(np.uint8)  # the cast truncates
    return out


@pytest.mark.parametrize("size", [(240, 426), (97, 131), (131, 97), (57, 91), (101, 101)])
def test_vivit_views_are_tensorflow_bilinear_truncated(pancake_frames, size):
    height, width = size
    frames = pancake_frames[:2, :height, :width].contiguous()
    ours = resize_short_side(frames, 112, "dmvr").numpy()
    np.testing.assert_array_equal(ours, _dmvr_resize_smallest(frames.numpy(), 112))


def test_vivit_truncation_differs_from_rounding_where_the_fraction_is_over_a_half(pancake_frames):
    """Truncation, not rounding: a share of values sit one grey level below the rounded resize."""
    truncated = resize_short_side(pancake_frames[:2], 256, "dmvr").int()
    rounded = resize_short_side(pancake_frames[:2], 256, "slowfast").int()
    assert set((rounded - truncated).unique().tolist()) == {0, 1}


# ---- TimeSformer: the float pipeline, rounded once --------------------------------------------


def test_timesformer_views_are_within_half_a_grey_level_of_the_float_pipeline(pancake_frames):
    """TimeSformer's loader (timesformer/datasets/kinetics.py) normalises to floats before
    `spatial_sampling` resizes them; ours rounds the resized frames to uint8 once, as documented."""
    clip = frames_to_clip(pancake_frames)
    ours = ClipTransform(crop_size=224, test_short_side=224, num_crops=3).test_crops(pancake_frames).float() / 255
    from spatiotemporal.data.transforms import three_crop, to_float

    float_pipeline = three_crop(short_side_scale(to_float(clip), 224), 224)
    assert (ours - float_pipeline).abs().max() <= 0.5 / 255 + 1e-6
