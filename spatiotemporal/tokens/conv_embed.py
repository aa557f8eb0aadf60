"""Convolutional token embeddings of the hierarchical video transformers.

- `ConvPatchEmbed3d`: MViT's overlapping 3x7x7 / stride 2x4x4 convolution, giving a token sequence.
- `PatchPartition3d`: Video Swin's non-overlapping 2x4x4 partition, giving a channels-last grid.
- `PatchMerging3d`: Video Swin's 2x2 spatial merge between stages (time is never merged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Size3 = tuple[int, int, int]


class ConvPatchEmbed3d(nn.Module):
    """(B, C, T, H, W) -> tokens (B, T'H'W', D) and their grid (T', H', W')."""

    def __init__(
        self,
        in_channels: int = 3,
        embed_dim: int = 96,
        kernel_size: Size3 = (3, 7, 7),
        stride: Size3 = (2, 4, 4),
        padding: Size3 = (1, 3, 3),
    ):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size3]:
        x = self.proj(x)
        thw = (x.shape[2], x.shape[3], x.shape[4])
        return rearrange(x, "b c t h w -> b (t h w) c"), thw


def pad_to_multiple(x: torch.Tensor, multiple: Size3, dims: Size3) -> torch.Tensor:
    """Zero-pad the three `dims` of `x` at their end up to a multiple of `multiple`."""
    pads = [0] * (2 * x.ndim)
    for size_multiple, dim in zip(multiple, dims):
        extra = -x.shape[dim] % size_multiple
        # F.pad lists (left, right) pairs from the last dimension backwards.
        pads[2 * (x.ndim - 1 - dim) + 1] = extra
    if not any(pads):
        return x
    return F.pad(x, pads)


class PatchPartition3d(nn.Module):
    """(B, C, T, H, W) -> channels-last grid (B, T', H', W', D); inputs are padded up to whole patches."""

    def __init__(self, patch_size: Size3 = (2, 4, 4), in_channels: int = 3, embed_dim: int = 96, norm: bool = True):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, self.patch_size, (2, 3, 4))
        return self.norm(rearrange(self.proj(x), "b c t h w -> b t h w c"))


class PatchMerging3d(nn.Module):
    """(B, T, H, W, C) -> (B, T, ceil(H/2), ceil(W/2), 2C): concatenates each 2x2 spatial neighbourhood.

    The neighbourhood is concatenated in the order (0,0), (1,0), (0,1), (1,1) over (h, w), the order of
    the official Video Swin and torchvision, so their `reduction` weights apply unchanged.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, (2, 2), (2, 3))
        x = rearrange(x, "b t (h dh) (w dw) c -> b t h w (dw dh c)", dh=2, dw=2)
        return self.reduction(self.norm(x))
