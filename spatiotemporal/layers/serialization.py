"""Space-filling-curve codes for integer grid coordinates: z-order (Morton) and Hilbert.

Sorting points by a curve code puts points that are close in space close in the sequence, which is
what patch grouping (and the chunked kNN in `point_ops`) relies on. The Hilbert curve keeps that
promise more strictly: consecutive Hilbert codes are always face-adjacent grid cells, while z-order
jumps at every octant boundary but is cheaper to compute.

Codes are int64. With `depth` bits per axis the code uses 3 * depth bits, and `serialize` puts the
batch index above them, so depth <= 16 leaves room for 2**15 clouds in one batch.
"""

from __future__ import annotations

import torch

MAX_DEPTH = 16


def _check(grid: torch.Tensor, depth: int) -> torch.Tensor:
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"grid coordinates must be (N, 3), got {tuple(grid.shape)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in [1, {MAX_DEPTH}], got {depth}")
    grid = grid.long()
    if grid.numel() and (grid.min() < 0 or grid.max() >= (1 << depth)):
        raise ValueError(f"grid coordinates must lie in [0, 2**{depth}) for depth {depth}")
    return grid


def _interleave(axes: list[torch.Tensor], depth: int) -> torch.Tensor:
    """Bit j of axis i goes to bit 3*j + (2 - i): axis 0 is the most significant of each triple."""
    code = torch.zeros_like(axes[0])
    for j in range(depth):
        for i, a in enumerate(axes):
            code |= ((a >> j) & 1) << (3 * j + (2 - i))
    return code


def _deinterleave(code: torch.Tensor, depth: int) -> list[torch.Tensor]:
    axes = [torch.zeros_like(code) for _ in range(3)]
    for j in range(depth):
        for i in range(3):
            axes[i] |= ((code >> (3 * j + (2 - i))) & 1) << j
    return axes


def z_order_encode(grid: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    grid = _check(grid, depth)
    return _interleave([grid[:, 0], grid[:, 1], grid[:, 2]], depth)


def z_order_decode(code: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    return torch.stack(_deinterleave(code.long(), depth), dim=1)


def hilbert_encode(grid: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    """Skilling's transform (AIP Conf. Proc. 707, 2004): axes -> 'transposed' Hilbert index,
    then the transposed bits are interleaved into one integer."""
    grid = _check(grid, depth)
    x = [grid[:, 0].clone(), grid[:, 1].clone(), grid[:, 2].clone()]
    q = 1 << (depth - 1)
    # Inverse undo: per level, either invert the low bits of x[0] or swap them with x[i].
    while q > 1:
        p = q - 1
        for i in range(3):
            high = (x[i] & q) != 0
            t = (x[0] ^ x[i]) & p
            x[0] = torch.where(high, x[0] ^ p, x[0] ^ t)
            x[i] = torch.where(high, x[i], x[i] ^ t)
        q >>= 1
    # Gray encode.
    for i in range(1, 3):
        x[i] = x[i] ^ x[i - 1]
    t = torch.zeros_like(x[0])
    q = 1 << (depth - 1)
    while q > 1:
        t = torch.where((x[2] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x = [xi ^ t for xi in x]
    return _interleave(x, depth)


def hilbert_decode(code: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    x = _deinterleave(code.long(), depth)
    # Gray decode.
    t = x[2] >> 1
    for i in range(2, 0, -1):
        x[i] = x[i] ^ x[i - 1]
    x[0] = x[0] ^ t
    # Undo the excess work, from the lowest level up.
    q = 2
    while q != (1 << depth):
        p = q - 1
        for i in range(2, -1, -1):
            high = (x[i] & q) != 0
            t = (x[0] ^ x[i]) & p
            x[0] = torch.where(high, x[0] ^ p, x[0] ^ t)
            x[i] = torch.where(high, x[i], x[i] ^ t)
        q <<= 1
    return torch.stack(x, dim=1)


ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def encode(grid: torch.Tensor, order: str = "z", depth: int = MAX_DEPTH) -> torch.Tensor:
    """`-trans` variants swap x and y before encoding, giving a second curve whose jumps fall
    elsewhere (the Point Transformer V3 trick for alternating patch layouts)."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; known: {', '.join(ORDERS)}")
    if order.endswith("-trans"):
        grid = grid[:, [1, 0, 2]]
    fn = z_order_encode if order.startswith("z") else hilbert_encode
    return fn(grid, depth)


def serialize(
    grid: torch.Tensor, batch: torch.Tensor, order: str = "z", depth: int | None = None
) -> torch.Tensor:
    """Curve code with the batch index in the high bits, so sorting keeps clouds apart.

    `depth` defaults to the fewest bits that hold the largest grid coordinate.
    """
    if depth is None:
        top = int(grid.max()) if grid.numel() else 0
        depth = max(1, top.bit_length())
    return (batch.long() << (3 * depth)) | encode(grid, order, depth)
