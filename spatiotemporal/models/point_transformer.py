"""Point Transformer (Zhao, Jiang, Jia, Torr, Koltun, ICCV 2021), semantic segmentation U-Net.

Encoder stages: a transition down (farthest-point sampling to 1/stride of the points, then a
linear layer and max-pool over the 16 nearest neighbours of each sample, relative positions
included) followed by residual Point Transformer blocks (vector self-attention over kNN). The
decoder interpolates coarse features back with 3-NN inverse-distance weights and adds the skip
features (transition up); the deepest stage summarises each cloud with its mean ("head").
The ScanNet configuration is the paper's/Pointcept's PointTransformerSeg50: planes
32-64-128-256-512, strides 1-4-4-4-4, neighbours 8-16-16-16-16, share planes 8.

Input convention: `model(coord, feat, offset)`; the caller grid-samples (the paper trains on
voxelised points). Coordinates enter only through relative positions and FPS (started from the
point farthest from the centroid), so with colour/normal features the output is invariant to a
translation of the cloud and equivariant to a permutation of its points.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.point_attention import PointBatchNorm, PointVectorAttention
from spatiotemporal.layers.point_ops import (
    farthest_point_sampling,
    fps_offset,
    group_relative,
    interpolate,
    knn_query,
    offset_to_counts,
)
from spatiotemporal.models.registry import ModelSpec, register_model


@dataclass(frozen=True)
class PointTransformerConfig:
    planes: tuple[int, ...] = (32, 64, 128, 256, 512)
    enc_depths: tuple[int, ...] = (1, 2, 3, 5, 2)  # transformer blocks after each transition down
    dec_depths: tuple[int, ...] = (1, 1, 1, 1, 1)
    strides: tuple[int, ...] = (1, 4, 4, 4, 4)
    nsample: tuple[int, ...] = (8, 16, 16, 16, 16)
    share_planes: int = 8
    grad_checkpointing: bool = False  # recompute each block's activations in backward


class PointTransformerBlock(nn.Module):
    """Bottleneck residual block: linear -> vector attention -> linear, BN + ReLU between."""

    def __init__(self, dim: int, share_planes: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim, bias=False)
        self.norm1 = PointBatchNorm(dim)
        self.attn = PointVectorAttention(dim, share_planes)
        self.norm2 = PointBatchNorm(dim)
        self.linear3 = nn.Linear(dim, dim, bias=False)
        self.norm3 = PointBatchNorm(dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, coord: Tensor, x: Tensor, neighbours: Tensor) -> Tensor:
        y = self.act(self.norm1(self.linear1(x)))
        y = self.act(self.norm2(self.attn(coord, y, neighbours)))
        y = self.norm3(self.linear3(y))
        return self.act(x + y)


class TransitionDown(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int, nsample: int):
        super().__init__()
        self.stride, self.nsample = stride, nsample
        self.linear = nn.Linear(in_dim + 3 if stride > 1 else in_dim, out_dim, bias=False)
        self.norm = PointBatchNorm(out_dim)
        self.act = nn.ReLU(inplace=True)

    def forward(self, coord: Tensor, x: Tensor, offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.stride == 1:
            return coord, self.act(self.norm(self.linear(x))), offset
        new_offset = fps_offset(offset, self.stride)
        new_coord = coord[farthest_point_sampling(coord, offset, new_offset)]
        index, _ = knn_query(self.nsample, coord, offset, new_coord, new_offset)
        grouped = group_relative(coord, x, index, new_coord)  # (M, k, 3 + C)
        y = self.act(self.norm(self.linear(grouped)))
        return new_coord, y.max(dim=1).values, new_offset


class TransitionUp(nn.Module):
    """Skip features plus interpolated coarse features; without a skip (the deepest stage) each
    point is concatenated with its cloud's mean feature instead."""

    def __init__(self, in_dim: int, out_dim: int | None):
        super().__init__()
        if out_dim is None:
            self.linear1 = nn.Sequential(nn.Linear(2 * in_dim, in_dim), PointBatchNorm(in_dim), nn.ReLU(inplace=True))
            self.linear2 = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True))
        else:
            self.linear1 = nn.Sequential(nn.Linear(out_dim, out_dim), PointBatchNorm(out_dim), nn.ReLU(inplace=True))
            self.linear2 = nn.Sequential(nn.Linear(in_dim, out_dim), PointBatchNorm(out_dim), nn.ReLU(inplace=True))

    def forward_head(self, x: Tensor, offset: Tensor) -> Tensor:
        counts = offset_to_counts(offset)
        batch = torch.repeat_interleave(torch.arange(len(offset), device=x.device), counts)
        mean = x.new_zeros(len(offset), x.shape[1]).index_add_(0, batch, x) / counts[:, None]
        return self.linear1(torch.cat([x, self.linear2(mean)[batch]], dim=1))

    def forward(self, fine: tuple[Tensor, Tensor, Tensor], coarse: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        coord, x, offset = fine
        coord_c, x_c, offset_c = coarse
        return self.linear1(x) + interpolate(coord_c, self.linear2(x_c), offset_c, coord, offset, k=3)


class PointTransformerSeg(nn.Module):
    arch = "point_transformer"
    feature_keys = ("color", "normal")  # the 6 input channels, as Pointcept's ScanNet config

    def __init__(self, in_channels: int = 6, num_classes: int = 20, config: PointTransformerConfig = PointTransformerConfig()):
        super().__init__()
        c = config
        self.config = c
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        dim = in_channels
        for planes, depth, stride, k in zip(c.planes, c.enc_depths, c.strides, c.nsample):
            self.down.append(TransitionDown(dim, planes, stride, k))
            self.enc.append(nn.ModuleList(PointTransformerBlock(planes, c.share_planes) for _ in range(depth)))
            dim = planes
        n = len(c.planes)
        self.up = nn.ModuleList(TransitionUp(c.planes[i + 1], c.planes[i]) for i in range(n - 1))
        self.up.append(TransitionUp(c.planes[-1], None))
        self.dec = nn.ModuleList(
            nn.ModuleList(PointTransformerBlock(c.planes[i], c.share_planes) for _ in range(c.dec_depths[i]))
            for i in range(n)
        )
        self.classifier = nn.Sequential(
            nn.Linear(c.planes[0], c.planes[0]), PointBatchNorm(c.planes[0]), nn.ReLU(inplace=True),
            nn.Linear(c.planes[0], num_classes),
        )

    @property
    def grad_checkpointing(self) -> bool:
        return self.config.grad_checkpointing

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every encoder and decoder block in backward (training's activation_checkpointing)."""
        self.config = replace(self.config, grad_checkpointing=enabled)

    def forward(self, coord: Tensor, feat: Tensor, offset: Tensor) -> Tensor:
        offset = offset.long()
        levels = []  # (coord, features, offset, neighbours) per stage
        x = feat
        for down, blocks, k in zip(self.down, self.enc, self.config.nsample):
            coord, x, offset = down(coord, x, offset)
            # One kNN per stage, shared by its blocks and by the decoder at the same resolution.
            neighbours, _ = knn_query(k, coord, offset)
            for block in blocks:
                x = run_block(block, coord, x, neighbours, checkpointed=self.config.grad_checkpointing)
            levels.append([coord, x, offset, neighbours])
        for i in reversed(range(len(levels))):
            coord, x_skip, offset, neighbours = levels[i]
            if i == len(levels) - 1:
                x = self.up[i].forward_head(x_skip, offset)
            else:
                coarse = levels[i + 1]
                x = self.up[i]((coord, x_skip, offset), (coarse[0], coarse[1], coarse[2]))
            for block in self.dec[i]:
                x = run_block(block, coord, x, neighbours, checkpointed=self.config.grad_checkpointing)
            levels[i][1] = x
        return self.classifier(x)


def point_transformer(in_channels: int = 6, num_classes: int = 20, **config) -> PointTransformerSeg:
    return PointTransformerSeg(in_channels, num_classes, PointTransformerConfig(**config))


register_model(
    ModelSpec(
        name="point_transformer",
        family="points",
        builder=point_transformer,
        kwargs={},
        num_classes=20,
        in_channels=6,
        published_params_m=7.8,
        params_source="PointTransformerSeg50 as tabulated in Point Transformer V2 (Wu et al., NeurIPS 2022), "
        "model-complexity comparison; the PTv1 paper itself gives no count",
        description="Point Transformer (Zhao et al. 2021), ScanNet 20-class semantic segmentation; feat = colour (-1..1) + normal",
    )
)

register_model(
    ModelSpec(
        name="point_transformer_tiny",
        family="points",
        builder=point_transformer,
        kwargs=dict(planes=(16, 32, 64, 128), enc_depths=(1, 1, 1, 1), dec_depths=(1, 1, 1, 1),
                    strides=(1, 4, 4, 4), nsample=(8, 16, 16, 16), share_planes=8),
        num_classes=20,
        in_channels=6,
        description="four-stage, one-block-per-stage Point Transformer for CPU tests and demos",
    )
)
