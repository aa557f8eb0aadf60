"""Training's activation-checkpointing switch: every video model takes it through its own
`set_grad_checkpointing`, and a model without one has its blocks wrapped; either way the EMA copy
(a deep copy) computes with its own weights, never the live model's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatiotemporal.models import create_model
from spatiotemporal.train.ema import ModelEma
from spatiotemporal.train.loop import enable_activation_checkpointing

VIDEO_MODELS = {
    "timesformer_tiny": (1, 3, 4, 32, 32),
    "vivit_tiny": (1, 3, 4, 32, 32),
    "vivit_tiny_fe": (1, 3, 4, 32, 32),
    "vivit_tiny_fdp": (1, 3, 4, 32, 32),
    "mvitv2_tiny": (1, 3, 4, 32, 32),
    "swin3d_tiny": (1, 3, 4, 32, 32),
}


def _perturbed_live_model_leaves_the_ema_copy_alone(model: nn.Module, clip: torch.Tensor) -> None:
    ema = ModelEma(model, decay=0.999)
    with torch.no_grad():
        before = ema.module(clip)
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        after = ema.module(clip)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("name", VIDEO_MODELS)
def test_every_video_model_switches_checkpointing_itself_and_its_ema_copy_runs_its_own_weights(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, num_frames=4, image_size=32)
    assert model.grad_checkpointing is False
    assert enable_activation_checkpointing(model) == -1  # the model's own switch
    assert model.grad_checkpointing is True
    _perturbed_live_model_leaves_the_ema_copy_alone(model.eval(), torch.randn(VIDEO_MODELS[name]))


class Stack(nn.Module):
    """A transformer-like model with no checkpointing switch of its own."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU()) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_blocks_of_a_model_without_a_switch_are_wrapped_and_its_ema_copy_runs_its_own_weights():
    torch.manual_seed(0)
    model = Stack()
    keys = list(model.state_dict())
    assert enable_activation_checkpointing(model) == 3
    assert list(model.state_dict()) == keys  # checkpoints load into a model without the wrappers
    _perturbed_live_model_leaves_the_ema_copy_alone(model, torch.randn(4, 8))


def _saved_for_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = model(x).square().sum()
    return out, len(saved)


def test_wrapped_blocks_keep_fewer_activations_and_give_the_gradients_of_plain_ones():
    torch.manual_seed(0)
    plain, wrapped = Stack(), Stack()
    wrapped.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(wrapped)
    x = torch.randn(4, 8)
    plain_out, plain_saved = _saved_for_backward(plain, x)
    wrapped_out, wrapped_saved = _saved_for_backward(wrapped, x)
    assert wrapped_saved < plain_saved  # each block keeps its input only; the rest is recomputed
    plain_out.backward()
    wrapped_out.backward()
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
