"""Clip samplers: pure functions from a video's length (or its frame timestamps) to frame indices.

Every sampler returns int64 numpy indices into the decoded video, so the reader decodes only the
frames a clip needs. A clip of `num_frames` frames with `stride` covers `num_frames * stride`
source frames (the last sampled frame plus its trailing gap), which is how SlowFast and mmaction2
count a training clip's span; mmaction2 1.x places test views with the span from the first to the
last sampled frame instead (`test_span`). Each code base's placement of test views is an "anchor",
and each model's spec names the one its paper was evaluated with.

Videos shorter than a clip are padded, and the two reference code bases pad differently:
  * "repeat_last" (SlowFast, pytorchvideo): indices past the end are clamped to the last frame.
  * "loop" (mmaction2's default `out_of_bound_opt`): indices wrap around to the start.
`segment_indices` defaults to "repeat_last"; `random_clip` and `uniform_clips` default to the
padding of the anchor whose clip placement they reproduce ("repeat_last" without one).

Each code base also draws its training clips its own way, and a model trained to its paper draws
them as that code base does (`random_clip(..., anchor=...)`): mmaction2 an integer start, SlowFast
a float start and the same linspace frames its test views use, DMVR (ViViT) an integer start with
room for the last sampled frame only.

With a target fps, sampling goes by timestamp: sample k of a clip is the frame shown at time
`start + k * stride / target_fps`, so variable-frame-rate videos are sampled evenly in time.

SlowFast (and so TimeSformer and MViTv2) also resamples every video to its `TARGET_FPS` (30), but
in frame indices: a clip spans `num_frames * stride * video_fps / target_fps` frames of the video,
a fractional span its linspace placement takes as it is. `uniform_clips(..., fps=(video, target))`
reproduces that; a 30 fps video is unchanged, a 25 fps one spans 5/6 as many frames.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Padding = Literal["repeat_last", "loop"]
Anchor = Literal["mmaction2", "mmaction2_0x", "slowfast", "slowfast_offset", "dmvr"]

_ANCHOR_PADDING: dict[str, Padding] = {
    "mmaction2": "loop",
    "mmaction2_0x": "loop",
    "slowfast": "repeat_last",
    "slowfast_offset": "repeat_last",
    "dmvr": "loop",
}
# Anchors whose frames are `linspace(start, start + span - 1, num_frames)` truncated, not start + k * stride.
_LINSPACE_FRAMES = ("slowfast", "slowfast_offset")


def pad_indices(indices: np.ndarray, num_video_frames: int, pad: Padding) -> np.ndarray:
    """Map indices that run past the end of the video back inside it."""
    if num_video_frames <= 0:
        raise ValueError(f"cannot sample from a video with {num_video_frames} frames")
    indices = np.asarray(indices, dtype=np.int64)
    if pad == "loop":
        return np.mod(indices, num_video_frames)
    if pad == "repeat_last":
        return np.clip(indices, 0, num_video_frames - 1)
    raise ValueError(f"unknown padding {pad!r}; expected 'repeat_last' or 'loop'")


def clip_span(num_frames: int, stride: int) -> int:
    """Source frames covered by a clip of `num_frames` sampled every `stride` frames."""
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    return num_frames * stride


def clip_at(start: int, num_frames: int, stride: int, num_video_frames: int, pad: Padding = "repeat_last") -> np.ndarray:
    """The clip starting at frame `start`: start, start + stride, ... padded to the video."""
    indices = start + np.arange(num_frames, dtype=np.int64) * stride
    return pad_indices(indices, num_video_frames, pad)


def random_clip(
    num_video_frames: int,
    num_frames: int,
    stride: int = 1,
    *,
    rng: np.random.Generator,
    anchor: Anchor | None = None,
    pad: Padding | None = None,
    fps: tuple[float, float] | None = None,
) -> np.ndarray:
    """One training clip at a uniformly random start, drawn as the anchor's code base draws it.

    * no anchor, mmaction2, mmaction2_0x (`SampleFrames`, one clip): an integer start in
      [0, num_video_frames - num_frames * stride]; a video shorter than the clip starts at 0.
    * slowfast, slowfast_offset (`get_start_end_idx` with `clip_idx=-1`, then `temporal_sampling`):
      a float start in [0, num_video_frames - span], frames `linspace(start, start + span - 1)`
      truncated, as its test views are cut; `fps` scales the span as in `uniform_clips`.
    * dmvr (`sample_sequence`, random): an integer start in [0, num_video_frames - (num_frames - 1)
      * stride), room for the last sampled frame but not its trailing gap (at least [0, 1)).

    `pad` defaults to the anchor's padding, "repeat_last" without an anchor.
    """
    if anchor is not None:
        _known_anchor(anchor)
    pad = pad or (_ANCHOR_PADDING[anchor] if anchor is not None else "repeat_last")
    span = _resampled_span(clip_span(num_frames, stride), fps, anchor)
    # A clip with one possible start draws nothing, so the augmentations after it keep their draws.
    if anchor in _LINSPACE_FRAMES:
        delta = num_video_frames - span
        start = float(rng.uniform(0.0, delta)) if delta > 0 else 0.0
        return _linspace_clip(start, span, num_frames, num_video_frames, pad)
    if anchor == "dmvr":
        starts = num_video_frames - (num_frames - 1) * stride
        start = int(rng.integers(0, starts)) if starts > 1 else 0
        return clip_at(start, num_frames, stride, num_video_frames, pad)
    last_start = num_video_frames - span
    start = int(rng.integers(0, last_start + 1)) if last_start > 0 else 0
    return clip_at(start, num_frames, stride, num_video_frames, pad)


def _known_anchor(anchor: str) -> None:
    if anchor not in _ANCHOR_PADDING:
        raise ValueError(f"unknown anchor {anchor!r}; expected one of {sorted(_ANCHOR_PADDING)}")


def _resampled_span(span: float, fps: tuple[float, float] | None, anchor: Anchor | None) -> float:
    """`span` in the video's own frames when SlowFast resamples it from `fps` = (video, target)."""
    if fps is None:
        return span
    if anchor not in _LINSPACE_FRAMES:
        raise ValueError(f"the {anchor!r} anchor does not resample frame rates; only SlowFast's do")
    video_fps, target_fps = fps
    if not target_fps > 0:
        raise ValueError(f"target fps must be positive, got {target_fps}")
    return span * video_fps / target_fps if video_fps > 0 else span  # NaN or 0: unknown, not scaled


