"""The library's one resize of frames and clips, and its one short-side size formula.

The reader resizes at decode (to cache frames small) and the video transforms resize test and
training clips, both with these functions, so the two paths give the same pixels. Torch (and
OpenCV for mmaction2's kernel) only: a module that resizes need not load the video decoders.

Each code base's test loader resizes its own way, and a protocol's `Geometry` names the loader
whose resize (kernel, rounding of the long side, crop offsets) its views copy:

  * "slowfast": SlowFast's and TimeSformer's torch resize (`short_side_scale_jitter`): long side
    floored, bilinear on floats. Our frames are rounded back to uint8 after it, where the
    originals keep floats until normalisation: within half a grey level of theirs, and what
    lets a cache and a batch job hold frames as uint8.
  * "slowfast_decoder": SlowFast with `DECODING_BACKEND: torchvision` (MViTv2's configs), whose
    decoder resizes: swscale's area filter straight from the decoded pixel format to RGB, long
    side rounded, BT.601 whatever the stream's colour tags. That resize needs the decoder's own
    frame, so only the reader makes it (`VideoReader(short_side=..., geometry="slowfast_decoder")`,
    served by PyAV); frames already decoded can only be resized to the size they have.
  * "mmaction2": mmcv's `imresize`, i.e. OpenCV's fixed-point bilinear on uint8, one call per
    frame, long side rounded (Video Swin, mmaction2 0.x).
  * "dmvr": DMVR's `resize_smallest` (ViViT): long side by integer division, TensorFlow's float
    bilinear on the 0..255 values, truncated by the cast back to uint8.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

# Frames per resize step: bounds the float copies (a 720p frame is 11 MB in float); 16 frames
# are 48 planes, a whole number of `_PLANE_GROUP`s, so they need no padding.
_RESIZE_CHUNK = 16
_PLANE_GROUP = 16


Geometry = Literal["slowfast", "slowfast_decoder", "mmaction2", "dmvr"]
GEOMETRIES: tuple[str, ...] = get_args(Geometry)


def check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; expected one of {', '.join(map(repr, GEOMETRIES))}")


def resizes_in_decoder(geometry: str) -> bool:
    """Whether the geometry's test resize happens inside the decoder, from the native frame."""
    return geometry == "slowfast_decoder"


