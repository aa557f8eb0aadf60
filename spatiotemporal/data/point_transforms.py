"""Point-cloud transforms, as Pointcept defines them, in pure PyTorch.

Every transform takes and returns a dict of tensors (`coord`, `color` 0..255, `normal`,
`segment`, `instance`, ...) and runs unchanged on CPU or CUDA tensors: random numbers are drawn
on the data's device, from the optional `generator` a transform was given (seeded generators
make a pipeline reproducible). `Compose` turns numpy inputs into tensors first.

The entries named in `PER_POINT_KEYS` are per-point: they are indexed together whenever points
are dropped or reordered. Everything else (a scene name, GridSample's `inverse` into the full
cloud) passes through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

PER_POINT_KEYS = ("coord", "color", "normal", "segment", "instance", "nyu40", "label", "grid_coord", "index")

Cloud = dict[str, torch.Tensor]


def to_tensors(cloud: dict, device: torch.device | str | None = None) -> Cloud:
    """numpy arrays -> tensors (other values are kept as they are)."""
    out = {}
    for key, value in cloud.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor) and device is not None:
            value = value.to(device)
        out[key] = value
    return out


def index_points(cloud: Cloud, index: torch.Tensor) -> Cloud:
    """Keep the points at `index` in every per-point entry."""
    n = len(cloud["coord"])
    # index_select, not value[index]: the same gather, markedly faster on CPU.
    return {
        key: value.index_select(0, index)
        if key in PER_POINT_KEYS and isinstance(value, torch.Tensor) and len(value) == n
        else value
        for key, value in cloud.items()
    }


def _uniform(low, high, shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    draw = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * draw).to(like.device)


def _normal(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


def _chance(p: float, like: torch.Tensor, generator: torch.Generator | None) -> bool:
    return p >= 1.0 or bool(_uniform(0.0, 1.0, (), like, generator) < p)


class Compose:
    """Apply transforms in order. After a transform that returns fragments (GridSample in test
    mode), the rest apply to every fragment, and a list comes out."""

    def __init__(self, transforms: Sequence[Callable[[Cloud], Cloud]], device: str | None = None):
        self.transforms = list(transforms)
        self.device = device

    def __call__(self, cloud: dict) -> Cloud | list[Cloud]:
        out: Cloud | list[Cloud] = to_tensors(cloud, self.device)
        for transform in self.transforms:
            out = [transform(part) for part in out] if isinstance(out, list) else transform(out)
            if isinstance(out, list) and out and isinstance(out[0], list):
                out = [fragment for parts in out for fragment in parts]
        return out


class CenterShift:
    """Move the bounding box's xy-centre to the origin and, with `apply_z`, its floor to z = 0."""

    def __init__(self, apply_z: bool = True):
        self.apply_z = apply_z

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        lo, hi = coord.min(0).values, coord.max(0).values
        shift = (lo + hi) / 2
        shift[2] = lo[2] if self.apply_z else 0.0
        return {**cloud, "coord": coord - shift}


class RandomRotate:
    """With probability p, rotate about `axis` by an angle drawn from `angle` (in units of pi,
    as Pointcept's configs give it), through `center` or, when None, the bounding-box centre."""

    def __init__(
        self,
        angle: tuple[float, float] = (-1.0, 1.0),
        axis: str = "z",
        center: tuple[float, float, float] | None = None,
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ):
        if axis not in ("x", "y", "z"):
            raise ValueError(f"RandomRotate axis is 'x', 'y' or 'z', not {axis!r}")
        self.angle, self.axis, self.center, self.p, self.generator = angle, axis, center, p, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        if not _chance(self.p, coord, self.generator):
            return cloud
        theta = _uniform(self.angle[0], self.angle[1], (), coord, self.generator) * math.pi
        c, s = torch.cos(theta), torch.sin(theta)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        rows = {
            "x": ((one, zero, zero), (zero, c, -s), (zero, s, c)),
            "y": ((c, zero, s), (zero, one, zero), (-s, zero, c)),
            "z": ((c, -s, zero), (s, c, zero), (zero, zero, one)),
        }[self.axis]
        rotation = torch.stack([torch.stack(row) for row in rows]).to(coord.dtype)
        if self.center is None:
            center = (coord.min(0).values + coord.max(0).values) / 2
        else:
            center = torch.tensor(self.center, dtype=coord.dtype, device=coord.device)
        out = {**cloud, "coord": (coord - center) @ rotation.T + center}
        if "normal" in cloud:
            out["normal"] = cloud["normal"] @ rotation.T.to(cloud["normal"].dtype)
        return out


