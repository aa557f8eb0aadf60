"""ViViT (Arnab et al., "ViViT: A Video Vision Transformer", ICCV 2021): tubelet tokens and four ways
to attend over them.

- "joint" (Model 1): one transformer over all space-time tokens plus a class token.
- "factorised_encoder" (Model 2): a spatial transformer per temporal index (class token per frame),
  then a temporal transformer over the frames' class tokens.
- "factorised_self_attention" (Model 3): each block attends in space, then in time.
- "factorised_dot_product" (Model 4): each block splits its heads between space and time.

Models 3 and 4 have no class token (the paper drops it to keep the space/time regrouping unambiguous)
and classify the mean of the final tokens. The MLPs use the tanh GELU of the reference (flax) code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from spatiotemporal.layers.checkpointing import run_block
from spatiotemporal.layers.drop import drop_path_rates
from spatiotemporal.layers.space_time_attention import (
    Block,
    FactorisedDotProductBlock,
    FactorisedSelfAttentionBlock,
    make_norm,
)
from spatiotemporal.models.registry import ModelSpec, Preprocess, TestProtocol, register_model
from spatiotemporal.tokens.patch_embed import INFLATION_MODES, InflationMode, TubeletEmbed, inflate_patch_weight
from spatiotemporal.tokens.pos_embed import LearnedPosEmbed, PositionTableError, adapt_pos_embeds, grid_candidates

Variant = Literal["joint", "factorised_encoder", "factorised_self_attention", "factorised_dot_product"]
VARIANTS = ("joint", "factorised_encoder", "factorised_self_attention", "factorised_dot_product")
_BLOCKS = {
    "joint": Block,
    "factorised_encoder": Block,
    "factorised_self_attention": FactorisedSelfAttentionBlock,
    "factorised_dot_product": FactorisedDotProductBlock,
}


class ViViT(nn.Module):
    arch = "vivit"

    def __init__(
        self,
        num_classes: int = 400,
        variant: Variant = "joint",
        num_frames: int = 32,
        image_size: int = 224,
        tubelet_size: tuple[int, int, int] = (2, 16, 16),
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        temporal_depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act: str = "gelu_tanh",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        inflation: InflationMode = "central_frame",
        pos_interpolation: str | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if inflation not in INFLATION_MODES:
            raise ValueError(f"inflation must be one of {INFLATION_MODES}, got {inflation!r}")
        self.variant = variant
        self.num_frames, self.image_size = num_frames, image_size
        self.embed_dim = embed_dim
        self.grad_checkpointing = grad_checkpointing
        # How a 2D (image) patch embedding in a checkpoint becomes this model's tubelet embedding.
        self.inflation = inflation
        self.use_cls_token = variant in ("joint", "factorised_encoder")
        grid = (num_frames // tubelet_size[0], image_size // tubelet_size[1], image_size // tubelet_size[2])

        self.patch_embed = TubeletEmbed(in_channels, embed_dim, tubelet_size)
        prefix = 1 if self.use_cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.use_cls_token else None
        pos_grid = grid[1:] if variant == "factorised_encoder" else grid
        self.pos_embed = LearnedPosEmbed(pos_grid, embed_dim, num_prefix_tokens=prefix, mode=pos_interpolation)
        self.pos_drop = nn.Dropout(drop_rate)

        spatial_depth = depth
        total = depth + (temporal_depth if variant == "factorised_encoder" else 0)
        rates = drop_path_rates(drop_path_rate, total)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                      norm_eps=norm_eps, act=act)
        block = _BLOCKS[variant]
        self.blocks = nn.ModuleList(
            block(embed_dim, num_heads, drop_path=rate, **common) for rate in rates[:spatial_depth]
        )
        self.norm = make_norm(embed_dim, norm_eps)
        if variant == "factorised_encoder":
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.temporal_pos_embed = LearnedPosEmbed(grid[:1], embed_dim, num_prefix_tokens=1, mode=pos_interpolation)
            self.temporal_blocks = nn.ModuleList(
                Block(embed_dim, num_heads, drop_path=rate, **common) for rate in rates[spatial_depth:]
            )
            self.temporal_norm = make_norm(embed_dim, norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.normal_(module.bias, std=1e-6)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The reference zero-initialises the classifier so fine-tuning starts from uniform logits.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enabled

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        for block in blocks:
            x = run_block(block, x, grid, checkpointed=self.grad_checkpointing)
        return x

    def _with_cls(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> the clip embedding (B, D): class token, or token mean for Models 3/4."""
        tokens, grid = self.patch_embed(video)  # (B, t, N, D)
        if self.variant == "factorised_encoder":
            frames = rearrange(tokens, "b t n d -> (b t) n d")
            x = self.pos_drop(self.pos_embed(self._with_cls(self.cls_token, frames), grid[1:]))
            x = self.norm(self._run(self.blocks, x, grid))
            x = rearrange(x[:, 0], "(b t) d -> b t d", t=grid[0])
            x = self.temporal_pos_embed(self._with_cls(self.temporal_cls_token, x), grid[:1])
            x = self._run(self.temporal_blocks, x, grid)
            return self.temporal_norm(x[:, 0])
        x = rearrange(tokens, "b t n d -> b (t n) d")
        if self.use_cls_token:
            x = self._with_cls(self.cls_token, x)
        x = self.pos_drop(self.pos_embed(x, grid))
        x = self.norm(self._run(self.blocks, x, grid))
        return x[:, 0] if self.use_cls_token else x.mean(dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(video)))

    def adapt_checkpoint(
        self, state_dict: dict[str, torch.Tensor], source: Mapping[str, Any] | None = None
    ) -> dict[str, torch.Tensor]:
        """Fit a checkpoint to this model (called by `load_pretrained`).

        An image model's 2D patch embedding is inflated to tubelets (`self.inflation`), and position
        tables are resized from the checkpoint's grid: known from `source` (how the checkpoint's model
        was built, when its metadata says so) and from the checkpoint itself (an image or a factorised
        encoder has a spatial table, the other variants a space-time one); guessed only otherwise.
        """
        state = dict(state_dict)
        patch = state.get("patch_embed.proj.weight")
        image = patch is not None and patch.ndim == 4
        if image:
            frames = self.patch_embed.tubelet_size[0]
            state["patch_embed.proj.weight"] = inflate_patch_weight(patch, frames, self.inflation)
        return adapt_pos_embeds(self, state, self._checkpoint_grids(state, dict(source or {}), patch, image))

    def _checkpoint_grids(self, state: dict, source: dict, patch: torch.Tensor | None, image: bool) -> dict:
        """(grid, prefix tokens) of the checkpoint's position tables, as far as it can be told."""
        variant = source.get("variant")
        if image or variant == "factorised_encoder" or (variant is None and "temporal_pos_embed.weight" in state):
            kind = "space"
        elif variant is not None or (patch is not None and patch.ndim == 5):
            kind = "space_time"
        else:
            return {}
        if patch is not None:
            tubelet = (1, *patch.shape[-2:]) if image else tuple(patch.shape[2:])
        else:
            tubelet = tuple(source.get("tubelet_size") or self.patch_embed.tubelet_size)
        size, frames = source.get("image_size"), source.get("num_frames")
        space = (size // tubelet[1], size // tubelet[2]) if size and not image else None
        grids: dict[str, tuple] = {}
        if frames and not image and "temporal_pos_embed.weight" in state:
            grids["temporal_pos_embed.weight"] = ((frames // tubelet[0],), 1)
        table = state.get("pos_embed.weight")
        if table is None or table.ndim != 3:
            return grids
        if kind == "space_time":
            if self.variant == "factorised_encoder":
                raise PositionTableError(
                    "pos_embed.weight",
                    f"the checkpoint's table ({table.shape[1]} tokens) covers space and time, and the factorised "
                    f"encoder's covers space only (1 + {self.pos_embed.grid}); a joint, factorised self-attention "
                    "or dot-product checkpoint does not initialise Model 2",
                )
            prefix = None if variant is None else int(variant == "joint")  # Models 3/4 have no class token
            grid = (frames // tubelet[0], *space) if frames and space else None
            grids["pos_embed.weight"] = (grid, prefix)
            return grids
        # A spatial table (an image model's or Model 2's), with its class token; an image ViT's size is
        # read off its table, as such a checkpoint carries no geometry of ours.
        prefix = 1
        if space is None:
            square = grid_candidates(table.shape[1] - prefix, (1, 1))
            if not square:
                raise PositionTableError("pos_embed.weight", f"a spatial table of {table.shape[1]} tokens is not a "
                                                             "class token and a square grid")
            space = square[0]
        grids["pos_embed.weight"] = (space if self.variant == "factorised_encoder" else (1, *space), prefix)
        return grids


def _build(**kwargs) -> ViViT:
    return ViViT(**kwargs)


# Inputs are scaled to [-1, 1] (x / 127.5 - 1), as the scenic code and HF's processor do; the paper
# tests Kinetics with 4 temporal clips x 3 spatial crops and averages logits.
_PREPROCESS = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), layout="BCTHW")
# scenic resizes the short side to 256 (`min_resize`) and places the clips with DMVR's linspace.
_PROTOCOL = TestProtocol(temporal_views=4, spatial_crops=3, aggregation="logits", short_side=256, anchor="dmvr",
                         geometry="dmvr")
_PAPER = "ViViT paper (Arnab et al. 2021), Table 4 (model variants, ViViT-B, 400 classes)"
_LARGE = {"embed_dim": 1024, "depth": 24, "num_heads": 16}


def _spec(name: str, variant: str, description: str, frames: int = 32, stride: int = 2, size: int = 224,
          published_params_m: float | None = None, protocol: TestProtocol = _PROTOCOL, **kwargs) -> ModelSpec:
    return register_model(
        ModelSpec(
            name=name,
            family="video",
            builder=_build,
            kwargs={"variant": variant, "num_frames": frames, "image_size": size, **kwargs},
            num_frames=frames,
            frame_stride=stride,
            crop_size=size,
            preprocess=_PREPROCESS,
            protocol=protocol,
            published_params_m=published_params_m,
            params_source=_PAPER if published_params_m else "",
            description=description,
        )
    )


_spec("vivit_b_joint", "joint", "ViViT-B/16x2 Model 1: joint space-time attention", published_params_m=88.9)
_spec("vivit_b_fe", "factorised_encoder", "ViViT-B/16x2 Model 2: factorised encoder (12 spatial + 4 temporal)",
      published_params_m=115.1)
_spec("vivit_l_fe", "factorised_encoder", "ViViT-L/16x2 Model 2: factorised encoder (24 spatial + 4 temporal)",
      **_LARGE)
_spec("vivit_b_fsa", "factorised_self_attention", "ViViT-B/16x2 Model 3: factorised self-attention",
      published_params_m=117.3)
_spec("vivit_b_fdp", "factorised_dot_product", "ViViT-B/16x2 Model 4: factorised dot-product attention",
      published_params_m=88.9)

_TINY = {"tubelet_size": (2, 16, 16), "embed_dim": 192, "depth": 4, "num_heads": 4, "temporal_depth": 2}
_TINY_PROTOCOL = TestProtocol(temporal_views=4, spatial_crops=3, aggregation="logits", short_side=112, anchor="dmvr",
                              geometry="dmvr")
_spec("vivit_tiny", "joint", "tiny ViViT (Model 1) for CPU tests and demos", frames=8, stride=4, size=112,
      protocol=_TINY_PROTOCOL, **_TINY)
_spec("vivit_tiny_fe", "factorised_encoder", "tiny ViViT Model 2", frames=8, stride=4, size=112,
      protocol=_TINY_PROTOCOL, **_TINY)
_spec("vivit_tiny_fsa", "factorised_self_attention", "tiny ViViT Model 3", frames=8, stride=4, size=112,
      protocol=_TINY_PROTOCOL, **_TINY)
_spec("vivit_tiny_fdp", "factorised_dot_product", "tiny ViViT Model 4", frames=8, stride=4, size=112,
      protocol=_TINY_PROTOCOL, **_TINY)
