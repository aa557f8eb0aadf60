"""MViTv2 pooling attention (Li et al., "MViTv2", CVPR 2022), through F.scaled_dot_product_attention.

Queries, keys and values are pooled on their (T, H, W) grid by a depthwise Conv3d + LayerNorm, with a
kernel and stride per block; pooling queries is how a stage shrinks its resolution, pooling keys and
values is how attention stays affordable at high resolution. The decomposed relative positions of
MViTv2 (a term per axis, t, h and w, each a dot product of the query with a learned table) and the
class token's exemption from them are expressed as extra query and key channels, so SDPA's fused
kernel computes softmax(QK^T/sqrt(d) + bias) V without a materialised bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

Size3 = tuple[int, int, int]


class AttentionPool(nn.Module):
    """Pools per-head tokens (B, heads, [cls +] THW, d) on their grid; the class token is not pooled.

    Weights are shared across heads (the conv sees heads as batch), as in MViT.
    """

    def __init__(self, head_dim: int, kernel: Sequence[int], stride: Sequence[int], has_cls: bool, eps: float = 1e-6):
        super().__init__()
        self.has_cls = has_cls
        self.conv = nn.Conv3d(
            head_dim,
            head_dim,
            tuple(kernel),
            stride=tuple(stride),
            padding=tuple(k // 2 for k in kernel),
            groups=head_dim,
            bias=False,
        )
        self.norm = nn.LayerNorm(head_dim, eps=eps)

    def forward(self, x: torch.Tensor, thw: Size3) -> tuple[torch.Tensor, Size3]:
        b, heads = x.shape[:2]
        cls, grid = (x[:, :, :1], x[:, :, 1:]) if self.has_cls else (None, x)
        t, h, w = thw
        # Channels-last (d innermost) is the tokens' own layout and the fast one for depthwise
        # Conv3d on CPU: one copy in, and the output reshapes back to tokens without another.
        grid = rearrange(grid, "b n (t h w) d -> (b n) t h w d", t=t, h=h, w=w).contiguous()
        grid = self.conv(grid.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        out_thw = (grid.shape[1], grid.shape[2], grid.shape[3])
        grid = rearrange(grid, "(b n) t h w d -> b n (t h w) d", b=b, n=heads)
        if cls is not None:
            grid = torch.cat((cls, grid), dim=2)
        # Normalising after re-attaching the class token normalises it too, as the reference does.
        return self.norm(grid), out_thw


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (L, d) relative-position table linearly resampled to `length` rows (frames/resolution change)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(rearrange(table, "l d -> 1 d l"), size=length, mode="linear")
    return rearrange(resized, "1 d l -> l d")


def _rel_pos_for_axis(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """(q_size, k_size, d) table rows for every query/key pair along one axis.

    When q and k grids differ (pooled keys), coordinates are scaled to the finer grid so a distance
    means the same span of the input, as in MViTv2.
    """
    table = resize_rel_pos(table, 2 * max(q_size, k_size) - 1)
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=table.device)[:, None] * q_ratio
    k_coords = torch.arange(k_size, device=table.device)[None, :] * k_ratio
    distance = q_coords - k_coords + (k_size - 1) * k_ratio
    return table[distance.long()]


def decomposed_rel_pos_channels(
    q: torch.Tensor,
    q_thw: Size3,
    k_thw: Size3,
    rel_pos_t: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    has_cls: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MViTv2's decomposed relative positions for queries q (B, heads, [1 +] Nq, d), taken unscaled,
    as extra query and key channels: (B, heads, [1 +] Nq, Kt + Kh + Kw) and ([1 +] Nk, Kt + Kh + Kw),
    whose product q_rel @ k_rel^T is the additive attention bias

        bias[(t,h,w), (t',h',w')] = q . Rt[t,t'] + q . Rh[h,h'] + q . Rw[w,w'].

    A query's channels hold its dot products with each key coordinate's table row; a key's channels
    are one-hot in its t', h' and w'. With the class token (`has_cls`) both get a zero row first: it
    neither gets nor gives relative positions. Appended to q and k, they let SDPA's fused kernel add
    the bias itself, instead of reading a (Nq, Nk) mask that has to be built and written first: at
    16x224 the first block's mask holds 10M entries, and building the masks took a fifth of MViTv2-S's
    forward.
    """
    qt, qh, qw = q_thw
    kt, kh, kw = k_thw
    grid_q = q[:, :, 1:] if has_cls else q
    r_q = rearrange(grid_q, "b n (t h w) d -> b n t h w d", t=qt, h=qh, w=qw)
    rt, rh, rw = (
        _rel_pos_for_axis(table, q_size, k_size).to(q.dtype)
        for table, q_size, k_size in ((rel_pos_t, qt, kt), (rel_pos_h, qh, kh), (rel_pos_w, qw, kw))
    )
    per_axis = (
        torch.einsum("bnthwd,tkd->bnthwk", r_q, rt),
        torch.einsum("bnthwd,hkd->bnthwk", r_q, rh),
        torch.einsum("bnthwd,wkd->bnthwk", r_q, rw),
    )
    q_rel = rearrange(torch.cat(per_axis, dim=-1), "b n t h w k -> b n (t h w) k")
    coords = torch.cartesian_prod(
        torch.arange(kt, device=q.device), torch.arange(kh, device=q.device), torch.arange(kw, device=q.device)
    ).reshape(-1, 3)  # (Nk, 3) in (t h w) order, the keys' order
    k_rel = torch.cat(
        [F.one_hot(coords[:, axis], size) for axis, size in enumerate((kt, kh, kw))], dim=-1
    ).to(q.dtype)
    if has_cls:
        q_rel, k_rel = F.pad(q_rel, (0, 0, 1, 0)), F.pad(k_rel, (0, 0, 1, 0))
    return q_rel, k_rel


