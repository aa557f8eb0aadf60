"""Activation checkpointing, the same way for every model.

A block run through `run_block(..., checkpointed=True)` keeps only its inputs during the forward
pass and recomputes its activations in backward: memory for compute, which is what lets the large
configurations train at full size on one device. Outside autograd (inference, `no_grad`) the flag
costs nothing.

The recompute must leave no trace but its activations. Random draws (dropout, drop path) are
replayed by torch's checkpoint itself; the running statistics of batch norms inside the block are
not, so a second forward in training mode would fold the same batch into them again (two updates
per step, `num_batches_tracked` counting twice). The recompute therefore runs between a copy and
a restore of those statistics. A batch norm in training mode normalises with the batch's own
statistics, so its recomputed output is the same either way.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint


def _owning_module(block: Callable[..., Any]) -> nn.Module | None:
    """The module whose submodules a block runs: the block itself, or the module of a bound
    method such as `module.forward`."""
    if isinstance(block, nn.Module):
        return block
    owner = getattr(block, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module | None) -> Iterator[None]:
    norms = [] if module is None else [m for m in module.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    saved = [(buffer, buffer.clone()) for m in norms for buffer in m.buffers(recurse=False)]
    try:
        yield
    finally:
        # Also on the early exit torch takes once the tensors backward needs are recomputed.
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def run_block(block: Callable[..., Any], *args: Any, checkpointed: bool, **kwargs: Any) -> Any:
    """`block(*args, **kwargs)`, checkpointed when asked and autograd is recording.

    `block` is a module or a module's bound method, so that the batch norms it runs can be found
    and their running statistics kept to one update per forward (see the module docstring).
    """
    if checkpointed and torch.is_grad_enabled():
        module = _owning_module(block)
        # Non-reentrant: works with inputs that need no grad and with keyword-free tuples of tensors.
        return checkpoint(
            block,
            *args,
            use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _running_stats_kept(module)),
            **kwargs,
        )
    return block(*args, **kwargs)
