"""Video Swin 3D (shifted) window attention (Liu et al., "Video Swin Transformer", CVPR 2022).

Tokens on a (T, H, W) grid attend only within non-overlapping 3D windows (e.g. 8x7x7); every other
block shifts the windows by half a window so information crosses window borders, and an attention
mask keeps tokens that the cyclic shift brought together from distant corners apart. A learned
table gives a bias per head for every relative (dt, dh, dw) offset inside a window.

Bias and shift mask are summed into one additive `attn_mask`, so F.scaled_dot_product_attention
does the attention. Windows larger than the input are clipped to it, and a clipped axis is not
shifted (there is nothing to shift across).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


Size3 = tuple[int, int, int]

# The reference implementations mask with -100 rather than -inf; exp(-100) is zero in every dtype
# we run in, and a finite value keeps fully-masked rows impossible to turn into NaN.
MASK_VALUE = -100.0


def clip_window(grid: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Window and shift for a grid: an axis no longer than its window uses the whole axis, unshifted."""
    clipped_window = tuple(g if g <= w else w for g, w in zip(grid, window))
    clipped_shift = tuple(0 if g <= w else s for g, w, s in zip(grid, window, shift))
    return clipped_window, clipped_shift  # type: ignore[return-value]


def relative_position_index(window: Size3) -> torch.Tensor:
    """(N, N) index into a (2Wt-1)(2Wh-1)(2Ww-1) table for every token pair of a window, N = Wt*Wh*Ww."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij")).flatten(1)
    relative = coords[:, :, None] - coords[:, None, :]  # (3, N, N), each in [-(w-1), w-1]
    for axis, w in enumerate(window):
        relative[axis] += w - 1
    spans = [2 * w - 1 for w in window]
    return relative[0] * spans[1] * spans[2] + relative[1] * spans[2] + relative[2]


def shift_region_ids(padded: Size3, window: Size3, shift: Size3, device: torch.device) -> torch.Tensor:
    """(num_windows, N) ids of the region each token came from before the cyclic shift.

    Along a shifted axis the last window holds two regions: tokens that were there, and tokens that
    wrapped around from the start. Tokens may attend to each other only within one region.
    """
    ids = torch.zeros(padded, dtype=torch.long, device=device)
    multiplier = 1
    for axis in reversed(range(3)):
        if shift[axis] > 0:
            label = torch.zeros(padded[axis], dtype=torch.long, device=device)
            label[padded[axis] - window[axis] :] = 1
            label[padded[axis] - shift[axis] :] = 2
            shape = [1, 1, 1]
            shape[axis] = padded[axis]
            ids = ids + multiplier * label.view(shape)
        multiplier *= 3
    return rearrange(
        ids, "(nt wt) (nh wh) (nw ww) -> (nt nh nw) (wt wh ww)", wt=window[0], wh=window[1], ww=window[2]
    )


def window_gather_index(grid: Size3, window: Size3, shift: Size3, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that do padding, cyclic shift and window partition in one gather, and undo them in one.

    Returns `gather` (num_windows * N,): for each token of each window, the flat position in the
    (T, H, W) grid it reads, or T*H*W (a zero row) for padding; and `scatter` (T*H*W,): for each
    grid position, where its token sits in window order. One index_select each way replaces the
    pad, roll, partition, reverse, roll-back and crop copies of the reference.
    """
    padded = tuple(-(-g // w) * w for g, w in zip(grid, window))
    # Position i of the shifted grid holds source (i + shift) mod padded; past the input it is padding.
    sources = []
    for axis in range(3):
        src = (torch.arange(padded[axis], device=device) + shift[axis]) % padded[axis]
        sources.append(torch.where(src < grid[axis], src, -1))
    t, h, w = torch.meshgrid(*sources, indexing="ij")
    flat = (t * grid[1] + h) * grid[2] + w
    flat = torch.where((t < 0) | (h < 0) | (w < 0), grid[0] * grid[1] * grid[2], flat)
    order = rearrange(
        torch.arange(flat.numel(), device=device).view(padded),
        "(nt wt) (nh wh) (nw ww) -> (nt nh nw wt wh ww)", wt=window[0], wh=window[1], ww=window[2],
    )
    gather = flat.flatten()[order]
    # Inverse: window-order slot of every padded position, read at each real token's shifted position.
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel(), device=device)
    shifted = [(torch.arange(g, device=device) - s) % p for g, s, p in zip(grid, shift, padded)]
    t, h, w = torch.meshgrid(*shifted, indexing="ij")
    scatter = slot.view(padded)[t, h, w].flatten()
    return gather, scatter


class WindowAttention3d(nn.Module):
    """(Shifted) window multi-head self-attention on a channels-last grid (B, T, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int] = (8, 7, 7),
        shift_size: Sequence[int] = (0, 0, 0),
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size: Size3 = tuple(window_size)  # type: ignore[assignment]
        self.shift_size: Size3 = tuple(shift_size)  # type: ignore[assignment]
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        table_len = 1
        for w in self.window_size:
            table_len *= 2 * w - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_len, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from the window size alone, so it is never part of a checkpoint.
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        # Inference reuses the index and mask of the last input geometry (see `_cached`).
        self._cache: dict[str, tuple] = {}

    def _cached(self, name: str, key: tuple, make, depends_on: torch.Tensor | None = None):
        """`make()` memoised on `key` while no autograd or compiler is watching.

        Gather indices depend only on the geometry and the mask only on it and the bias table, so a
        video job that feeds clip after clip of one size builds them once (on CPU a shifted mask
        costs about two thirds as much as the rest of the attention). The mask is kept with a copy of
        the table it was built from and rebuilt when the table's values differ: writes through
        `.data` (old-style optimizers, EMA code) change the values without bumping the version
        counter, so neither the version nor the storage tells.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return make()
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key and (depends_on is None or torch.equal(hit[2], depends_on)):
            return hit[1]
        value = make()
        snapshot = depends_on.detach().clone() if depends_on is not None else None
        self._cache[name] = (key, value, snapshot)
        return value

    def relative_position_bias(self, window: Size3) -> torch.Tensor:
        """(heads, N, N) bias for a (possibly clipped) window: the sub-grid of the full window's offsets."""
        index = self.relative_position_index
        if window != self.window_size:
            full = self.window_size
            keep = rearrange(torch.arange(index.shape[0], device=index.device), "(t h w) -> t h w", t=full[0], h=full[1], w=full[2])
            keep = keep[: window[0], : window[1], : window[2]].flatten()
            index = index[keep][:, keep]
        n = index.shape[0]
        bias = self.relative_position_bias_table[index.flatten()]
        return rearrange(bias, "(i j) h -> h i j", i=n, j=n)

    def attention_mask(self, padded: Size3, window: Size3, shift: Size3, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask for SDPA: (1, heads, N, N) unshifted, (windows, heads, N, N) shifted."""
        bias = self.relative_position_bias(window).to(dtype)
        if not any(shift):
            return bias.unsqueeze(0)
        ids = shift_region_ids(padded, window, shift, bias.device)
        apart = ids[:, :, None] != ids[:, None, :]  # (windows, N, N)
        return bias.unsqueeze(0).masked_fill(apart.unsqueeze(1), MASK_VALUE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        window, shift = clip_window((t, h, w), self.window_size, self.shift_size)
        padded = tuple(-(-g // wsz) * wsz for g, wsz in zip((t, h, w), window))
        n = window[0] * window[1] * window[2]
        gather, scatter = self._cached(
            "index", ((t, h, w), window, shift, x.device), lambda: window_gather_index((t, h, w), window, shift, x.device)
        )
        tokens = rearrange(x, "b t h w c -> b (t h w) c")
        if padded != (t, h, w):
            # Zero tokens pad to whole windows (after the block's norm, as the reference does):
            # they take part in attention as keys, which published checkpoints were trained with.
            tokens = torch.cat((tokens, tokens.new_zeros(b, 1, c)), dim=1)
        windows = tokens.index_select(1, gather)
        q, k, v = rearrange(self.qkv(windows), "b (nw n) (three h d) -> three (b nw) h n d", n=n, three=3, h=self.num_heads)
        mask = self._cached(
            "mask",
            (padded, window, shift, q.dtype, q.device),
            lambda: self.attention_mask(padded, window, shift, q.dtype),
            depends_on=self.relative_position_bias_table,
        )
        dropout = self.attn_drop if self.training else 0.0
        if any(shift) and b > 1:
            # The (windows, heads) mask broadcasts over one clip's windows only; clips run in turn
            # rather than copying q, k, v into a windows-next-to-heads layout.
            num_windows = mask.shape[0]
            out = torch.cat([
                F.scaled_dot_product_attention(*(z[i * num_windows : (i + 1) * num_windows] for z in (q, k, v)),
                                               attn_mask=mask, dropout_p=dropout)
                for i in range(b)
            ])
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.proj_drop(self.proj(rearrange(out, "(b nw) h n d -> b (nw n) (h d)", b=b)))
        out = out.index_select(1, scatter)
        return rearrange(out, "b (t h w) c -> b t h w c", t=t, h=h, w=w)
