"""Activation checkpointing (`run_block`): the recompute in backward changes nothing but memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatiotemporal.layers.checkpointing import run_block


def batch_norm_block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4), nn.BatchNorm1d(4, momentum=None))


def one_step(block: nn.Module, call, checkpointed: bool) -> tuple[torch.Tensor, dict]:
    x = torch.linspace(-2, 3, 64).reshape(16, 4).requires_grad_()
    out = run_block(call(block), x, checkpointed=checkpointed)
    out.square().sum().backward()
    return x.grad, {name: b.clone() for name, b in block.named_buffers()}


@pytest.mark.parametrize("call", [lambda m: m, lambda m: m.forward], ids=["module", "bound_forward"])
def test_batch_norm_running_stats_take_one_update_per_step_when_checkpointed(call):
    grad_plain, stats_plain = one_step(batch_norm_block().train(), call, checkpointed=False)
    grad_ckpt, stats_ckpt = one_step(batch_norm_block().train(), call, checkpointed=True)
    assert stats_ckpt["1.num_batches_tracked"].item() == stats_ckpt["4.num_batches_tracked"].item() == 1
    assert stats_ckpt.keys() == stats_plain.keys()
    for name in stats_plain:
        torch.testing.assert_close(stats_ckpt[name], stats_plain[name], atol=0, rtol=0, msg=name)
    torch.testing.assert_close(grad_ckpt, grad_plain)


def test_layer_norm_and_dropout_blocks_give_the_same_outputs_and_gradients_when_checkpointed():
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        block = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.5), nn.Linear(8, 4)).train()
        x = torch.linspace(-2, 3, 64).reshape(16, 4).requires_grad_()
        torch.manual_seed(1)  # dropout; the recompute replays the same draws
        out = run_block(block, x, checkpointed=checkpointed)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, [p.grad for p in block.parameters()]))
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    torch.testing.assert_close(dx_b, dx_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a)


def test_keyword_arguments_reach_the_block():
    block = nn.MultiheadAttention(4, 1, batch_first=True)
    x = torch.rand(1, 3, 4, requires_grad=True)
    out, weights = run_block(block, x, x, x, checkpointed=True, need_weights=False)
    assert out.shape == (1, 3, 4) and weights is None
