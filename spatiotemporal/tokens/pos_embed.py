"""Learned position embeddings on a token grid, and their interpolation to other grids.

One module covers every learned table the ViT-style video models use: TimeSformer's spatial table
(1 class token + h*w) and temporal table (T), ViViT's joint table (1 + t*h*w) and the factorised
encoder's spatial and temporal tables. Users fine-tune and test at other frame counts and resolutions
than a checkpoint was trained at, so a table is resized both at load time (checkpoint tables of another
grid) and on the fly (inputs of another grid): linear in time, bicubic in space, trilinear for a joint
space-time table. Prefix (class) tokens are never interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}


def interpolate_pos_embed(
    table: torch.Tensor,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    num_prefix_tokens: int = 0,
    mode: str | None = None,
) -> torch.Tensor:
    """Resize a (1, prefix + prod(old_grid), D) table to (1, prefix + prod(new_grid), D)."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != len(new_grid) or len(old_grid) not in _MODES:
        raise ValueError(f"cannot interpolate a {old_grid} position grid to {new_grid}")
    if table.shape[1] != num_prefix_tokens + math.prod(old_grid):
        raise ValueError(
            f"position table has {table.shape[1]} tokens, expected {num_prefix_tokens} + prod{old_grid}"
        )
    if old_grid == new_grid:
        return table
    prefix, body = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    axes = " ".join(f"g{i}" for i in range(len(old_grid)))
    sizes = dict(zip((f"g{i}" for i in range(len(old_grid))), old_grid))
    body = rearrange(body, f"1 ({axes}) d -> 1 d {axes}", **sizes)
    mode = mode or _MODES[len(old_grid)]
    # Interpolation in fp32: bicubic is not implemented for bf16 on every backend.
    body = F.interpolate(body.float(), size=new_grid, mode=mode, align_corners=False).to(table.dtype)
    body = rearrange(body, f"1 d {axes} -> 1 ({axes}) d")
    return torch.cat([prefix, body], dim=1)


def infer_grid(num_tokens: int, like: Sequence[int]) -> tuple[int, ...]:
    """Guess the grid of a checkpoint table with `num_tokens` grid tokens, for a model whose grid is `like`.

    1D: the count itself. 2D: square. 3D: the same spatial grid with other frames, else the same frames
    with a square spatial grid.
    """
    like = tuple(like)
    if len(like) == 1:
        return (num_tokens,)
    if len(like) == 2:
        side = math.isqrt(num_tokens)
        if side * side == num_tokens:
            return (side, side)
    if len(like) == 3:
        frames, height, width = like
        if num_tokens % (height * width) == 0:
            return (num_tokens // (height * width), height, width)
        if num_tokens % frames == 0:
            side = math.isqrt(num_tokens // frames)
            if side * side * frames == num_tokens:
                return (frames, side, side)
    raise ValueError(f"cannot tell the grid of a {num_tokens}-token position table (model grid {like})")


class LearnedPosEmbed(nn.Module):
    """A learned (1, prefix + prod(grid), D) table, added to tokens laid out in grid order."""

    def __init__(self, grid: Sequence[int], dim: int, num_prefix_tokens: int = 0, init_std: float = 0.02):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.weight = nn.Parameter(torch.zeros(1, num_prefix_tokens + math.prod(self.grid), dim))
        if init_std > 0:
            nn.init.trunc_normal_(self.weight, std=init_std)

    def resized(self, grid: Sequence[int]) -> torch.Tensor:
        """The table for tokens on `grid` (interpolated when it is not the trained grid)."""
        return interpolate_pos_embed(self.weight, self.grid, grid, self.num_prefix_tokens)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return tokens + self.resized(grid)

    def adapt_table(self, table: torch.Tensor) -> torch.Tensor:
        """A checkpoint's table for another grid, resized to this module's grid."""
        if table.shape == self.weight.shape:
            return table
        if table.ndim != 3 or table.shape[2] != self.weight.shape[2]:
            return table  # not a resizable difference; the loader reports the shape mismatch
        old_grid = infer_grid(table.shape[1] - self.num_prefix_tokens, self.grid)
        return interpolate_pos_embed(table, old_grid, self.grid, self.num_prefix_tokens)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, prefix={self.num_prefix_tokens}, dim={self.weight.shape[-1]}"


def adapt_pos_embeds(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resize every LearnedPosEmbed table in `state_dict` (our key names) to `model`'s grids."""
    out = dict(state_dict)
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, LearnedPosEmbed) and key in out:
            out[key] = module.adapt_table(out[key])
    return out
