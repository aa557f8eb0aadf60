"""Layers shared across models: attention variants, MLP, drop-path, and the point operators."""

from spatiotemporal.layers.attention import Attention
from spatiotemporal.layers.drop import DropPath
from spatiotemporal.layers.mlp import Mlp

__all__ = ["Attention", "DropPath", "Mlp"]
