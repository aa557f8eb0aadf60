"""Video transforms on tensors: spatial crops and scales, flips, normalisation, RandAugment that is
the same for every frame of a clip, and mixup/cutmix on batches.

Layout convention of the library:
  * the reader decodes frames as uint8 (T, H, W, C);
  * a model takes float (C, T, H, W) per clip and (B, C, T, H, W) per batch.
`frames_to_clip` converts the first into the second. Every spatial transform acts on the last two
dimensions and accepts any leading dimensions, uint8 or float, so one call transforms a clip, a
batch of clips or a stack of views with one set of random parameters. Randomness comes from an
explicit `np.random.Generator`, so a dataset can make clips reproducible per (seed, epoch, index).

Geometry follows SlowFast/pytorchvideo by default: bilinear resizing without antialiasing
(`align_corners=False`), short sides scaled with the long side floored, centre offsets rounded up.
Test views can instead be sized, resized and placed as another loader does (`geometry`, see
`io.resize`: mmaction2's OpenCV resize and offsets rounded down, DMVR's truncated resize, SlowFast's
decoder-side resize), for the models that were tested with it. Training scales keep SlowFast's.
The resize itself is `io.resize.resize`, the one the reader uses when it resizes at decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from einops import rearrange

from spatiotemporal.io.resize import Geometry, check_geometry, resize, resizes_in_decoder, short_side_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SlowFast / pytorchvideo / TimeSformer defaults for Kinetics.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---- layout and value range ------------------------------------------------------------------


def frames_to_clip(frames: torch.Tensor) -> torch.Tensor:
    """Decoded frames (T, H, W, C) -> model layout (C, T, H, W); batches (B, T, H, W, C) too.

    The dtype is kept: transforms run on uint8 (cheaper) and `to_float` comes last.
    """
    if frames.ndim == 4:
        return rearrange(frames, "t h w c -> c t h w")
    if frames.ndim == 5:
        return rearrange(frames, "b t h w c -> b c t h w")
    raise ValueError(f"expected frames shaped (T, H, W, C) or (B, T, H, W, C), got {tuple(frames.shape)}")


def clip_to_frames(clip: torch.Tensor) -> torch.Tensor:
    """The inverse of `frames_to_clip`, e.g. to write or plot a transformed clip."""
    if clip.ndim == 4:
        return rearrange(clip, "c t h w -> t h w c")
    if clip.ndim == 5:
        return rearrange(clip, "b c t h w -> b t h w c")
    raise ValueError(f"expected a clip shaped (C, T, H, W) or (B, C, T, H, W), got {tuple(clip.shape)}")


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int = -4
) -> torch.Tensor:
    """(x - mean) / std per channel. Channels sit at dim -4 in both (C,T,H,W) and (B,C,T,H,W)."""
    x = to_float(x)
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean_t) / std_t


# ---- resizing --------------------------------------------------------------------------------
# `resize` and `short_side_size` live in io.resize, which the reader also calls when a dataset
# caches frames small: one implementation, so cached and uncached clips are the same pixels.


def short_side_scale(x: torch.Tensor, size: int, antialias: bool = False, geometry: Geometry = "slowfast") -> torch.Tensor:
    """Short side to `size`, long side and kernel as the geometry's loader resizes (`io.resize`)."""
    return resize(x, short_side_size(x.shape[-2], x.shape[-1], size, geometry), antialias=antialias, geometry=geometry)


def random_short_side_scale(
    x: torch.Tensor, min_size: int, max_size: int, rng: np.random.Generator, antialias: bool = False
) -> torch.Tensor:
    """Scale the short side to an integer drawn uniformly from [min_size, max_size]."""
    return short_side_scale(x, int(rng.integers(min_size, max_size + 1)), antialias=antialias)


# ---- crops -----------------------------------------------------------------------------------


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    if top < 0 or left < 0 or top + height > x.shape[-2] or left + width > x.shape[-1]:
        raise ValueError(
            f"crop ({top}, {left}, {height}, {width}) does not fit in a {x.shape[-2]}x{x.shape[-1]} frame"
        )
    return x[..., top : top + height, left : left + width]


