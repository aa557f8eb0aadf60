"""MViTv2 (Li et al., "MViTv2: Improved Multiscale Vision Transformers", CVPR 2022) for video.

A single sequence of pooling-attention blocks; a block whose query stride is > 1 halves the spatial
grid and (with `dim_mul`) doubles the channels, which is how the stages arise. Configurations are
data (`MViTConfig`, in the form of SlowFast's MVIT config keys) and expand to one `BlockSetting`
per block. Checkpoints from torchvision (`mvit_v2_s`) and SlowFast `.pyth` files load through
`spatiotemporal.convert`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.drop import DropPath
from spatiotemporal.layers.mlp import Mlp
from spatiotemporal.layers.pooling_attention import PoolingAttention, Size3, resize_rel_pos
from spatiotemporal.models.registry import ModelSpec, Preprocess, TestProtocol, register_model, split_config_overrides
from spatiotemporal.tokens.conv_embed import ConvPatchEmbed3d


@dataclass(frozen=True)
class MViTConfig:
    """An MViTv2 network as SlowFast describes it.

    `stage_starts` are the blocks where channels and heads double and the query is pooled with
    stride (1, 2, 2); key/value strides start at `kv_stride` and shrink as queries are pooled, so keys
    and values stay at one resolution ("adaptive" kv stride).
    """

    embed_dim: int = 96
    depth: int = 16
    num_heads: int = 1
    stage_starts: tuple[int, ...] = (1, 3, 14)
    kv_stride: Size3 = (1, 8, 8)
    pool_kernel: Size3 = (3, 3, 3)
    mlp_ratio: float = 4.0
    drop_path: float = 0.2
    head_dropout: float = 0.5
    patch_kernel: Size3 = (3, 7, 7)
    patch_stride: Size3 = (2, 4, 4)
    patch_padding: Size3 = (1, 3, 3)


@dataclass(frozen=True)
class BlockSetting:
    dim: int
    dim_out: int
    num_heads: int
    stride_q: Size3
    stride_kv: Size3


def block_settings(config: MViTConfig) -> list[BlockSetting]:
    settings = []
    dim, heads, kv_stride = config.embed_dim, config.num_heads, config.kv_stride
    for i in range(config.depth):
        stride_q: Size3 = (1, 1, 1)
        dim_out = dim
        if i in config.stage_starts:
            heads, dim_out, stride_q = heads * 2, dim * 2, (1, 2, 2)
            kv_stride = tuple(max(k // q, 1) for k, q in zip(kv_stride, stride_q))  # type: ignore[assignment]
        settings.append(BlockSetting(dim, dim_out, heads, stride_q, kv_stride))
        dim = dim_out
    return settings


class MultiScaleBlock(nn.Module):
    """Pooling attention and MLP with residuals; the residual is max-pooled (and projected when the
    block expands channels) so it matches the pooled queries."""

    def __init__(self, setting: BlockSetting, input_size: Size3, config: MViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(setting.dim, eps=1e-6)
        self.attn = PoolingAttention(
            setting.dim,
            setting.dim_out,
            setting.num_heads,
            input_size,
            kernel_q=config.pool_kernel,
            kernel_kv=config.pool_kernel,
            stride_q=setting.stride_q,
            stride_kv=setting.stride_kv,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(setting.dim_out, eps=1e-6)
        self.mlp = Mlp(setting.dim_out, int(setting.dim_out * config.mlp_ratio))
        self.proj = nn.Linear(setting.dim, setting.dim_out) if setting.dim != setting.dim_out else None
        downsamples = any(s > 1 for s in setting.stride_q)
        kernel_skip = tuple(s + 1 if s > 1 else s for s in setting.stride_q)
        self.pool_skip = (
            nn.MaxPool3d(kernel_skip, setting.stride_q, tuple(k // 2 for k in kernel_skip)) if downsamples else None
        )

    def _pool_residual(self, x: torch.Tensor, thw: Size3) -> torch.Tensor:
        if self.pool_skip is None:
            return x
        # Shares AttentionPool's layout: one "head" holding all channels; the class token passes through.
        cls, grid = x[:, :1], x[:, 1:]
        t, h, w = thw
        grid = grid.transpose(1, 2).unflatten(2, (t, h, w))
        grid = self.pool_skip(grid).flatten(2).transpose(1, 2)
        return torch.cat((cls, grid), dim=1)

    def forward(self, x: torch.Tensor, thw: Size3) -> tuple[torch.Tensor, Size3]:
        x_norm = self.norm1(x)
        attn, thw_out = self.attn(x_norm, thw)
        # Channel expansion happens in attention, so the residual is projected from the normed input.
        shortcut = x if self.proj is None else self.proj(x_norm)
        x = self._pool_residual(shortcut, thw) + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x))), thw_out


class MViTv2(nn.Module):
    """(B, C, T, H, W) normalised clip -> logits (B, num_classes). Classifies from the class token."""

    arch = "mvitv2"

    def __init__(
        self,
        config: MViTConfig = MViTConfig(),
        num_classes: int = 400,
        num_frames: int = 16,
        image_size: int = 224,
        in_channels: int = 3,
        drop_path: float | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.config = config
        self.num_frames, self.image_size = num_frames, image_size
        self.patch_embed = ConvPatchEmbed3d(
            in_channels, config.embed_dim, config.patch_kernel, config.patch_stride, config.patch_padding
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        # The grid the relative-position tables are sized for; other inputs interpolate them.
        grid: Size3 = (
            num_frames // config.patch_stride[0],
            image_size // config.patch_stride[1],
            image_size // config.patch_stride[2],
        )
        rate = config.drop_path if drop_path is None else drop_path
        settings = block_settings(config)
        self.blocks = nn.ModuleList()
        for i, setting in enumerate(settings):
            self.blocks.append(MultiScaleBlock(setting, grid, config, rate * i / max(len(settings) - 1, 1)))
            grid = tuple(g // s for g, s in zip(grid, setting.stride_q))  # type: ignore[assignment]
        self.num_features = settings[-1].dim_out
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enabled

    def adapt_checkpoint(
        self, state_dict: dict[str, torch.Tensor], source: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Resample a checkpoint's relative-position tables to this model's frames and resolution,
        so weights trained at 16x224 fine-tune at, say, 32x312 (called by `load_pretrained`). A table's
        length alone tells its size, so the checkpoint's geometry (`source`) is not needed."""
        own = self.state_dict()
        out = dict(state_dict)
        for key, table in state_dict.items():
            if key.rsplit(".", 1)[-1] in ("rel_pos_t", "rel_pos_h", "rel_pos_w") and key in own:
                length = own[key].shape[0]
                if table.shape[0] != length:
                    out[key] = resize_rel_pos(table, length)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, C, T, H, W) -> class-token embedding (B, D)."""
        x, thw = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        for block in self.blocks:
            x, thw = run_block(block, x, thw, checkpointed=self.grad_checkpointing)
        return self.norm(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


CONFIGS: dict[str, MViTConfig] = {
    "mvitv2_s": MViTConfig(depth=16, stage_starts=(1, 3, 14), drop_path=0.2),
    "mvitv2_b": MViTConfig(depth=24, stage_starts=(2, 5, 21), drop_path=0.3),
    # CPU tests and demos: 8 frames at 96 px -> a 4x24x24 token grid, 5 blocks, 32 -> 128 channels.
    "mvitv2_tiny": MViTConfig(embed_dim=32, depth=5, stage_starts=(1, 3), kv_stride=(1, 4, 4), drop_path=0.0),
}

# SlowFast / torchvision MViT weights use mean 0.45 and std 0.225 on every channel.
KINETICS_PREPROCESS = Preprocess(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), layout="BCTHW")
# MViTv2's Kinetics protocol (SlowFast configs): 5 temporal clips placed with USE_OFFSET_SAMPLING x
# 1 centre crop; one crop means SlowFast resizes to TRAIN_JITTER_SCALES[0] = 256 before cropping 224.
# Videos are resampled to SlowFast's TARGET_FPS of 30 first. The configs decode with torchvision,
# whose decoder makes that resize itself (swscale's area filter, long side rounded).
MVIT_PROTOCOL = TestProtocol(temporal_views=5, spatial_crops=1, aggregation="softmax", short_side=256,
                             anchor="slowfast_offset", target_fps=30.0, geometry="slowfast_decoder")


def _build(config_name: str):
    def build(num_classes: int = 400, **overrides) -> MViTv2:
        config, rest = split_config_overrides(CONFIGS[config_name], overrides)
        return MViTv2(config, num_classes=num_classes, **rest)

    build.__name__ = f"build_{config_name}"
    return build


# Configs written before every video model took `image_size` name it `img_size` here.
_ALIASES = {"img_size": "image_size"}

register_model(
    ModelSpec(
        name="mvitv2_s",
        family="video",
        builder=_build("mvitv2_s"),
        kwargs={"num_frames": 16, "image_size": 224},
        kwarg_aliases=_ALIASES,
        num_frames=16,
        frame_stride=4,
        crop_size=224,
        preprocess=KINETICS_PREPROCESS,
        protocol=MVIT_PROTOCOL,
        published_params_m=34.5,
        params_source="MViTv2 paper Table 3 (K400, MViTv2-S 16x4: 34.5M)",
        description="MViTv2-S 16x4, Kinetics-400",
    )
)
register_model(
    ModelSpec(
        name="mvitv2_b",
        family="video",
        builder=_build("mvitv2_b"),
        kwargs={"num_frames": 32, "image_size": 224},
        kwarg_aliases=_ALIASES,
        num_frames=32,
        frame_stride=3,
        crop_size=224,
        preprocess=KINETICS_PREPROCESS,
        protocol=MVIT_PROTOCOL,
        published_params_m=51.2,
        params_source="MViTv2 paper Table 3 (K400, MViTv2-B 32x3: 51.2M)",
        description="MViTv2-B 32x3, Kinetics-400",
    )
)
register_model(
    ModelSpec(
        name="mvitv2_tiny",
        family="video",
        builder=_build("mvitv2_tiny"),
        kwargs={"num_frames": 8, "image_size": 96},
        kwarg_aliases=_ALIASES,
        num_frames=8,
        frame_stride=4,
        crop_size=96,
        preprocess=KINETICS_PREPROCESS,
        protocol=TestProtocol(temporal_views=1, spatial_crops=1, anchor="slowfast_offset"),
        description="tiny MViTv2 for CPU tests and demos (32-d, 5 blocks)",
    )
)