def _linspace_clip(start: float, span: float, num_frames: int, num_video_frames: int, pad: Padding) -> np.ndarray:
    """SlowFast's `temporal_sampling`: torch.linspace in float32, then truncation."""
    indices = torch.linspace(start, start + span - 1, num_frames).long().numpy()
    return pad_indices(indices, num_video_frames, pad)


def test_span(num_frames: int, stride: int, anchor: Anchor) -> int:
    """The span an anchor's test views are placed with. mmaction2 1.x counts a test clip from its
    first to its last sampled frame, `(num_frames - 1) * stride + 1` (`SampleFrames` in test mode);
    every other anchor counts the trailing gap too, `num_frames * stride`."""
    if anchor == "mmaction2":
        return (num_frames - 1) * stride + 1
    return clip_span(num_frames, stride)


def uniform_clip_starts(num_video_frames: int, span: int, num_clips: int, anchor: Anchor = "mmaction2") -> np.ndarray:
    """Start frames of `num_clips` evenly spaced test views, placed as the anchor code base does,
    given the span the anchor counts (`test_span`).

    * mmaction2 (1.x `SampleFrames._get_test_clips`, 3-D models): views spread from the first to
      the last possible start, both included, rounded half-to-even; one view sits in the middle.
    * mmaction2_0x (0.x, used by Video Swin): the video is cut into `num_clips` equal intervals
      and each view starts at its interval's centre, truncated to an integer.
    * slowfast (`get_start_end_idx`, `use_offset=False`; TimeSformer): view i starts at
      `(num_video_frames - span) * i / num_clips`, so views begin at frame 0 and never touch the end.
    * slowfast_offset (`use_offset=True`; MViTv2's configs): view i starts at
      `i * floor(slack / (num_clips - 1))`, a single view at `floor(slack / 2)`.
    * dmvr (`sample_linspace_sequence`; ViViT): `linspace(0, slack, num_clips)` truncated, so a
      single view starts at frame 0.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    slack = num_video_frames - span
    i = np.arange(num_clips, dtype=np.float64)
    if anchor == "mmaction2":
        max_offset = max(slack, 0)
        if num_clips == 1:
            return np.array([max_offset // 2], dtype=np.int64)
        return np.round(i * (max_offset / (num_clips - 1))).astype(np.int64)
    if anchor == "mmaction2_0x":
        if slack + 1 <= 0:  # the reference's `num_frames > ori_clip_len - 1` fails: all views at 0
            return np.zeros(num_clips, dtype=np.int64)
        interval = (slack + 1) / num_clips
        return (i * interval + interval / 2.0).astype(np.int64)
    if anchor == "slowfast":
        return np.floor(max(slack, 0) * i / num_clips).astype(np.int64)
    if anchor == "slowfast_offset":
        # `math.floor(delta / ...)` as SlowFast writes it; delta is a float where the video size is.
        delta = max(slack, 0)
        if num_clips == 1:
            return np.array([math.floor(delta / 2)], dtype=np.int64)
        return np.arange(num_clips, dtype=np.int64) * math.floor(delta / (num_clips - 1))
    if anchor == "dmvr":
        # float32 as TensorFlow computes it, then the cast's truncation.
        return np.linspace(0.0, max(slack, 0), num_clips, dtype=np.float32).astype(np.int64)
    raise ValueError(f"unknown anchor {anchor!r}; expected one of {sorted(_ANCHOR_PADDING)}")


def uniform_clips(
    num_video_frames: int,
    num_frames: int,
    stride: int,
    num_clips: int,
    *,
    anchor: Anchor = "mmaction2",
    pad: Padding | None = None,
    fps: tuple[float, float] | None = None,
    video_size: float | None = None,
) -> np.ndarray:
    """All temporal test views: (num_clips, num_frames) indices, evenly spaced over the video.

    `video_size`: the length the anchor places views within when it is not the frame count, as
    SlowFast's torchvision loader takes `fps * duration` in floats (`torchvision_video_size`);
    padding still goes by the frames there are.

    `pad` defaults to the anchor's own padding ("loop" for mmaction2 and DMVR, "repeat_last" for
    SlowFast). SlowFast places its frames with `linspace(start, start + span - 1, num_frames)`,
    which for its float start (or a span that `num_frames - 1` does not divide) is not exactly
    `start + k * stride`; that placement is reproduced here so that evaluating a SlowFast-trained
    model sees the frames it was tested on.

    `fps` = (the video's frame rate, the rate the anchor resamples to) scales the span as SlowFast's
    `TARGET_FPS` does; only the SlowFast anchors resample, and a video of unknown rate is not scaled.
    """
    _known_anchor(anchor)
    pad = pad or _ANCHOR_PADDING[anchor]
    span = _resampled_span(test_span(num_frames, stride, anchor), fps, anchor)
    if anchor in _LINSPACE_FRAMES:
        if anchor == "slowfast":
            delta = max(num_video_frames - span, 0)
            starts = [delta * i / num_clips for i in range(num_clips)]
        else:
            length = num_video_frames if video_size is None else video_size
            starts = [float(s) for s in uniform_clip_starts(length, span, num_clips, anchor)]
        return np.stack([_linspace_clip(s, span, num_frames, num_video_frames, pad) for s in starts])
    starts = uniform_clip_starts(num_video_frames, span, num_clips, anchor)
    return np.stack([clip_at(int(s), num_frames, stride, num_video_frames, pad) for s in starts])


def torchvision_video_size(duration_ticks: int | None, time_base, guessed_rate) -> float | None:
    """The video length SlowFast places test views within when it decodes with torchvision
    (MViTv2's configs): the probe's fps times its duration, in floats, so a 124-frame 30 fps video
    with time base 1/15360 is 123.99999999999999 frames long. None where the header declares no
    duration or rate; SlowFast then decodes everything and counts the frames.

    The arithmetic, from the sources:
      * slowfast/datasets/decoder.py, `torchvision_decode`: `get_start_end_idx(video_meta["video_fps"]
        * video_meta["video_duration"], ...)`;
      * torchvision/io/_video_opt.py, `_fill_info`: `timebase = num / float(den)`, `video_duration =
        float(duration) * timebase`, `video_fps = float(fps)`;
      * torchvision/csrc/io/video_reader/video_reader.cpp, `probeVideo`: fps is stored in a float32
        tensor, duration as the stream's ticks; decoder.cpp: fps = `av_guess_frame_rate`.
    """
    fps = torchvision_fps(guessed_rate)
    if not duration_ticks or duration_ticks <= 0 or fps is None or time_base.denominator <= 0:
        return None
    duration = float(duration_ticks) * (time_base.numerator / float(time_base.denominator))
    return fps * duration


def torchvision_fps(guessed_rate) -> float | None:
    """The frame rate SlowFast's torchvision loader works with: ffmpeg's guessed rate as
    torchvision's probe stores it, in float32 (None where there is none). It sizes the video
    (`torchvision_video_size`) and the clip alike: slowfast/datasets/decoder.py `torchvision_decode`
    takes `fps = video_meta["video_fps"]` and `clip_size = sampling_rate * num_frames / target_fps
    * fps`, and `decode` cuts the clip with the fps `torchvision_decode` returned, the same one.
    A variable-rate video's average rate (`VideoMetadata.fps`) is another number."""
    if not guessed_rate:
        return None
    return float(np.float32(float(guessed_rate)))


def segment_indices(
    num_video_frames: int,
    num_segments: int,
    *,
    frames_per_segment: int = 1,
    train: bool,
    rng: np.random.Generator | None = None,
    pad: Padding = "repeat_last",
) -> np.ndarray:
    """TSN-style sampling: the video is cut into `num_segments` equal parts, one snippet of
    `frames_per_segment` consecutive frames from each.

    Training takes a random snippet inside each segment; testing takes the snippet at each
    segment's centre (TSN's `tick / 2 + tick * i`). When a segment holds fewer frames than a
    snippet, snippets overlap and run past the end, where `pad` applies.
    """
    if num_segments < 1 or frames_per_segment < 1:
        raise ValueError("num_segments and frames_per_segment must be >= 1")
    usable = num_video_frames - frames_per_segment + 1
    if train:
        if rng is None:
            raise ValueError("training segment sampling needs an rng")
        length = usable // num_segments
        if length > 0:
            offsets = np.arange(num_segments) * length + rng.integers(0, length, size=num_segments)
        elif usable > num_segments:
            offsets = np.sort(rng.integers(0, usable, size=num_segments))
        else:
            offsets = np.floor(np.arange(num_segments) * max(usable, 1) / num_segments)
    else:
        tick = max(usable, 1) / num_segments
        offsets = np.floor(tick / 2.0 + tick * np.arange(num_segments))
    indices = offsets.astype(np.int64)[:, None] + np.arange(frames_per_segment, dtype=np.int64)[None, :]
    return pad_indices(indices.reshape(-1), num_video_frames, pad)


# ---- sampling by timestamp -------------------------------------------------------------------


def frames_at_times(timestamps: np.ndarray, times: np.ndarray, pad: Padding = "repeat_last") -> np.ndarray:
    """Index of the frame on screen at each time: the last frame whose timestamp is <= t.

    Times past the video's end are padded: clamped to the last frame, or wrapped around the
    video's duration (one frame period past the last timestamp) for "loop".
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.ndim != 1 or len(timestamps) == 0:
        raise ValueError("timestamps must be a non-empty 1-D array")
    times = np.asarray(times, dtype=np.float64)
    if pad == "loop":
        period = np.median(np.diff(timestamps)) if len(timestamps) > 1 else 1.0
        duration = timestamps[-1] - timestamps[0] + period
        times = timestamps[0] + np.mod(times - timestamps[0], duration)
    # A small tolerance keeps float round-off in `start + k / fps` from picking the previous frame.
    indices = np.searchsorted(timestamps, times + 1e-6, side="right") - 1
    return np.clip(indices, 0, len(timestamps) - 1).astype(np.int64)


def clip_duration(num_frames: int, stride: int, target_fps: float) -> float:
    """Seconds covered by a clip sampled at `target_fps` (the time analogue of `clip_span`)."""
    if target_fps <= 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    return clip_span(num_frames, stride) / target_fps


def clip_at_time(
    timestamps: np.ndarray, start: float, num_frames: int, stride: int, target_fps: float, pad: Padding = "repeat_last"
) -> np.ndarray:
    times = start + np.arange(num_frames) * (stride / target_fps)
    return frames_at_times(timestamps, times, pad)


def video_duration(timestamps: np.ndarray) -> float:
    """Duration from the first frame's start to the last frame's end (one median period)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    period = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.0
    return float(timestamps[-1] - timestamps[0] + period)


def random_clip_at_fps(
    timestamps: np.ndarray,
    num_frames: int,
    stride: int,
    target_fps: float,
    *,
    rng: np.random.Generator,
    pad: Padding = "repeat_last",
) -> np.ndarray:
    """A training clip resampled to `target_fps` at a uniformly random start time."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    slack = video_duration(timestamps) - clip_duration(num_frames, stride, target_fps)
    start = timestamps[0] + (rng.uniform(0.0, slack) if slack > 0 else 0.0)
    return clip_at_time(timestamps, start, num_frames, stride, target_fps, pad)


def uniform_clips_at_fps(
    timestamps: np.ndarray,
    num_frames: int,
    stride: int,
    target_fps: float,
    num_clips: int,
    *,
    pad: Padding = "repeat_last",
) -> np.ndarray:
    """Test views resampled to `target_fps`, placed in time as mmaction2 places them in frames:
    from the first to the last possible start (the middle one for a single view)."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    slack = max(video_duration(timestamps) - clip_duration(num_frames, stride, target_fps), 0.0)
    if num_clips == 1:
        starts = timestamps[0] + np.array([slack / 2.0])
    else:
        starts = timestamps[0] + slack * np.arange(num_clips) / (num_clips - 1)
    return np.stack([clip_at_time(timestamps, s, num_frames, stride, target_fps, pad) for s in starts])