def uniform_crop(x: torch.Tensor, size: int, spatial_idx: int, geometry: Geometry = "slowfast") -> torch.Tensor:
    """One of three crops along the long side: 0 = left/top, 1 = centre, 2 = right/bottom.

    Portrait frames are cut top/centre/bottom and landscape ones left/centre/right.
    "slowfast" (SlowFast's `uniform_crop`) rounds centre offsets up and puts the last crop at the
    far edge. "mmaction2" (its `ThreeCrop` and `CenterCrop`) rounds them down, and steps twice
    that centre offset for the last crop, which stops one pixel short of the edge when the slack
    is odd.
    """
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    check_geometry(geometry)
    height, width = x.shape[-2:]
    if geometry == "mmaction2":
        top, left = (height - size) // 2, (width - size) // 2
        last_top, last_left = 2 * top, 2 * left
    else:  # SlowFast's placement, which the slowfast_decoder and dmvr protocols' crops also match
        top, left = int(math.ceil((height - size) / 2)), int(math.ceil((width - size) / 2))
        last_top, last_left = height - size, width - size
    if height > width:
        top = {0: 0, 1: top, 2: last_top}[spatial_idx]
    else:
        left = {0: 0, 1: left, 2: last_left}[spatial_idx]
    return crop(x, top, left, size, size)


def center_crop(x: torch.Tensor, size: int, geometry: Geometry = "slowfast") -> torch.Tensor:
    return uniform_crop(x, size, 1, geometry)


def three_crop(x: torch.Tensor, size: int, geometry: Geometry = "slowfast") -> torch.Tensor:
    """The three test crops (left/top, centre, right/bottom) on a new leading dim: (3, ..., size, size)."""
    return torch.stack([uniform_crop(x, size, i, geometry) for i in range(3)])


def random_crop(x: torch.Tensor, size: Size, rng: np.random.Generator) -> torch.Tensor:
    out_h, out_w = _pair(size)
    height, width = x.shape[-2:]
    top = int(rng.integers(0, height - out_h + 1))
    left = int(rng.integers(0, width - out_w + 1))
    return crop(x, top, left, out_h, out_w)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop: area fraction in `scale`, aspect in `ratio`
    (log-uniform), ten tries, then the largest centred crop within `ratio` (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    x: torch.Tensor,
    size: Size,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    antialias: bool = False,
) -> torch.Tensor:
    top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], scale, ratio, rng)
    return resize(crop(x, top, left, h, w), size, antialias=antialias)


# ---- flips -----------------------------------------------------------------------------------


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def random_hflip(x: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    return hflip(x) if rng.random() < p else x


# ---- RandAugment, one draw per clip ----------------------------------------------------------

# name -> (largest magnitude, whether the sign is random); magnitudes scale linearly with the
# bin as in torchvision's RandAugment (translations are a fraction of the frame size).
_RAND_AUGMENT_OPS: dict[str, tuple[float, bool]] = {
    "Identity": (0.0, False),
    "ShearX": (0.3, True),
    "ShearY": (0.3, True),
    "TranslateX": (150.0 / 331.0, True),
    "TranslateY": (150.0 / 331.0, True),
    "Rotate": (30.0, True),
    "Brightness": (0.9, True),
    "Color": (0.9, True),
    "Contrast": (0.9, True),
    "Sharpness": (0.9, True),
    "Posterize": (4.0, False),
    "Solarize": (255.0, False),
    "AutoContrast": (0.0, False),
    "Equalize": (0.0, False),
}


@dataclass(frozen=True)
class AugmentOp:
    name: str
    magnitude: float


def sample_rand_augment(
    rng: np.random.Generator, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31
) -> list[AugmentOp]:
    """Draw RandAugment's ops and signed magnitudes once; `apply_rand_augment` uses them for
    every frame, so motion between frames is not disturbed by the augmentation."""
    if not 0 <= magnitude < num_magnitude_bins:
        raise ValueError(f"magnitude must be in [0, {num_magnitude_bins}), got {magnitude}")
    names = list(_RAND_AUGMENT_OPS)
    fraction = magnitude / (num_magnitude_bins - 1)
    ops = []
    for _ in range(num_ops):
        name = names[int(rng.integers(0, len(names)))]
        top, signed = _RAND_AUGMENT_OPS[name]
        if name == "Posterize":  # bits: 8 down to 4
            value = float(8 - round(fraction * top))
        elif name == "Solarize":  # threshold: 255 down to 0
            value = top * (1.0 - fraction)
        else:
            value = top * fraction
            if signed and rng.random() < 0.5:
                value = -value
        ops.append(AugmentOp(name, value))
    return ops


def _apply_op(images: torch.Tensor, op: AugmentOp) -> torch.Tensor:
    """One op on uint8 (..., C, H, W) images, with torchvision's geometry and fill 0."""
    # Imported here, not at module level: torchvision's import pulls in all its models (~1.3 s),
    # which every inference actor and `spatiotemporal infer` would pay for augmentations they never run.
    import torchvision.transforms.v2.functional as TF

    m = op.magnitude
    height, width = images.shape[-2:]
    if op.name == "Identity":
        return images
    if op.name == "ShearX":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(m)), 0.0], center=[0, 0])
    if op.name == "ShearY":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(m))], center=[0, 0])
    if op.name == "TranslateX":
        return TF.affine(images, angle=0.0, translate=[int(m * width), 0], scale=1.0, shear=[0.0, 0.0])
    if op.name == "TranslateY":
        return TF.affine(images, angle=0.0, translate=[0, int(m * height)], scale=1.0, shear=[0.0, 0.0])
    if op.name == "Rotate":
        return TF.rotate(images, m)
    if op.name == "Brightness":
        return TF.adjust_brightness(images, 1.0 + m)
    if op.name == "Color":
        return TF.adjust_saturation(images, 1.0 + m)
    if op.name == "Contrast":
        return TF.adjust_contrast(images, 1.0 + m)
    if op.name == "Sharpness":
        return TF.adjust_sharpness(images, 1.0 + m)
    if op.name == "Posterize":
        return TF.posterize(images, int(m))
    if op.name == "Solarize":
        return TF.solarize(images, m)
    if op.name == "AutoContrast":
        return TF.autocontrast(images)
    if op.name == "Equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown RandAugment op {op.name!r}")


