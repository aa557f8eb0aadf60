"""What a model computes in: `auto` is bf16 autocast where the device has bf16 units, fp32 elsewhere.

Kept free of a torch import at module level so command-line parsers can offer the choices
without paying for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def has_native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run on bf16 units here: AMX or AVX512-BF16 on a CPU, a bf16-capable GPU.

    Elsewhere oneDNN emulates them and bf16 is slower than fp32 (see BENCHMARKS.md).
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `precision`: 'auto' is bf16 autocast where the device has native bf16
    (2-5x the fp32 throughput of the base video models on a 2-core AMX CPU, same top-1;
    BENCHMARKS.md), fp32 elsewhere."""
    import torch

    check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def store_autocast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store, once, the weights that autocast casts to `dtype` on every call: those of Linear and
    Conv layers. For inference under `torch.autocast(dtype=dtype)` only.

    Autocast keeps such casts only until its region closes, so a model called once per batch pays
    them on every call (measured on a 2-core AMX CPU, batch 1: 9% of a TimeSformer-B bf16 forward,
    5% of MViTv2-S and ViViT-B, 1% of Swin3D-T).
    The tensors cast are exactly those autocast would cast, to the same dtype, so the outputs are
    bit-identical. Norms, embeddings and other parameters stay as they are.
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model
