"""Activation checkpointing, the same way for every model.

A block run through `run_block(..., checkpointed=True)` keeps only its inputs during the forward
pass and recomputes its activations in backward: memory for compute, which is what lets the large
configurations train at full size on one device. Outside autograd (inference, `no_grad`) the flag
costs nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


def run_block(block: Callable[..., Any], *args: Any, checkpointed: bool) -> Any:
    if checkpointed and torch.is_grad_enabled():
        # Non-reentrant: works with inputs that need no grad and with keyword-free tuples of tensors.
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