def apply_rand_augment(clip: torch.Tensor, ops: Sequence[AugmentOp]) -> torch.Tensor:
    """Apply drawn ops to a uint8 clip (C, T, H, W) or batch (B, C, T, H, W), every frame alike."""
    if clip.dtype != torch.uint8:
        raise TypeError(f"RandAugment works on uint8 clips (before normalisation), got {clip.dtype}")
    images = rearrange(clip, "... c t h w -> ... t c h w")
    for op in ops:
        images = _apply_op(images, op)
    return rearrange(images, "... t c h w -> ... c t h w").contiguous()


def rand_augment(
    clip: torch.Tensor, rng: np.random.Generator, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31
) -> torch.Tensor:
    return apply_rand_augment(clip, sample_rand_augment(rng, num_ops, magnitude, num_magnitude_bins))


# ---- mixup / cutmix on batches ---------------------------------------------------------------


def one_hot_smoothed(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    off = smoothing / num_classes
    target = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return target.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1 - lam of the frame, centred uniformly
    and clipped to the frame (so the true area can be smaller; the caller corrects lam)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return top, bottom, left, right


def mixup(
    clips: torch.Tensor, labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each clip with its partner in the reversed batch; soft targets blend alike."""
    mixed = clips * lam + clips.flip(0) * (1.0 - lam)
    return mixed, mix_targets(labels, num_classes, lam, smoothing)


def cutmix(
    clips: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    lam: float,
    rng: np.random.Generator,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a box from the reversed batch into every frame of each clip (the same box through
    time). Returns the clips, the targets and lam corrected to the pasted area."""
    height, width = clips.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, rng)
    mixed = clips.clone()
    mixed[..., top:bottom, left:right] = clips.flip(0)[..., top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return mixed, mix_targets(labels, num_classes, lam, smoothing), lam


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    first = one_hot_smoothed(labels, num_classes, smoothing)
    second = one_hot_smoothed(labels.flip(0), num_classes, smoothing)
    return first * lam + second * (1.0 - lam)


@dataclass(frozen=True)
class MixupConfig:
    """timm/SlowFast defaults: mixup alpha 0.8, cutmix alpha 1.0, half the batches each."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    prob: float = 1.0
    label_smoothing: float = 0.1


def mixup_cutmix(
    clips: torch.Tensor, labels: torch.Tensor, num_classes: int, rng: np.random.Generator, config: MixupConfig = MixupConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-level mixup or cutmix (B, C, T, H, W), chosen per batch; returns soft targets (B, K)."""
    if clips.shape[0] != labels.shape[0]:
        raise ValueError(f"{clips.shape[0]} clips but {labels.shape[0]} labels")
    use_mixup = config.mixup_alpha > 0
    use_cutmix = config.cutmix_alpha > 0
    if (not use_mixup and not use_cutmix) or rng.random() >= config.prob:
        return clips, one_hot_smoothed(labels, num_classes, config.label_smoothing)
    if use_cutmix and (not use_mixup or rng.random() < config.switch_prob):
        lam = float(rng.beta(config.cutmix_alpha, config.cutmix_alpha))
        mixed, targets, _ = cutmix(clips, labels, num_classes, lam, rng, config.label_smoothing)
        return mixed, targets
    lam = float(rng.beta(config.mixup_alpha, config.mixup_alpha))
    return mixup(clips, labels, num_classes, lam, config.label_smoothing)


# ---- the train and test recipes --------------------------------------------------------------


@dataclass(frozen=True)
class ClipTransform:
    """A model's preprocessing, as data. Train: random short-side scale (or random resized crop),
    random crop, flip, optional RandAugment. Test: short side to `test_short_side`, then
    `num_crops` crops (1 = centre, 3 = three along the long side), sized and placed by the test
    protocol's `geometry`. Both end normalised, float."""

    crop_size: int = 224
    train_short_side: tuple[int, int] = (256, 320)
    test_short_side: int | None = None  # None: the crop size, as SlowFast's 3-crop test does
    random_resized_crop: bool = False
    resized_crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    rand_augment: tuple[int, int] | None = None  # (num_ops, magnitude)
    num_crops: int = 3
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    geometry: Geometry = "slowfast"

    def train(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 (T, H, W, C) -> float (C, T, crop, crop)."""
        clip = frames_to_clip(frames)
        if self.random_resized_crop:
            clip = random_resized_crop(clip, self.crop_size, rng, scale=self.resized_crop_scale)
        else:
            clip = random_short_side_scale(clip, *self.train_short_side, rng)
            clip = random_crop(clip, self.crop_size, rng)
        if self.hflip:
            clip = random_hflip(clip, rng)
        if self.rand_augment is not None:
            clip = rand_augment(clip, rng, *self.rand_augment)
        return normalize(clip, self.mean, self.std)

    def test(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, C) -> float (num_crops, C, T, crop, crop)."""
        return normalize(self.test_crops(frames), self.mean, self.std)

    def test_views(self, frames: torch.Tensor, clip_len: int) -> torch.Tensor:
        """uint8 frames of consecutive test clips, `clip_len` each (T*clip_len, H, W, C) -> uint8
        (T*num_crops, C, clip_len, crop, crop), clip-major. One clip is resized at a time, so only
        one clip's frames are ever resized at full resolution."""
        return torch.cat([self.test_crops(clip) for clip in frames.split(clip_len)])

    @property
    def test_side(self) -> int:
        """The short side test frames are resized to before cropping."""
        return self.test_short_side or self.crop_size

    def test_reader_resize(self, decode_short_side: int | None = None) -> dict:
        """The `VideoReader` resize options (`short_side`, `geometry`) for frames these test views
        are cut from: at the test short side where the geometry resizes inside the decoder
        ("slowfast_decoder", SlowFast's torchvision loader), else at `decode_short_side` (a cache's
        size). That must be None or the test short side: any other would resize twice (to it,
        then to the test side), and two bilinear passes rounded to uint8 between are not one."""
        if decode_short_side not in (None, self.test_side):
            raise ValueError(
                f"decode_short_side={decode_short_side} would resize test frames twice (then to "
                f"{self.test_side}) and change the views; use {self.test_side} or None"
            )
        short_side = self.test_side if resizes_in_decoder(self.geometry) else decode_short_side
        return {"short_side": short_side, "geometry": self.geometry}

    def test_crops(self, frames: torch.Tensor) -> torch.Tensor:
        """The test views before normalisation: uint8 (T, H, W, C) -> uint8 (num_crops, C, T, crop, crop),
        what inference ships between processes (a quarter of float's bytes)."""
        clip = short_side_scale(frames_to_clip(frames), self.test_side, geometry=self.geometry)
        if self.num_crops == 1:
            return center_crop(clip, self.crop_size, self.geometry).unsqueeze(0)
        if self.num_crops == 3:
            return three_crop(clip, self.crop_size, self.geometry)
        raise ValueError(f"num_crops must be 1 or 3, got {self.num_crops}")
