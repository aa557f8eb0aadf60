"""Patch and tubelet embeddings: a video (B, C, T, H, W) becomes tokens (B, T', N, D) on a (T', h, w) grid.

TimeSformer embeds each frame with a 16x16 patch convolution; ViViT embeds t x 16 x 16 tubelets with a
Conv3d. A tubelet embedding can start from a 2D (image) patch embedding in the two ways the ViViT paper
compares: "filter inflation" (the 2D filter repeated over time and divided by t, so a static clip gives
the image embedding) and "central frame" (the 2D filter on the middle frame, zeros elsewhere).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import nn

InflationMode = Literal["central_frame", "filter_inflation"]
INFLATION_MODES = ("central_frame", "filter_inflation")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[return-value]


class PatchEmbed2d(nn.Module):
    """Non-overlapping patches of every frame, projected to `dim`."""

    def __init__(self, in_channels: int = 3, dim: int = 768, patch_size: int | tuple[int, int] = 16):
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """video: (B, C, T, H, W) -> tokens (B, T, h*w, D) and the grid (T, h, w)."""
        batch, _, frames, height, width = video.shape
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {ph}x{pw}")
        frames_2d = rearrange(video, "b c t h w -> (b t) c h w")
        tokens = self.proj(frames_2d)
        grid = (frames, tokens.shape[-2], tokens.shape[-1])
        return rearrange(tokens, "(b t) d h w -> b t (h w) d", b=batch), grid


class TubeletEmbed(nn.Module):
    """Non-overlapping t x p x p tubelets, projected to `dim` by one Conv3d."""

    def __init__(self, in_channels: int = 3, dim: int = 768, tubelet_size: tuple[int, int, int] = (2, 16, 16)):
        super().__init__()
        self.tubelet_size = tuple(tubelet_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.tubelet_size, stride=self.tubelet_size)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """video: (B, C, T, H, W) -> tokens (B, T/t, h*w, D) and the grid (T/t, h, w)."""
        _, _, frames, height, width = video.shape
        tt, ph, pw = self.tubelet_size
        if frames % tt or height % ph or width % pw:
            raise ValueError(
                f"clip {frames}x{height}x{width} is not a multiple of the tubelet size {tt}x{ph}x{pw}"
            )
        tokens = self.proj(video)
        grid = tuple(tokens.shape[2:])
        return rearrange(tokens, "b d t h w -> b t (h w) d"), grid  # type: ignore[return-value]

    @torch.no_grad()
    def init_from_2d(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, mode: InflationMode = "central_frame"
    ) -> None:
        """Initialise from a 2D patch embedding's (D, C, p, p) weight (and bias)."""
        self.proj.weight.copy_(inflate_patch_weight(weight, self.tubelet_size[0], mode))
        if bias is not None and self.proj.bias is not None:
            self.proj.bias.copy_(bias)


def inflate_patch_weight(weight: torch.Tensor, frames: int, mode: InflationMode = "central_frame") -> torch.Tensor:
    """(D, C, p, p) 2D patch filter -> (D, C, frames, p, p) tubelet filter.

    filter_inflation: the same response to a static clip as the 2D filter has to one frame.
    central_frame: the tubelet starts as the image embedding of its middle frame (floor(t/2)).
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a (D, C, p, p) 2D patch weight, got shape {tuple(weight.shape)}")
    if mode == "filter_inflation":
        return weight.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames
    if mode == "central_frame":
        out = weight.new_zeros(weight.shape[:2] + (frames,) + weight.shape[2:])
        out[:, :, frames // 2] = weight
        return out
    raise ValueError(f"unknown inflation mode {mode!r}; use 'central_frame' or 'filter_inflation'")
