"""Learned position embeddings on a token grid, and their interpolation to other grids.

One module covers every learned table the ViT-style video models use: TimeSformer's spatial table
(1 class token + h*w) and temporal table (T), ViViT's joint table (1 + t*h*w) and the factorised
encoder's spatial and temporal tables. Users fine-tune and test at other frame counts and resolutions
than a checkpoint was trained at, so a table is resized both at load time (checkpoint tables of another
grid) and on the fly (inputs of another grid). The mode is the model's choice (TimeSformer's reference
code resizes with 'nearest'); by default linear in time, bicubic in space, trilinear for a joint
space-time table. Prefix (class) tokens are never interpolated.

A checkpoint's table says only how many tokens it has, not on which grid: the loader passes the grid
when the checkpoint's metadata tells it, and only otherwise is the grid guessed from the count, refusing
to guess when more than one grid fits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}
# F.interpolate takes `align_corners` only for these; 'nearest' and 'area' refuse it.
_ALIGNABLE = {"linear", "bilinear", "bicubic", "trilinear"}

Grid = tuple[int, ...]


class PositionTableError(ValueError):
    """A checkpoint's position table that cannot be fitted to a model's grid; `key` names it when known."""

    def __init__(self, key: str | None, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}" if key else reason)


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
    align = {"align_corners": False} if mode in _ALIGNABLE else {}
    # Interpolation in fp32: bicubic is not implemented for bf16 on every backend.
    body = F.interpolate(body.float(), size=new_grid, mode=mode, **align).to(table.dtype)
    body = rearrange(body, f"1 d {axes} -> 1 ({axes}) d")
    return torch.cat([prefix, body], dim=1)


def grid_candidates(num_tokens: int, like: Sequence[int]) -> list[Grid]:
    """The grids a table of `num_tokens` grid tokens may have, for a model whose grid is `like`.

    1D: the count itself. 2D: square. 3D: the model's spatial grid with other frames, or the model's
    frames with a square spatial grid. A checkpoint whose frames and size both differ fits neither.
    """
    like = tuple(like)
    found: list[Grid] = []
    if len(like) == 1:
        found.append((num_tokens,))
    elif len(like) == 2:
        side = math.isqrt(num_tokens)
        if side * side == num_tokens:
            found.append((side, side))
    elif len(like) == 3:
        frames, height, width = like
        if num_tokens % (height * width) == 0:
            found.append((num_tokens // (height * width), height, width))
        if num_tokens % frames == 0:
            side = math.isqrt(num_tokens // frames)
            if side * side * frames == num_tokens and (frames, side, side) not in found:
                found.append((frames, side, side))
    return found


class LearnedPosEmbed(nn.Module):
    """A learned (1, prefix + prod(grid), D) table, added to tokens laid out in grid order.

    `mode`: how the table is resized for other grids (F.interpolate's mode); None picks by the
    number of axes (linear, bicubic, trilinear).
    """

    def __init__(
        self,
        grid: Sequence[int],
        dim: int,
        num_prefix_tokens: int = 0,
        init_std: float = 0.02,
        mode: str | None = None,
    ):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.num_prefix_tokens = num_prefix_tokens
        self.mode = mode
        self.weight = nn.Parameter(torch.zeros(1, num_prefix_tokens + math.prod(self.grid), dim))
        if init_std > 0:
            nn.init.trunc_normal_(self.weight, std=init_std)

    def resized(self, grid: Sequence[int]) -> torch.Tensor:
        """The table for tokens on `grid` (interpolated when it is not the trained grid)."""
        return interpolate_pos_embed(self.weight, self.grid, grid, self.num_prefix_tokens, self.mode)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return tokens + self.resized(grid)

    def _guess(self, num_tokens: int, prefix: int | None) -> tuple[Grid, int]:
        """(grid, prefix) of a table of `num_tokens` tokens, `prefix` of them class tokens if known."""
        if prefix is not None:
            prefixes = [prefix]
        else:
            # A spatial or space-time table without a class token may be given one with it (ViViT
            # Models 3/4 from Model 1: scenic drops that row). A 1D (time) table never has one.
            with_cls = self.num_prefix_tokens == 0 and len(self.grid) > 1
            prefixes = [self.num_prefix_tokens] + ([1] if with_cls else [])
        found = [(grid, prefix) for prefix in prefixes for grid in grid_candidates(num_tokens - prefix, self.grid)]
        if len(found) == 1:
            return found[0]
        described = " and ".join(f"{p} + {g}" if p else str(g) for g, p in found)
        if not found:
            raise PositionTableError(None, f"cannot tell the grid of a {num_tokens}-token position table "
                                           f"(model grid {self.grid}, {self.num_prefix_tokens} prefix tokens)")
        raise PositionTableError(None, f"a {num_tokens}-token position table fits the grids {described} "
                                       f"(model grid {self.grid}); the checkpoint does not say which (ours "
                                       "say it by their model_name and model_kwargs, as training saves them)")

    def adapt_table(
        self, table: torch.Tensor, old_grid: Sequence[int] | None = None, old_prefix: int | None = None
    ) -> torch.Tensor:
        """A checkpoint's table on `old_grid` with `old_prefix` prefix tokens, resized to this module's grid.

        Unknown grid (None): a table of this module's shape is taken as is, any other is guessed.
        Extra prefix rows (a class token this model does not have) are dropped.
        """
        if table.ndim != 3 or table.shape[2] != self.weight.shape[2]:
            return table  # not a resizable difference; the loader reports the shape mismatch
        if old_grid is None:
            if table.shape == self.weight.shape and old_prefix in (None, self.num_prefix_tokens):
                return table
            old_grid, old_prefix = self._guess(table.shape[1], old_prefix)
        old_grid = tuple(int(g) for g in old_grid)
        old_prefix = self.num_prefix_tokens if old_prefix is None else old_prefix
        if table.shape[1] != old_prefix + math.prod(old_grid):
            raise PositionTableError(None, f"the table has {table.shape[1]} tokens, but the checkpoint's geometry "
                                           f"gives {old_prefix} + grid {old_grid}")
        if old_prefix < self.num_prefix_tokens:
            raise PositionTableError(None, f"the table has no class-token row ({old_prefix} prefix tokens), "
                                           f"and this model has {self.num_prefix_tokens}")
        if len(old_grid) != len(self.grid):
            raise PositionTableError(None, f"a table on a {len(old_grid)}-axis grid {old_grid} does not fit this "
                                           f"model's {len(self.grid)}-axis grid {self.grid}")
        table = table[:, old_prefix - self.num_prefix_tokens :]
        return interpolate_pos_embed(table, old_grid, self.grid, self.num_prefix_tokens, self.mode)

    def extra_repr(self) -> str:
        mode = f", mode={self.mode}" if self.mode else ""
        return f"grid={self.grid}, prefix={self.num_prefix_tokens}, dim={self.weight.shape[-1]}{mode}"


def adapt_pos_embeds(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    sources: Mapping[str, tuple[Sequence[int] | None, int | None]] | None = None,
) -> dict[str, torch.Tensor]:
    """Resize every LearnedPosEmbed table in `state_dict` (our key names) to `model`'s grids.

    `sources` maps a table's key to its (grid, prefix tokens) in the checkpoint where the loader knows
    them; other tables are taken as is when their shape fits and guessed otherwise. A table that cannot
    be fitted raises PositionTableError naming its key.
    """
    sources = sources or {}
    out = dict(state_dict)
    for name, module in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, LearnedPosEmbed) and key in out:
            try:
                out[key] = module.adapt_table(out[key], *sources.get(key, (None, None)))
            except PositionTableError as err:
                raise PositionTableError(key, err.reason) from None
    return out
