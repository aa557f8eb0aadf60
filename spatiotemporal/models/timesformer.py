"""TimeSformer (Bertasius, Wang, Torresani, "Is Space-Time Attention All You Need for Video
Understanding?", ICML 2021): a ViT over frame patches with divided space-time attention.

`attention_type` selects the paper's ablations: "divided_space_time" (the model), "joint_space_time"
(one attention over all patches of all frames) and "space_only" (frames attended independently and
averaged at the end; no time embedding), the last one to show what temporal attention adds.
Module names follow the official code, so its checkpoints map by prefix alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from einops import rearrange, reduce
from torch import nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.drop import drop_path_rates
from spatiotemporal.layers.space_time_attention import Block, DividedSpaceTimeBlock, make_norm
from spatiotemporal.models.registry import ModelSpec, Preprocess, TestProtocol, register_model
from spatiotemporal.tokens.patch_embed import PatchEmbed2d
from spatiotemporal.tokens.pos_embed import LearnedPosEmbed, adapt_pos_embeds

AttentionType = Literal["divided_space_time", "joint_space_time", "space_only"]
ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")


class TimeSformer(nn.Module):
    arch = "timesformer"

    def __init__(
        self,
        num_classes: int = 400,
        num_frames: int = 8,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attention_type: AttentionType = "divided_space_time",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        pos_interpolation: str = "nearest",
    ):
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
        self.attention_type = attention_type
        self.num_frames, self.image_size = num_frames, image_size
        self.embed_dim = embed_dim
        self.grad_checkpointing = grad_checkpointing
        grid = image_size // patch_size

        self.patch_embed = PatchEmbed2d(in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Both tables are resized with `pos_interpolation`: 'nearest', as the official vit.py and HF
        # resize them for inputs of another size, so their weights give their outputs there too.
        self.pos_embed = LearnedPosEmbed((grid, grid), embed_dim, num_prefix_tokens=1, mode=pos_interpolation)
        # Zeros, as the official code starts them (only the spatial table is drawn at random).
        self.time_embed = (
            LearnedPosEmbed((num_frames,), embed_dim, init_std=0.0, mode=pos_interpolation)
            if attention_type != "space_only"
            else None
        )
        self.pos_drop = nn.Dropout(drop_rate)

        block = DividedSpaceTimeBlock if attention_type == "divided_space_time" else Block
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate, norm_eps, "gelu")
            for rate in rates
        )
        self.norm = make_norm(embed_dim, norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The paper starts every block but the first as its pretrained image block: temporal
        # attention contributes nothing until trained.
        for block in list(self.blocks)[1:]:
            if isinstance(block, DividedSpaceTimeBlock):
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enabled

    def embed(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, T, H, W) -> tokens (B, 1 + T*N, D), or (B*T, 1 + N, D) for space-only attention."""
        patches, grid = self.patch_embed(video)  # (B, T, N, D)
        space = self.pos_embed.resized(grid[1:])
        patches = patches + space[:, None, 1:]
        cls = self.cls_token + space[:, :1]
        if self.time_embed is None:
            frames = rearrange(patches, "b t n d -> (b t) n d")
            tokens = torch.cat([cls.expand(frames.shape[0], -1, -1), frames], dim=1)
        else:
            patches = patches + self.time_embed.resized(grid[:1])[:, :, None]
            patches = rearrange(patches, "b t n d -> b (t n) d")
            tokens = torch.cat([cls.expand(patches.shape[0], -1, -1), patches], dim=1)
        return self.pos_drop(tokens), grid

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> the normalised class-token embedding (B, D)."""
        x, grid = self.embed(video)
        for block in self.blocks:
            x = run_block(block, x, grid, checkpointed=self.grad_checkpointing)
        if self.time_embed is None:
            x = reduce(x, "(b t) n d -> b n d", "mean", t=grid[0])
        return self.norm(x[:, 0])

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(video)))

    def adapt_checkpoint(
        self, state_dict: dict[str, torch.Tensor], source: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Resize position tables of a checkpoint trained at another frame count or resolution.

        `source` (how the checkpoint's model was built, when its metadata says) gives the tables' grids;
        without it the spatial table is taken as square and the time table as one row per frame.
        """
        source = dict(source or {})
        grids = {}
        patch = state_dict.get("patch_embed.proj.weight")
        patch_size = patch.shape[-1] if patch is not None else source.get("patch_size")
        if source.get("image_size") and patch_size:
            side = source["image_size"] // patch_size
            grids["pos_embed.weight"] = ((side, side), 1)
        if source.get("num_frames"):
            grids["time_embed.weight"] = ((source["num_frames"],), 0)
        return adapt_pos_embeds(self, state_dict, grids)


def _build(**kwargs) -> TimeSformer:
    return TimeSformer(**kwargs)


# The official configs normalise with 0.45/0.225 (TimeSformer/configs/Kinetics/*.yaml, DATA.MEAN/STD);
# the paper tests with 1 temporal clip x 3 spatial crops of the short side.
_PREPROCESS = Preprocess(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), layout="BCTHW")
_PAPER = "TimeSformer paper (Bertasius et al. 2021), Table 1/7"


def _spec(name: str, frames: int, stride: int, size: int, description: str, target_fps: float | None = 30.0,
          **kwargs) -> ModelSpec:
    published = kwargs.pop("published_params_m", None)
    return register_model(
        ModelSpec(
            name=name,
            family="video",
            builder=_build,
            kwargs={"num_frames": frames, "image_size": size, **kwargs},
            num_frames=frames,
            frame_stride=stride,
            crop_size=size,
            preprocess=_PREPROCESS,
            # The official test (SlowFast's loader, no offset) sums the head's raw logits over 3 crops
            # taken at short side = crop size, on videos resampled to its TARGET_FPS of 30. The tiny
            # models are trained here on frames as they are (target_fps None), and tested so.
            protocol=TestProtocol(temporal_views=1, spatial_crops=3, aggregation="logits", short_side=size,
                                  anchor="slowfast", target_fps=target_fps),
            published_params_m=published,
            params_source=_PAPER if published else "",
            description=description,
        )
    )


_spec("timesformer_base", 8, 32, 224, "TimeSformer, divided space-time attention, ViT-B/16",
      published_params_m=121.4)
_spec("timesformer_hr", 16, 16, 448, "TimeSformer-HR: 16 frames at 448")
_spec("timesformer_large", 96, 4, 224, "TimeSformer-L: 96 frames at 224")
_spec("timesformer_base_joint", 8, 32, 224, "TimeSformer ablation: joint space-time attention",
      attention_type="joint_space_time")
_spec("timesformer_base_space_only", 8, 32, 224, "TimeSformer ablation: space-only attention",
      attention_type="space_only")

_TINY = {"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3}
_spec("timesformer_tiny", 8, 4, 112, "tiny TimeSformer (divided) for CPU tests and demos", target_fps=None, **_TINY)
_spec("timesformer_tiny_joint", 8, 4, 112, "tiny TimeSformer, joint space-time attention", target_fps=None,
      attention_type="joint_space_time", **_TINY)
_spec("timesformer_tiny_space_only", 8, 4, 112, "tiny TimeSformer, space-only attention (no temporal)",
      target_fps=None, attention_type="space_only", **_TINY)