def short_side_size(height: int, width: int, short_side: int, geometry: Geometry = "slowfast") -> tuple[int, int]:
    """(height, width) with the short side at `short_side`, the long side to each reference's arithmetic.

    * "slowfast": `floor(long / short * size)` in floats (`short_side_scale_jitter`).
    * "slowfast_decoder": torchvision's decoder (`setFormatDimensions`): `round(long * size / short)`,
      half up; a square frame takes the portrait branch.
    * "mmaction2": mmcv's `rescale_size` for `Resize(scale=(-1, size))`: both sides times
      size / short, plus 0.5, truncated.
    * "dmvr": `resize_smallest`: `max(size, long * size // short)` in integers.
    340x256 to 224 is 297 wide by "slowfast", 298 by "mmaction2".
    """
    check_geometry(geometry)
    if geometry == "mmaction2":
        scale = short_side / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)
    if geometry == "slowfast_decoder":
        # round(p / q) half up, exactly: (2p + q) // 2q. The double division the C++ rounds cannot
        # land on the other side of a half, as p / q lies at least 1 / 2q away from one.
        if width > height:
            return short_side, (2 * width * short_side + height) // (2 * height)
        return (2 * height * short_side + width) // (2 * width), short_side
    if geometry == "dmvr":
        return max(short_side, height * short_side // width), max(short_side, width * short_side // height)
    if width < height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


def resize(x: torch.Tensor, size: int | tuple[int, int], antialias: bool = False,
           geometry: Geometry = "slowfast") -> torch.Tensor:
    """Resize of the last two dims to `size` (h, w) with the geometry's kernel.

    The one resize of the library: the reader's `short_side` and the transforms' scales both
    call it, so frames resized at decode (to cache them small) are the pixels evaluation would
    have made from full-size frames.

    * "slowfast": torch's bilinear (`align_corners=False`), without antialiasing by default as
      SlowFast resizes at test time; uint8 goes through float in [0, 1] and is rounded back
      (the originals keep the floats: see the module's docstring). Float input stays float.
    * "mmaction2": `cv2.resize(..., INTER_LINEAR)` on uint8, as mmcv's `imresize` calls it.
    * "dmvr": TensorFlow's bilinear (`tf.image.resize`, half-pixel centres) in float32 on the
      0..255 values, truncated to uint8 as DMVR's `tf.cast` does.
    * "slowfast_decoder": only the decoder resizes (`VideoReader`); here frames must already
      have the size.
    """
    check_geometry(geometry)
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    *lead, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x
    if geometry == "slowfast_decoder":
        raise ValueError(
            f"the slowfast_decoder geometry resizes inside the decoder: read the frames with "
            f"VideoReader(short_side=..., geometry='slowfast_decoder') instead of resizing {h}x{w} "
            f"frames to {out_h}x{out_w}"
        )
    if geometry in ("mmaction2", "dmvr"):
        if x.dtype != torch.uint8:
            raise ValueError(f"the {geometry} resize takes uint8 frames, as its loader does, not {x.dtype}")
        kernel = _opencv_bilinear if geometry == "mmaction2" else _tensorflow_bilinear_truncated
        return kernel(x.reshape(-1, h, w), out_h, out_w).reshape(*lead, out_h, out_w)
    return _torch_bilinear(x, out_h, out_w, antialias)


def _torch_bilinear(x: torch.Tensor, out_h: int, out_w: int, antialias: bool) -> torch.Tensor:
    *lead, h, w = x.shape
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


def _opencv_bilinear(images: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """(N, H, W) planes or (N, H, W, C) frames, uint8 -> the same at (out_h, out_w): OpenCV's
    INTER_LINEAR, its fixed-point uint8 path, one `cv2.resize` per image.

    mmcv's `imresize` calls it once per (H, W, 3) frame, which is what `resize_short_side` hands
    this. `resize` hands it single planes (its clips may be laid out (C, T, H, W)), and a plane
    alone gives its channel of the frame's pixels: OpenCV's kernels for 1, 3 and 4 channels share
    their integer arithmetic (modules/imgproc/src/resize.cpp: the fixed-point `HResizeLinear` and
    `VResizeLinear`, and at an exact 2x downscale, where INTER_LINEAR turns into the fast area
    path, `ResizeAreaFastVec_SIMD_8u`'s `(a + b + c + d + 2) >> 2` for cn 1, 3 and 4). Planes
    stacked as the channels of one image would not: past 4 channels the 2x path falls back to
    `saturate_cast(sum * 0.25f)`, which rounds halves to even (448x800 -> 224 is off by 1).
    tests/test_view_pixels.py checks both callers against per-frame calls, 2x sizes included.
    """
    import cv2

    source = images.cpu().contiguous().numpy()
    out = np.empty((source.shape[0], out_h, out_w, *source.shape[3:]), dtype=np.uint8)
    for image, resized in zip(source, out):
        cv2.resize(image, (out_w, out_h), dst=resized, interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).to(images.device)


def _tensorflow_source_positions(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TensorFlow's bilinear sample positions with half-pixel centres, in float32 as its kernel
    computes them: (lower index, upper index, weight of the upper)."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.int64)
    return torch.from_numpy(lower), torch.from_numpy(upper), torch.from_numpy(source - floor)


def _tensorflow_bilinear_truncated(planes: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, out_h, out_w): `tf.image.resize` bilinear in float32, then `tf.cast`.

    Interpolated as TensorFlow's `compute_lerp` does, one float32 operation at a time
    (top = tl + (tr - tl) * dx, and so on), so a truncation never sees other last bits. The
    horizontal step of an input row is the same whichever output row reads it, so it is made
    once per input row and the output rows then pick theirs.
    """
    top, bottom, dy = (t.to(planes.device) for t in _tensorflow_source_positions(planes.shape[-2], out_h))
    left, right, dx = (t.to(planes.device) for t in _tensorflow_source_positions(planes.shape[-1], out_w))
    dy = dy[:, None]
    out = torch.empty((planes.shape[0], out_h, out_w), dtype=torch.uint8, device=planes.device)
    for start in range(0, planes.shape[0], _RESIZE_CHUNK):
        part = planes[start : start + _RESIZE_CHUNK].float()
        at_left, at_right = part.index_select(-1, left), part.index_select(-1, right)
        rows = at_left.add_(at_right.sub_(at_left).mul_(dx))  # every input row, lerped across
        top_row, bottom_row = rows.index_select(-2, top), rows.index_select(-2, bottom)
        out[start : start + _RESIZE_CHUNK] = top_row.add_(bottom_row.sub_(top_row).mul_(dy)).to(torch.uint8)
    return out


def resize_short_side(frames: torch.Tensor, short_side: int, geometry: Geometry = "slowfast") -> torch.Tensor:
    """Resize uint8 (T, H, W, C) frames so the short side is `short_side`, by `resize`, with the
    long side and the kernel of `geometry`.

    A few frames at a time, so the float copies stay small whatever the batch.
    """
    height, width = frames.shape[1:3]
    size = short_side_size(height, width, short_side, geometry)
    if size == (height, width):
        return frames
    if geometry == "mmaction2" and frames.dtype == torch.uint8 and frames.shape[3] == 3:
        return _opencv_bilinear(frames, *size)  # already (H, W, 3) frames: one call each, as mmcv's
    out = torch.empty((frames.shape[0], *size, frames.shape[3]), dtype=frames.dtype, device=frames.device)
    for start in range(0, frames.shape[0], _RESIZE_CHUNK):
        part = rearrange(frames[start : start + _RESIZE_CHUNK], "t h w c -> t c h w")
        out[start : start + _RESIZE_CHUNK] = rearrange(resize(part, size, geometry=geometry), "t c h w -> t h w c")
    return out