def _is_identity_pool(kernel: Sequence[int], stride: Sequence[int]) -> bool:
    return math.prod(kernel) == 1 and math.prod(stride) == 1


class PoolingAttention(nn.Module):
    """Multi-head pooling attention on tokens (B, [cls +] THW, dim) laid out on a (T, H, W) grid.

    Args:
        dim, dim_out: input and output channels; dim_out > dim is MViTv2's channel expansion at a stage
            transition, done inside attention ("dim_mul_in_att").
        input_size: the (T, H, W) grid the relative-position tables are sized for; other grids interpolate.
        kernel_q / stride_q: query pooling (stride > 1 downsamples the stage).
        kernel_kv / stride_kv: key/value pooling.
        rel_pos: decomposed relative positions in t, h and w.
        residual_pool: add the pooled query to the attention output (MViTv2's residual pooling).
        has_cls: the sequence starts with a class token.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_size: Size3,
        kernel_q: Sequence[int] = (3, 3, 3),
        kernel_kv: Sequence[int] = (3, 3, 3),
        stride_q: Sequence[int] = (1, 1, 1),
        stride_kv: Sequence[int] = (1, 1, 1),
        rel_pos: bool = True,
        residual_pool: bool = True,
        has_cls: bool = True,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"dim_out {dim_out} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.residual_pool = residual_pool
        self.has_cls = has_cls
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool_q = (
            None if _is_identity_pool(kernel_q, stride_q) else AttentionPool(self.head_dim, kernel_q, stride_q, has_cls)
        )
        kv_pooled = not _is_identity_pool(kernel_kv, stride_kv)
        self.pool_k = AttentionPool(self.head_dim, kernel_kv, stride_kv, has_cls) if kv_pooled else None
        self.pool_v = AttentionPool(self.head_dim, kernel_kv, stride_kv, has_cls) if kv_pooled else None

        self.rel_pos_t = self.rel_pos_h = self.rel_pos_w = None
        if rel_pos:
            # Tables are sized for the reference grid: spatial ones span the larger of the q/k grids.
            size = max(input_size[1:])
            q_size = size // stride_q[1]
            kv_size = size // stride_kv[1]
            spatial_len = 2 * max(q_size, kv_size) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(spatial_len, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(spatial_len, self.head_dim))
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            for table in (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w):
                nn.init.trunc_normal_(table, std=0.02)

    def forward(self, x: torch.Tensor, thw: Size3) -> tuple[torch.Tensor, Size3]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        k_thw = thw
        if self.pool_k is not None:
            k, k_thw = self.pool_k(k, thw)
            v, _ = self.pool_v(v, thw)
        q_thw = thw
        if self.pool_q is not None:
            q, q_thw = self.pool_q(q, thw)

        dropout = self.attn_drop if self.training else 0.0
        if self.rel_pos_t is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            q_rel, k_rel = decomposed_rel_pos_channels(
                q, q_thw, k_thw, self.rel_pos_t, self.rel_pos_h, self.rel_pos_w, self.has_cls
            )
            # softmax((q * scale) k^T + q_rel k_rel^T) v, the order torchvision computes it in. Zero
            # channels pad the width to a multiple of 8 and the values to the same width: the fused
            # kernels (CPU flash, CUDA flash and memory-efficient) take nothing else.
            width = -(-(self.head_dim + q_rel.shape[-1]) // 8) * 8
            pad = width - self.head_dim - q_rel.shape[-1]
            q_aug = torch.cat((q * self.head_dim**-0.5, F.pad(q_rel, (0, pad))), dim=-1)
            k_aug = torch.cat((k, F.pad(k_rel, (0, pad)).expand(*k.shape[:2], -1, -1)), dim=-1)
            v_aug = F.pad(v, (0, width - self.head_dim))
            out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, dropout_p=dropout, scale=1.0)
            out = out[..., : self.head_dim]
        if self.residual_pool:
            if not self.has_cls:
                out = out + q
            elif torch.is_grad_enabled():
                out = torch.cat((out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]), dim=2)
            else:
                # Without autograd the attention output is ours to update in place (saves a copy).
                out[:, :, 1:] += q[:, :, 1:]
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out)), q_thw
