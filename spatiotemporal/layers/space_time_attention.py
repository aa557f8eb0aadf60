"""Space-time transformer blocks for ViT-style video models.

Tokens are (B, P + T*N, D): P prefix (class) tokens, then the patch tokens frame by frame on a
(T, h, w) grid, N = h*w. Each block regroups the tokens with einops and runs the shared `Attention`
(always `F.scaled_dot_product_attention`), so every variant uses the fused kernels:

- `Block`: plain pre-norm block over the whole sequence. Joint space-time attention (TimeSformer
  "joint_space_time", ViViT Model 1) or, fed one frame per sequence, space-only attention; also the
  spatial and temporal encoders of ViViT Model 2 (factorised encoder).
- `DividedSpaceTimeBlock`: TimeSformer's divided attention: temporal attention over the T tokens at
  each location, then spatial attention within each frame (with the class token), then the MLP.
- `FactorisedSelfAttentionBlock`: ViViT Model 3: spatial then temporal self-attention, then the MLP.
- `FactorisedDotProductBlock`: ViViT Model 4: one attention whose heads are split, half attending in
  space and half in time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import nn

from spatiotemporal.layers.attention import Attention
from spatiotemporal.layers.drop import DropPath
from spatiotemporal.layers.mlp import Mlp

Grid = tuple[int, int, int]


def make_norm(dim: int, eps: float = 1e-6) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps)


def make_act(name: str) -> Callable[[], nn.Module]:
    """'gelu' (exact erf; TimeSformer) or 'gelu_tanh' (the tanh approximation flax uses; ViViT)."""
    if name == "gelu":
        return nn.GELU
    if name == "gelu_tanh":
        return partial(nn.GELU, approximate="tanh")
    raise ValueError(f"unknown activation {name!r}")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act: str = "gelu",
    ):
        super().__init__()
        self.norm1 = make_norm(dim, norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = make_norm(dim, norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=make_act(act), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DividedSpaceTimeBlock(Block):
    """TimeSformer divided attention. Expects one class token: x is (B, 1 + T*N, D).

    The class token takes no part in temporal attention; in spatial attention every frame sees a copy
    of it and the frames' updates to it are averaged, as in the TimeSformer paper's code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act: str = "gelu",
    ):
        # The spatial attention, MLP and their norms are the plain block's; time adds its own.
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, norm_eps, act)
        self.temporal_norm1 = make_norm(dim, norm_eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        frames = grid[0]
        cls, patches = x[:, :1], x[:, 1:]

        by_location = rearrange(patches, "b (t n) d -> (b n) t d", t=frames)
        temporal = self.drop_path(self.temporal_attn(self.temporal_norm1(by_location)))
        temporal = rearrange(temporal, "(b n) t d -> b (t n) d", b=x.shape[0])
        patches = patches + self.temporal_fc(temporal)

        by_frame = rearrange(patches, "b (t n) d -> (b t) n d", t=frames)
        by_frame = torch.cat([repeat(cls, "b 1 d -> (b t) 1 d", t=frames), by_frame], dim=1)
        spatial = self.drop_path(self.attn(self.norm1(by_frame)))
        cls = cls + reduce(spatial[:, :1], "(b t) 1 d -> b 1 d", "mean", t=frames)
        patches = patches + rearrange(spatial[:, 1:], "(b t) n d -> b (t n) d", t=frames)

        x = torch.cat([cls, patches], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FactorisedSelfAttentionBlock(Block):
    """ViViT Model 3. No class token: x is (B, T*N, D). Spatial then temporal self-attention, then MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act: str = "gelu_tanh",
    ):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, norm_eps, act)
        self.temporal_norm1 = make_norm(dim, norm_eps)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        frames = grid[0]
        by_frame = rearrange(x, "b (t n) d -> (b t) n d", t=frames)
        by_frame = by_frame + self.drop_path(self.attn(self.norm1(by_frame)))
        by_location = rearrange(by_frame, "(b t) n d -> (b n) t d", t=frames)
        by_location = by_location + self.drop_path(self.temporal_attn(self.temporal_norm1(by_location)))
        x = rearrange(by_location, "(b n) t d -> b (t n) d", b=x.shape[0])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FactorisedDotProductAttention(Attention):
    """ViViT Model 4: the same projections as `Attention`, but the first `spatial_heads` heads attend
    within each frame and the remaining heads attend across frames at each location."""

    def __init__(self, dim: int, num_heads: int, spatial_heads: int | None = None, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.spatial_heads = num_heads // 2 if spatial_heads is None else spatial_heads
        if not 0 < self.spatial_heads < num_heads:
            raise ValueError(f"spatial_heads must split {num_heads} heads, got {self.spatial_heads}")

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:  # type: ignore[override]
        frames, hs = grid[0], self.spatial_heads
        q, k, v = rearrange(
            self.qkv(x), "b (t n) (three h d) -> three b h t n d", three=3, h=self.num_heads, t=frames
        )
        dropout = self.attn_drop if self.training else 0.0

        def spatial(a: torch.Tensor) -> torch.Tensor:
            return rearrange(a[:, :hs], "b h t n d -> (b t) h n d")

        def temporal(a: torch.Tensor) -> torch.Tensor:
            return rearrange(a[:, hs:], "b h t n d -> (b n) h t d")

        out_s = F.scaled_dot_product_attention(spatial(q), spatial(k), spatial(v), dropout_p=dropout)
        out_t = F.scaled_dot_product_attention(temporal(q), temporal(k), temporal(v), dropout_p=dropout)
        out_s = rearrange(out_s, "(b t) h n d -> b (t n) (h d)", t=frames)
        out_t = rearrange(out_t, "(b n) h t d -> b (t n) (h d)", b=x.shape[0])
        return self.proj_drop(self.proj(torch.cat([out_s, out_t], dim=-1)))


class FactorisedDotProductBlock(Block):
    """ViViT Model 4 block: a pre-norm block whose attention is factorised over heads."""

    def __init__(self, dim: int, num_heads: int, *, spatial_heads: int | None = None, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.attn = FactorisedDotProductAttention(
            dim,
            num_heads,
            spatial_heads=spatial_heads,
            qkv_bias=kwargs.get("qkv_bias", True),
            attn_drop=kwargs.get("attn_drop", 0.0),
            proj_drop=kwargs.get("drop", 0.0),
        )

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))
