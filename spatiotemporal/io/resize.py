"""The library's one resize of frames and clips, and its one short-side size formula.

The reader resizes at decode (to cache frames small) and the video transforms resize test and
training clips, both with these functions, so the two paths give the same pixels. Torch only: a
module that resizes need not load the video decoders.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

# Frames per resize step: bounds the float copies (a 720p frame is 11 MB in float); 16 frames
# are 48 planes, a whole number of `_PLANE_GROUP`s, so they need no padding.
_RESIZE_CHUNK = 16
_PLANE_GROUP = 16


# How a code base sizes and places its test views: "slowfast" (SlowFast, pytorchvideo, TimeSformer,
# MViT) or "mmaction2" (mmcv's resize and mmaction2's crops, which Video Swin was tested with).
Geometry = Literal["slowfast", "mmaction2"]


def short_side_size(height: int, width: int, short_side: int, geometry: Geometry = "slowfast") -> tuple[int, int]:
    """(height, width) with the short side at `short_side`.

    The one formula of the library, to the float operation of each reference, so test-time sizes
    match exactly: "slowfast" floors the long side (long / short first, then times the size);
    "mmaction2" rounds it, as mmcv's `rescale_size` does for `Resize(scale=(-1, size))` (both
    sides times size / short, plus 0.5, truncated). 340x256 to 224 is 297 wide in one, 298 in the other.
    """
    if geometry == "mmaction2":
        scale = short_side / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if geometry != "slowfast":
        raise ValueError(f"unknown geometry {geometry!r}; expected 'slowfast' or 'mmaction2'")
    if width < height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


def resize(x: torch.Tensor, size: int | tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of the last two dims to `size` (h, w); uint8 comes back rounded uint8.

    The one resize of the library: the reader's `short_side` and the transforms' scales both
    call it, so frames resized at decode (to cache them small) are the pixels evaluation would
    have made from full-size frames. Without antialiasing by default, as SlowFast and mmaction2
    resize at test time. uint8 goes through float in [0, 1] and is rounded back, as their
    float pipelines do.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    *lead, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x
    # All leading dims become channels of one image, so a whole clip is resized in one call.
    flat = x.reshape(1, -1, h, w)
    planes = flat.shape[1]
    # torch's CPU kernel picks its code path by shape: for small outputs (h + w <= 128), and for
    # fewer planes than a SIMD group (exactly 3 on one thread), a separable kernel that runs across
    # planes in SIMD-wide groups, whose last bits differ for planes in a partial group. There the
    # planes are padded to a multiple of 16 (AVX-512 holds 16 floats), so a pixel never depends on
    # how the caller grouped its frames (the reader: a few frames at a time; the transforms: one
    # clip at a time). Elsewhere each plane is resized on its own, and padding would only cost.
    padding = -planes % _PLANE_GROUP if planes < _PLANE_GROUP or out_h + out_w <= 128 else 0
    if x.dtype == torch.uint8 or padding:
        # One float copy, padded in place: the uint8 -> float conversion needs a copy anyway.
        padded = torch.zeros((1, planes + padding, h, w), dtype=torch.float32 if x.dtype == torch.uint8 else x.dtype,
                             device=x.device)
        padded[:, :planes] = flat
        if x.dtype == torch.uint8:
            padded[:, :planes].div_(255.0)
        flat = padded
    out = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias)
    out = out[:, :planes].reshape(*lead, out_h, out_w)
    if x.dtype == torch.uint8:
        return out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_short_side(frames: torch.Tensor, short_side: int, geometry: Geometry = "slowfast") -> torch.Tensor:
    """Resize uint8 (T, H, W, C) frames so the short side is `short_side`, by `resize`, with the
    long side rounded as `geometry` rounds it.

    A few frames at a time, so the float copies stay small whatever the batch.
    """
    height, width = frames.shape[1:3]
    size = short_side_size(height, width, short_side, geometry)
    if size == (height, width):
        return frames
    out = torch.empty((frames.shape[0], *size, frames.shape[3]), dtype=frames.dtype, device=frames.device)
    for start in range(0, frames.shape[0], _RESIZE_CHUNK):
        part = rearrange(frames[start : start + _RESIZE_CHUNK], "t h w c -> t c h w")
        out[start : start + _RESIZE_CHUNK] = rearrange(resize(part, size), "t c h w -> t h w c")
    return out
