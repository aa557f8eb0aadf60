"""Stratified Transformer (Lai, Liu, Jiang, Wang, Zhao, Liu, Qi, Jia, CVPR 2022), segmentation.

- First-layer point embedding: KPConv (Thomas et al. 2019) blocks on the full-resolution points
  before any attention. The reference calls torch_points3d's compiled KPConv; `KPConv` here is a
  pure-PyTorch equivalent: 15 rigid kernel points (the centre plus 14 evenly spread on a sphere of
  radius 1.5 sigma), linear correlation max(0, 1 - |y - x_k| / sigma), neighbours = the (up to 34)
  nearest points within 2.5 grid cells. Where the reference's ball query returns the first 34
  points found inside the radius, this one returns the 34 nearest, which is order independent.
- Stages of window attention (`StratifiedWindowAttention`): dense keys from the query's cubic
  window, sparse keys from farthest-point-sampled points (1/downsample_scale) inside the window
  twice as large; contextual relative position encoding on queries, keys and values; every
  second block shifts both window grids by half their edge.
- Transition down: FPS to 1/4 of the points, LayerNorm + linear + max-pool over 16 neighbours.
  Transition up: 3-NN interpolation of the coarse features added to the skip features.

The ScanNet configuration is the reference's (Pointcept `semseg-st-v1m1-0-origin`): channels
48-96-192-384-384, heads 3-6-12-24-24, depths 3-3-9-3-3 (the first stage is the KPConv stem, so
its depth is unused), windows 0.1-1.6 m, quantization 0.005-0.08 m, features = coord + color.
The S3DIS configuration (the paper's 8.0M-parameter model) is the reference's
`s3dis_stratified_transformer.yaml`: 4 cm voxels, channels 48-384, depths 2-2-6-2, windows of 4
voxels doubling per stage, sparse keys 1 in 8, and `stem_transformer`: a single KPConv block, then
a first attention stage on the full-resolution points.
Because coordinates are part of the features the model is not translation invariant; everything
else in it (windows anchored at each cloud's minimum corner, FPS, kNN, cRPE) is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.drop import DropPath, drop_path_rates
from spatiotemporal.layers.mlp import Mlp
from spatiotemporal.layers.point_attention import (
    PointBatchNorm,
    StratifiedWindowAttention,
    WindowPlan,
    plan_windows,
)
from spatiotemporal.layers.point_ops import (
    farthest_point_sampling,
    interpolate,
    knn_query,
    offset_to_counts,
)
from spatiotemporal.models.registry import ModelSpec, register_model


@dataclass(frozen=True)
class StratifiedConfig:
    channels: tuple[int, ...] = (48, 96, 192, 384, 384)
    num_heads: tuple[int, ...] = (3, 6, 12, 24, 24)
    depths: tuple[int, ...] = (3, 3, 9, 3, 3)
    window_size: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6)
    quant_size: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08)
    downsample_scale: int = 4  # sparse keys: 1 in `downsample_scale` points, by FPS
    ratio: float = 0.25  # transition down keeps this fraction of the points
    k: int = 16  # neighbours max-pooled by transition down
    up_k: int = 3
    grid_size: float = 0.02  # input voxel size; sets the KPConv scale
    sigma: float = 1.0
    kp_radius_cells: float = 2.5
    kp_max_neighbours: int = 34
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    # The reference's `stem_transformer`: one KPConv block, then a first stage of window attention
    # on the full-resolution points (depths[0] blocks at channels[0]) before the first transition
    # down. False (its ScanNet config): KPConv block + residual block, and depths[0] is unused.
    stem_transformer: bool = False
    grad_checkpointing: bool = False  # recompute each block's activations in backward
    # The reference draws every linear layer, the classifier's too, from N(0, 0.02): its first
    # logits are tiny, and Adam needs a few hundred steps just to scale them up. False keeps
    # PyTorch's default (Kaiming-uniform) for the classifier instead, for short from-scratch runs.
    reference_classifier_init: bool = True


def kernel_points(radius: float) -> Tensor:
    """The centre and 14 directions (6 face + 8 corner directions of a cube, the most even
    14-point spread with cubic symmetry) at `radius`."""
    faces = torch.cat([torch.eye(3), -torch.eye(3)])
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
    dirs = torch.cat([faces, corners / math.sqrt(3)])
    return torch.cat([torch.zeros(1, 3), dirs * radius])


class KPConv(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, sigma: float):
        super().__init__()
        self.sigma = sigma
        self.register_buffer("kernel", kernel_points(1.5 * sigma), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(self.kernel), in_dim, out_dim))
        nn.init.kaiming_uniform_(self.weight.view(-1, out_dim).T, a=math.sqrt(5))

    def influence(self, coord: Tensor, neighbours: Tensor, valid: Tensor) -> Tensor:
        """(N, M, K): max(0, 1 - |y_m - x_n - k| / sigma) per neighbour and kernel point, zero for
        invalid neighbours. Geometry only (the kernel points are rigid), so the convolutions of
        one point set at one scale can share it."""
        rel = coord[neighbours] - coord[:, None]  # (N, M, 3)
        # |r - k|^2 = |r|^2 + |k|^2 - 2 r.k: one matmul instead of a batched cdist, kept in fp32
        # under autocast, where bf16 would cancel the terms' leading digits.
        with torch.autocast(coord.device.type, enabled=False):
            rel = rel.float()
            sq = rel.square().sum(-1, keepdim=True) + self.kernel.square().sum(-1) - 2 * rel @ self.kernel.T
            influence = (1 - sq.clamp_min(0).sqrt() / self.sigma).clamp_min(0)
        return influence * valid[..., None]

    def forward(self, x: Tensor, neighbours: Tensor, influence: Tensor) -> Tensor:
        gathered = torch.einsum("nmk,nmc->nkc", influence, x[neighbours])
        return torch.einsum("nkc,kco->no", gathered, self.weight)


class KPConvSimpleBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, sigma: float):
        super().__init__()
        self.conv = KPConv(in_dim, out_dim, sigma)
        self.norm = PointBatchNorm(out_dim, momentum=0.02)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, neighbours: Tensor, influence: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x, neighbours, influence)))


class KPConvResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, sigma: float):
        super().__init__()
        mid = out_dim // 4
        self.unary1 = nn.Sequential(nn.Linear(in_dim, mid, bias=False), PointBatchNorm(mid, momentum=0.02), nn.LeakyReLU(0.2))
        self.conv = KPConv(mid, mid, sigma)
        self.unary2 = nn.Sequential(nn.Linear(mid, out_dim, bias=False), PointBatchNorm(out_dim, momentum=0.02), nn.LeakyReLU(0.2))
        self.shortcut = (
            nn.Identity() if in_dim == out_dim
            else nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), PointBatchNorm(out_dim, momentum=0.02))
        )

    def forward(self, x: Tensor, neighbours: Tensor, influence: Tensor) -> Tensor:
        y = self.unary2(self.conv(self.unary1(x), neighbours, influence))
        return y + self.shortcut(x)


class StratifiedBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: float, quant_size: float, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = StratifiedWindowAttention(dim, num_heads, window_size, quant_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, coord: Tensor, x: Tensor, plan: WindowPlan) -> Tensor:
        x = x + self.drop_path(self.attn(coord, self.norm1(x), plan))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _sample_offset(offset: Tensor, fraction: float) -> Tensor:
    # The reference keeps int(n * fraction) + 1 points per cloud.
    counts = offset_to_counts(offset)
    return (torch.floor(counts.double() * fraction).long() + 1).clamp_max(counts).cumsum(0)


class LevelSamples:
    """Farthest-point samples of one level's points, each distinct count drawn once: the sparse
    keys (1 in `downsample_scale`) and the transition down (`ratio`) are the same set whenever
    the two fractions agree, as in the ScanNet configs, and FPS is deterministic."""

    def __init__(self, coord: Tensor, offset: Tensor):
        self.coord, self.offset = coord, offset
        self._drawn: dict[tuple[int, ...], Tensor] = {}

    def __call__(self, fraction: float) -> tuple[Tensor, Tensor]:
        """(indices of the samples, their per-cloud offsets)."""
        new_offset = _sample_offset(self.offset, fraction)
        key = tuple(new_offset.tolist())
        if key not in self._drawn:
            self._drawn[key] = farthest_point_sampling(self.coord, self.offset, new_offset)
        return self._drawn[key], new_offset


class TransitionDown(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, ratio: float, k: int):
        super().__init__()
        self.ratio, self.k = ratio, k
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, coord: Tensor, x: Tensor, offset: Tensor, samples: LevelSamples) -> tuple[Tensor, Tensor, Tensor]:
        picks, new_offset = samples(self.ratio)
        new_coord = coord[picks]
        index, _ = knn_query(self.k, coord, offset, new_coord, new_offset)
        return new_coord, self.linear(self.norm(x[index])).max(dim=1).values, new_offset


class Upsample(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, k: int):
        super().__init__()
        self.k = k
        self.skip = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, out_dim))
        self.coarse = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))

    def forward(self, fine: tuple[Tensor, Tensor, Tensor], coarse: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        coord, x, offset = fine
        coord_c, x_c, offset_c = coarse
        return self.skip(x) + interpolate(coord_c, self.coarse(x_c), offset_c, coord, offset, k=self.k)


class StratifiedStage(nn.Module):
    """The attention blocks of one level; with no blocks (the full-resolution level of a
    KPConv-only stem) it passes the features through."""

    def __init__(self, c: StratifiedConfig, i: int, drop_paths: list[float]):
        super().__init__()
        self.window_size = c.window_size[i]
        self.downsample_scale = c.downsample_scale
        self.num_heads = c.num_heads[i]
        self.grad_checkpointing = c.grad_checkpointing
        self.blocks = nn.ModuleList(
            StratifiedBlock(c.channels[i], c.num_heads[i], c.window_size[i], c.quant_size[i], c.mlp_ratio, dp)
            for dp in drop_paths
        )

    def forward(self, coord: Tensor, x: Tensor, offset: Tensor, samples: LevelSamples) -> Tensor:
        if not self.blocks:
            return x
        sampled, _ = samples(1 / self.downsample_scale)
        # Bound each padded attention chunk to ~2**24 elements across heads and the 3 cRPE axes.
        budget = max(1 << 12, (1 << 24) // (3 * self.num_heads))
        # Blocks alternate plain and shifted windows; a single block needs only the plain plan.
        shifts = (False, True)[: len(self.blocks)]
        plans = [plan_windows(coord, offset, self.window_size, sampled, shift, budget) for shift in shifts]
        for j, block in enumerate(self.blocks):
            x = run_block(block, coord, x, plans[j % 2], checkpointed=self.grad_checkpointing)
        return x


class StratifiedTransformerSeg(nn.Module):
    arch = "stratified_transformer"
    feature_keys = ("coord", "color")  # the 6 input channels, as the reference feeds them

    def __init__(self, in_channels: int = 6, num_classes: int = 20, config: StratifiedConfig = StratifiedConfig()):
        super().__init__()
        c = config
        self.config = c
        sigma = c.grid_size * c.sigma
        stem = [KPConvSimpleBlock(in_channels, c.channels[0], sigma)]
        if not c.stem_transformer:
            stem.append(KPConvResBlock(c.channels[0], c.channels[0], sigma))
        self.stem = nn.ModuleList(stem)
        n = len(c.channels)
        # As the reference: rates spread over every depth, the unused depths[0] included.
        dpr = drop_path_rates(c.drop_path_rate, sum(c.depths))
        self.downs = nn.ModuleList(TransitionDown(c.channels[i], c.channels[i + 1], c.ratio, c.k) for i in range(n - 1))
        self.stages = nn.ModuleList()
        for i in range(n):
            first = sum(c.depths[:i])
            depth = c.depths[i] if i > 0 or c.stem_transformer else 0
            self.stages.append(StratifiedStage(c, i, dpr[first : first + depth]))
        self.ups = nn.ModuleList(Upsample(c.channels[i], c.channels[i - 1], c.up_k) for i in range(n - 1, 0, -1))
        self.classifier = nn.Sequential(
            nn.Linear(c.channels[0], c.channels[0]), PointBatchNorm(c.channels[0]), nn.ReLU(inplace=True),
            nn.Linear(c.channels[0], num_classes),
        )
        self.apply(self._init_weights)
        if not c.reference_classifier_init:
            for layer in self.classifier:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def grad_checkpointing(self) -> bool:
        return self.config.grad_checkpointing

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every attention block in backward (training's activation_checkpointing)."""
        self.config = replace(self.config, grad_checkpointing=enabled)
        for stage in self.stages:
            stage.grad_checkpointing = enabled

    def forward(self, coord: Tensor, feat: Tensor, offset: Tensor) -> Tensor:
        c = self.config
        offset = offset.long()
        index, dist = knn_query(c.kp_max_neighbours, coord, offset)
        valid = (dist <= c.kp_radius_cells * c.grid_size).to(feat.dtype)
        # Every stem convolution has the same kernel points and sigma: one influence serves all.
        influence = self.stem[0].conv.influence(coord, index, valid)
        x = feat
        for block in self.stem:
            x = block(x, index, influence)
        levels = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                coord, x, offset = self.downs[i - 1](coord, x, offset, samples)
            samples = LevelSamples(coord, offset)
            x = stage(coord, x, offset, samples)
            levels.append((coord, x, offset))
        x = levels[-1][1]
        for up, i in zip(self.ups, range(len(levels) - 2, -1, -1)):
            fine = levels[i]
            x = up(fine, (levels[i + 1][0], x, levels[i + 1][2]))
        return self.classifier(x)


