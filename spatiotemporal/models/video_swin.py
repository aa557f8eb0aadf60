"""Video Swin Transformer (Liu et al., CVPR 2022): a 4-stage hierarchy of 3D shifted-window blocks.

Configurations are data (`SwinConfig`); checkpoints from torchvision (`swin3d_t/s/b`) and the
official Video-Swin-Transformer repository load through `spatiotemporal.convert`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.drop import DropPath
from spatiotemporal.layers.mlp import Mlp
from spatiotemporal.layers.window_attention3d import WindowAttention3d
from spatiotemporal.models.registry import ModelSpec, Preprocess, TestProtocol, register_model, split_config_overrides
from spatiotemporal.tokens.conv_embed import PatchMerging3d, PatchPartition3d


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    patch_size: tuple[int, int, int] = (2, 4, 4)
    window_size: tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    drop_path: float = 0.1
    head_dropout: float = 0.5


class SwinBlock3d(nn.Module):
    """Pre-norm (shifted) window attention then MLP, each with a residual and drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3d(dim, num_heads, window_size, shift_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """Blocks alternating regular and half-window-shifted windows, then optional 2x2 patch merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: Sequence[int],
        mlp_ratio: float,
        drop_paths: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        half = [w // 2 for w in window_size]
        self.blocks = nn.ModuleList(
            SwinBlock3d(dim, num_heads, window_size, (0, 0, 0) if i % 2 == 0 else half, mlp_ratio, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging3d(dim) if downsample else None

    def forward(self, x: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
        for block in self.blocks:
            x = run_block(block, x, checkpointed=checkpointed)
        return x if self.downsample is None else self.downsample(x)


class VideoSwin(nn.Module):
    """(B, C, T, H, W) normalised clip -> logits (B, num_classes).

    No parameter depends on the input size (windows are clipped and the input padded), so
    `num_frames` and `image_size` only record the clip the model is meant for, as the other video
    models' do.
    """

    arch = "video_swin"

    def __init__(
        self,
        config: SwinConfig = SwinConfig(),
        num_classes: int = 400,
        in_channels: int = 3,
        drop_path: float | None = None,
        grad_checkpointing: bool = False,
        num_frames: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.num_frames, self.image_size = num_frames, image_size
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchPartition3d(config.patch_size, in_channels, config.embed_dim, norm=True)
        total = sum(config.depths)
        rate = config.drop_path if drop_path is None else drop_path
        # Stochastic depth grows linearly with depth, from 0 at the first block to `rate` at the last.
        rates = [rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            self.stages.append(
                SwinStage(
                    config.embed_dim * 2**i,
                    depth,
                    heads,
                    config.window_size,
                    config.mlp_ratio,
                    rates[start : start + depth],
                    downsample=i < len(config.depths) - 1,
                )
            )
            start += depth
        self.num_features = config.embed_dim * 2 ** (len(config.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enabled

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, C, T, H, W) -> pooled embedding (B, D)."""
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x, checkpointed=self.grad_checkpointing)
        return self.norm(x).mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x)))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


CONFIGS: dict[str, SwinConfig] = {
    "swin3d_t": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path=0.1),
    "swin3d_s": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path=0.1),
    "swin3d_b": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path=0.1),
    # CPU tests and demos: 8 frames at 112 px -> a 4x28x28 token grid; trains on 2 cores in minutes.
    "swin3d_tiny": SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(4, 7, 7), drop_path=0.0),
}

# torchvision's Swin3D weights use the ImageNet statistics (Swin3D_*_Weights transforms).
IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="BCTHW")
# Video Swin's Kinetics protocol (its mmaction2 0.x configs): 4 temporal clips x 3 spatial crops,
# short side 224, sized by mmcv's Resize(scale=(-1, 224)) and cut by mmaction2's ThreeCrop.
SWIN_PROTOCOL = TestProtocol(temporal_views=4, spatial_crops=3, aggregation="softmax", short_side=224,
                             anchor="mmaction2_0x", geometry="mmaction2")


def _build(config_name: str):
    def build(num_classes: int = 400, **overrides) -> VideoSwin:
        config, rest = split_config_overrides(CONFIGS[config_name], overrides)
        return VideoSwin(config, num_classes=num_classes, **rest)

    build.__name__ = f"build_{config_name}"
    return build


_PUBLISHED = {
    "swin3d_t": (28.16, "torchvision Swin3D_T_Weights num_params 28,158,070"),
    "swin3d_s": (49.82, "torchvision Swin3D_S_Weights num_params 49,816,678"),
    "swin3d_b": (88.05, "torchvision Swin3D_B_Weights num_params 88,048,984"),
}

for _name in ("swin3d_t", "swin3d_s", "swin3d_b"):
    register_model(
        ModelSpec(
            name=_name,
            family="video",
            builder=_build(_name),
            kwargs={"num_frames": 32, "image_size": 224},
            num_frames=32,
            frame_stride=2,
            crop_size=224,
            preprocess=IMAGENET,
            protocol=SWIN_PROTOCOL,
            published_params_m=_PUBLISHED[_name][0],
            params_source=_PUBLISHED[_name][1],
            description=f"Video Swin {_name[-1].upper()} (window 8x7x7, patch 2x4x4), Kinetics-400",
        )
    )

register_model(
    ModelSpec(
        name="swin3d_tiny",
        family="video",
        builder=_build("swin3d_tiny"),
        kwargs={"num_frames": 8, "image_size": 112},
        num_frames=8,
        frame_stride=4,
        crop_size=112,
        preprocess=IMAGENET,
        protocol=TestProtocol(temporal_views=1, spatial_crops=1, anchor="mmaction2_0x"),
        description="tiny Video Swin for CPU tests and demos (32-d, window 4x7x7)",
    )
)