class RandomScale:
    def __init__(
        self,
        scale: tuple[float, float] = (0.9, 1.1),
        anisotropic: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.scale, self.anisotropic, self.generator = scale, anisotropic, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        shape = (3,) if self.anisotropic else (1,)
        factor = _uniform(self.scale[0], self.scale[1], shape, coord, self.generator)
        return {**cloud, "coord": coord * factor.to(coord.dtype)}


class RandomFlip:
    """Mirror x and y, each with probability p (z stays up)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        out = dict(cloud)
        for axis in (0, 1):
            if _chance(self.p, cloud["coord"], self.generator):
                for key in ("coord", "normal"):
                    if key in out:
                        flipped = out[key].clone()
                        flipped[:, axis] = -flipped[:, axis]
                        out[key] = flipped
        return out


class RandomJitter:
    """Add clipped Gaussian noise to every coordinate."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, generator: torch.Generator | None = None):
        self.sigma, self.clip, self.generator = sigma, clip, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        noise = (self.sigma * _normal(coord.shape, coord, self.generator)).clamp(-self.clip, self.clip)
        return {**cloud, "coord": coord + noise.to(coord.dtype)}


class ElasticDistortion:
    """Smooth random warps (Pointcept's defaults: granularity 0.2 m / magnitude 0.4, then
    0.8 / 1.6). Gaussian noise on a coarse grid is box-blurred twice along each axis and
    trilinearly interpolated at every point."""

    def __init__(
        self,
        params: Sequence[tuple[float, float]] = ((0.2, 0.4), (0.8, 1.6)),
        p: float = 0.95,
        generator: torch.Generator | None = None,
    ):
        self.params, self.p, self.generator = list(params), p, generator

    @staticmethod
    def grid_shape(coord: torch.Tensor, granularity: float) -> tuple[int, int, int]:
        extent = coord.max(0).values - coord.min(0).values
        return tuple((torch.div(extent, granularity, rounding_mode="floor").long() + 3).tolist())

    def distort(
        self, coord: torch.Tensor, granularity: float, magnitude: float, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`noise` (X, Y, Z, 3) on the grid of `grid_shape` replaces the random draw (tests)."""
        lo = coord.min(0).values
        dims = self.grid_shape(coord, granularity)
        if noise is None:
            noise = _normal((*dims, 3), coord, self.generator)
        noise = rearrange(noise.to(coord.device, torch.float32), "x y z c -> 1 c x y z")
        box = torch.full((3, 1, 3, 1, 1), 1.0 / 3.0, device=coord.device)
        for _ in range(2):
            for axis in range(3):
                kernel = box.movedim(2, 2 + axis)
                padding = [0, 0, 0]
                padding[axis] = 1
                noise = F.conv3d(noise, kernel, padding=padding, groups=3)
        # Grid node i sits at lo - granularity + i * granularity, as in Pointcept's linspace.
        node = (coord - (lo - granularity)) / granularity
        extent = torch.tensor(dims, device=coord.device, dtype=coord.dtype) - 1
        where = 2.0 * node / extent - 1.0
        # grid_sample's last grid dimension is ordered (W, H, D) = (Z, Y, X) here.
        grid = where.flip(-1).to(noise.dtype)[None, :, None, None, :]
        offset = F.grid_sample(noise, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        offset = rearrange(offset, "1 c n 1 1 -> n c")
        return coord + offset.to(coord.dtype) * magnitude

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        for granularity, magnitude in self.params:
            if _chance(self.p, coord, self.generator):
                coord = self.distort(coord, granularity, magnitude)
        return {**cloud, "coord": coord}


class ChromaticAutoContrast:
    """Stretch each channel to the full 0..255 range and blend with the original."""

    def __init__(self, p: float = 0.2, blend_factor: float | None = None, generator: torch.Generator | None = None):
        self.p, self.blend_factor, self.generator = p, blend_factor, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        color = cloud["color"]
        if not _chance(self.p, color, self.generator):
            return cloud
        lo, hi = color.min(0, keepdim=True).values, color.max(0, keepdim=True).values
        scale = 255.0 / (hi - lo).clamp_min(1e-6)
        contrast = (color - lo) * scale
        blend = self.blend_factor
        if blend is None:
            blend = _uniform(0.0, 1.0, (), color, self.generator)
        return {**cloud, "color": (1 - blend) * color + blend * contrast}


class ChromaticTranslation:
    """Shift all colors by one random offset of at most `ratio` of the full range."""

    def __init__(self, p: float = 0.95, ratio: float = 0.05, generator: torch.Generator | None = None):
        self.p, self.ratio, self.generator = p, ratio, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        color = cloud["color"]
        if not _chance(self.p, color, self.generator):
            return cloud
        shift = _uniform(-255.0 * self.ratio, 255.0 * self.ratio, (1, 3), color, self.generator)
        return {**cloud, "color": (color + shift).clamp(0, 255)}


class ChromaticJitter:
    """Per-point Gaussian color noise with std `std` of the full range."""

    def __init__(self, p: float = 0.95, std: float = 0.005, generator: torch.Generator | None = None):
        self.p, self.std, self.generator = p, std, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        color = cloud["color"]
        if not _chance(self.p, color, self.generator):
            return cloud
        noise = _normal(color.shape, color, self.generator) * self.std * 255.0
        return {**cloud, "color": (color + noise).clamp(0, 255)}


def point_features(cloud: Cloud, keys: Sequence[str]) -> torch.Tensor:
    """A model's per-point input: the entries `keys` side by side, as float32 (N, sum of widths).
    Each point model names its own keys (its class's `feature_keys`)."""
    missing = [key for key in keys if key not in cloud]
    if missing:
        raise KeyError(f"the model reads per-point {', '.join(missing)}, which this cloud lacks")
    return torch.cat([torch.as_tensor(cloud[key]) for key in keys], dim=1).float()


class NormalizeColor:
    """0..255 -> -1..1."""

    def __call__(self, cloud: Cloud) -> Cloud:
        return {**cloud, "color": cloud["color"] / 127.5 - 1.0}


class SphereCrop:
    """Keep the `point_max` points nearest to a centre: a random point ('random') or the
    bounding-box centre ('center'). Clouds with at most `point_max` points pass unchanged."""

    def __init__(self, point_max: int = 80000, mode: str = "random", generator: torch.Generator | None = None):
        if mode not in ("random", "center"):
            raise ValueError(f"SphereCrop mode is 'random' or 'center', not {mode!r}")
        self.point_max, self.mode, self.generator = point_max, mode, generator

    def __call__(self, cloud: Cloud) -> Cloud:
        coord = cloud["coord"]
        n = len(coord)
        if n <= self.point_max:
            return cloud
        if self.mode == "random":
            pick = int(_uniform(0, n, (), coord, self.generator).long().clamp_max(n - 1))
            center = coord[pick]
        else:
            center = (coord.min(0).values + coord.max(0).values) / 2
        distance = ((coord - center) ** 2).sum(1)
        keep = torch.topk(distance, self.point_max, largest=False, sorted=False).indices
        return index_points(cloud, keep.sort().values)


class GridSample:
    """Voxelise at `grid_size` as Pointcept's GridSample does.

    `train` keeps one random point per occupied voxel. `test` returns a list of fragments: each
    holds one point of every voxel (the i-th point of the voxel, wrapping around), and together
    they cover every point. Each fragment carries `index` (its points' indices in the full cloud,
    to scatter predictions back) and every output carries `inverse` (full point -> voxel = row of
    the sampled cloud) and `grid_coord` (integer voxel coordinates, min at 0).

    Voxels are keyed exactly (a mixed-radix integer), not by a hash, so no two voxels collide.
    """

    def __init__(self, grid_size: float = 0.02, mode: str = "train", generator: torch.Generator | None = None):
        if mode not in ("train", "test"):
            raise ValueError(f"GridSample mode is 'train' or 'test', not {mode!r}")
        self.grid_size, self.mode, self.generator = grid_size, mode, generator

    def voxelize(self, coord: torch.Tensor):
        """(grid_coord, order, inverse, counts): points sorted by voxel are `order`; voxel v owns
        order[start[v] : start[v] + counts[v]]."""
        grid_coord = torch.floor(coord / self.grid_size).long()
        grid_coord -= grid_coord.min(0).values
        extent = grid_coord.max(0).values + 1
        key = (grid_coord[:, 0] * extent[1] + grid_coord[:, 1]) * extent[2] + grid_coord[:, 2]
        key_sorted, order = torch.sort(key, stable=True)
        _, inverse_sorted, counts = torch.unique_consecutive(key_sorted, return_inverse=True, return_counts=True)
        inverse = torch.empty_like(inverse_sorted)
        inverse[order] = inverse_sorted
        return grid_coord, order, inverse, counts

    def __call__(self, cloud: Cloud):
        coord = cloud["coord"]
        grid_coord, order, inverse, counts = self.voxelize(coord)
        start = torch.cumsum(counts, 0) - counts
        if self.mode == "train":
            offset = (_uniform(0.0, 1.0, counts.shape, coord, self.generator) * counts).long()
            pick = order[start + torch.minimum(offset, counts - 1)]
            out = index_points(cloud, pick)
            out["grid_coord"] = grid_coord[pick]
            out["inverse"] = inverse
            return out
        fragments = []
        rounds = int(counts.max())
        # Fragment i takes the (i mod count)-th point of every voxel; build several fragments'
        # picks per gather, in chunks that keep the (fragments x voxels) index table small.
        chunk = max(1, (1 << 22) // len(counts))
        for first in range(0, rounds, chunk):
            i = torch.arange(first, min(first + chunk, rounds), device=coord.device)[:, None]
            picks = order[start + i % counts]
            fragments.extend(self._fragment(cloud, grid_coord, inverse, pick) for pick in picks)
        return fragments

    @staticmethod
    def _fragment(cloud: Cloud, grid_coord, inverse, pick) -> Cloud:
        fragment = index_points(cloud, pick)
        fragment["grid_coord"] = grid_coord.index_select(0, pick)
        fragment["index"] = pick
        fragment["inverse"] = inverse
        return fragment
