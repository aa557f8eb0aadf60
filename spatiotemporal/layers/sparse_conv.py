"""Sparse-voxel convolution through spconv, made correct on CPU in this one place.

spconv 2.3.8's CPU build has two defects, both read off its source
(`spconv/pytorch/ops.py`):

1. Wrong values with more than one torch thread. `indice_conv` on CPU runs gather -> mm ->
   `SpconvOps.scatter_add_cpu` per kernel offset; with several intra-op threads a few output sites
   come out wrong (measured: 50 of 3,000 sites off by up to 0.55 on a 3x3x3 submanifold conv),
   with one thread the result matches a dense conv3d to float rounding. Index generation
   (`get_indice_pairs`) is thread-safe; the race is in the convolution step. Every spconv CPU call
   below therefore runs under `spconv_threads()`, which pins torch to one thread and restores it.
2. Backward needs CUDA. `indice_conv_backward` calls `get_current_stream()` ->
   `torch.cuda.current_stream()` unconditionally (the forward guards it with `is_cuda`), so any
   backward on CPU raises "Found no NVIDIA driver". `_IndiceConvFunction` keeps spconv's kernels
   for the forward (and for the backward on CUDA), and on CPU computes the gradient itself from
   the same rulebook: for each kernel offset k with pairs (i -> o),
   d_input[i] += d_out[o] @ W_k and d_W_k += d_out[o]^T @ input[i].

Weights use spconv's layout (out, kz, ky, kx, in), so checkpoints of spconv models load as they are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from spatiotemporal.layers.point_ops import single_thread


@contextlib.contextmanager
def spconv_threads(device: torch.device) -> Iterator[None]:
    """One torch thread around spconv's CPU kernels (see defect 1); a no-op on CUDA.

    `single_thread` holds point_ops.THREAD_COUNT_LOCK for the whole block, so spconv calls in
    different threads already take turns with each other and with every other thread-count change;
    a second lock here would only add a lock-order to get wrong (and, not being re-entrant, hang a
    nested call)."""
    if device.type != "cpu":
        yield
        return
    with single_thread():
        yield


@dataclass
class SparseVoxels:
    """Occupied voxels of a batch of clouds: `indices` (M, 4) int32 rows (batch, x, y, z).

    Rulebooks (which input voxel feeds which output voxel through which kernel offset) are built
    once per kernel size and reused by every convolution on the same voxels.
    """

    indices: Tensor
    spatial_shape: list[int]
    batch_size: int
    _rulebooks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_grid(cls, grid_coord: Tensor, batch: Tensor) -> "SparseVoxels":
        """grid_coord (M, 3) non-negative integers, one row per occupied voxel, batch (M,)."""
        if grid_coord.numel() and grid_coord.min() < 0:
            raise ValueError("grid coordinates must be non-negative")
        indices = torch.cat([batch[:, None], grid_coord], dim=1).int().contiguous()
        shape = (grid_coord.max(0).values + 1).tolist() if len(grid_coord) else [1, 1, 1]
        return cls(indices, [int(s) for s in shape], int(batch.max()) + 1 if len(batch) else 1)

    def rulebook(self, kernel_size: int, dilation: int = 1) -> tuple[Tensor, Tensor]:
        key = (kernel_size, dilation)
        if key not in self._rulebooks:
            from spconv.core import ConvAlgo
            from spconv.pytorch import ops

            with spconv_threads(self.indices.device):
                _, pairs, pair_num = ops.get_indice_pairs(
                    self.indices, self.batch_size, self.spatial_shape, ConvAlgo.Native,
                    [kernel_size] * 3, [1] * 3, [kernel_size // 2 * dilation] * 3,
                    [dilation] * 3, [0] * 3, subm=True,
                )
            self._rulebooks[key] = (pairs, pair_num)
        return self._rulebooks[key]


def _offset_pairs(pairs: Tensor, pair_num: Tensor, subm: bool) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(kernel offset, input rows, output rows) as spconv lays out its rulebook: for submanifold
    convs only the first half of `pair_num` is filled, the mirrored offsets reuse those counts, and
    the centre offset is the identity (handled by the caller)."""
    kv = pairs.shape[1]
    center = kv // 2
    counts = pair_num.tolist()
    for k in range(kv):
        if subm and k == center:
            continue
        n = counts[kv - k - 1] if subm and k > center else counts[k]
        if n > 0:
            yield k, pairs[0, k, :n].long(), pairs[1, k, :n].long()


class _IndiceConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, pairs: Tensor, pair_num: Tensor, subm: bool):
        from spconv.pytorch import ops

        features = features.contiguous()
        weight = weight.contiguous()
        ctx.save_for_backward(features, weight, pairs, pair_num)
        ctx.subm = subm
        with spconv_threads(features.device):
            return ops.indice_conv(features, weight, pairs, pair_num, features.shape[0], False, subm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        features, weight, pairs, pair_num = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        if features.is_cuda:
            from spconv.pytorch import ops

            d_in, d_w = ops.indice_conv_backward(
                features, weight, grad_out, pairs, pair_num, False, ctx.subm
            )
            return d_in, d_w, None, None, None
        w = weight.reshape(weight.shape[0], -1, weight.shape[-1])  # (out, kv, in)
        d_w = torch.zeros_like(w)
        d_in = torch.zeros_like(features)
        if ctx.subm:
            center = w.shape[1] // 2
            d_in += grad_out @ w[:, center]
            d_w[:, center] = grad_out.T @ features
        for k, rows_in, rows_out in _offset_pairs(pairs, pair_num, ctx.subm):
            g = grad_out[rows_out]
            d_in.index_add_(0, rows_in, g @ w[:, k])
            d_w[:, k] += g.T @ features[rows_in]
        return d_in, d_w.reshape(weight.shape), None, None, None


class SubMConv3d(nn.Module):
    """Submanifold sparse 3-D convolution: outputs only at occupied voxels (Graham et al. 2018)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"submanifold convolution needs an odd kernel size, got {kernel_size}")
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, *(kernel_size,) * 3, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * kernel_size**3
        nn.init.uniform_(self.weight, -(fan_in**-0.5), fan_in**-0.5)

    def forward(self, feat: Tensor, voxels: SparseVoxels) -> Tensor:
        pairs, pair_num = voxels.rulebook(self.kernel_size)
        out = _IndiceConvFunction.apply(feat, self.weight, pairs, pair_num, True)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        o, k, _, _, i = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, bias={self.bias is not None}"


class SparseConvPE(nn.Module):
    """Conditional positional encoding (xCPE, Wu et al. PTv3): a submanifold conv, a linear layer
    and a LayerNorm on the voxel features, added back residually by the caller."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = SubMConv3d(channels, channels, kernel_size)
        self.linear = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)

    def forward(self, feat: Tensor, voxels: SparseVoxels) -> Tensor:
        return self.norm(self.linear(self.conv(feat, voxels)))
