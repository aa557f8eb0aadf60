"""Token embeddings (patch, tubelet) and position encodings with their interpolation."""

from spatiotemporal.tokens.patch_embed import PatchEmbed2d, TubeletEmbed, inflate_patch_weight
from spatiotemporal.tokens.pos_embed import LearnedPosEmbed, adapt_pos_embeds, interpolate_pos_embed

__all__ = [
    "LearnedPosEmbed",
    "PatchEmbed2d",
    "TubeletEmbed",
    "adapt_pos_embeds",
    "inflate_patch_weight",
    "interpolate_pos_embed",
]