def stratified_transformer(in_channels: int = 6, num_classes: int = 20, **config) -> StratifiedTransformerSeg:
    return StratifiedTransformerSeg(in_channels, num_classes, StratifiedConfig(**config))


register_model(
    ModelSpec(
        name="stratified_transformer",
        family="points",
        builder=stratified_transformer,
        kwargs={},
        num_classes=20,
        in_channels=6,
        params_source="no ScanNet parameter count is published; Lai et al. 2022's 8.0M is the S3DIS "
        "configuration (registered as stratified_transformer_s3dis)",
        description="Stratified Transformer (Lai et al. 2022), ScanNet 20-class config; feat = coord + colour (-1..1)",
    )
)

register_model(
    ModelSpec(
        name="stratified_transformer_s3dis",
        family="points",
        builder=stratified_transformer,
        # The reference's S3DIS config: 4 cm voxels, windows of 4 voxels doubling per stage,
        # sparse keys 1 in 8, and a first attention stage at full resolution (stem_transformer).
        kwargs=dict(channels=(48, 96, 192, 384), num_heads=(3, 6, 12, 24), depths=(2, 2, 6, 2),
                    window_size=(0.16, 0.32, 0.64, 1.28), quant_size=(0.01, 0.02, 0.04, 0.08),
                    downsample_scale=8, grid_size=0.04, stem_transformer=True),
        num_classes=13,
        in_channels=6,
        published_params_m=8.0,
        params_source="Lai et al. 2022, the S3DIS model (reference config s3dis_stratified_transformer.yaml)",
        description="Stratified Transformer (Lai et al. 2022), S3DIS 13-class config; feat = coord + colour",
    )
)

register_model(
    ModelSpec(
        name="stratified_transformer_tiny",
        family="points",
        builder=stratified_transformer,
        kwargs=dict(channels=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(0, 2, 2, 2),
                    window_size=(0.2, 0.4, 0.8, 1.6), quant_size=(0.02, 0.04, 0.08, 0.16),
                    grid_size=0.04, kp_max_neighbours=16, drop_path_rate=0.1),
        num_classes=20,
        in_channels=6,
        description="four-stage Stratified Transformer for CPU tests and demos on 4-5 cm voxels",
    )
)
