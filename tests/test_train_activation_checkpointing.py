"""`train.activation_checkpointing=true` reaches the point models through their own switch, and a
model the switch cannot reach is refused instead of training without it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatiotemporal.data.point_transforms import point_features
from spatiotemporal.models import create_model
from spatiotemporal.models.registry import point_feature_keys
from spatiotemporal.train.loop import checkpoint_activations, enable_activation_checkpointing


def cloud(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1.6 m floor and a box on it, about 5 cm apart, as a grid-sampled scan."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.rand(n // 2, 3, generator=g) * torch.tensor([1.6, 1.6, 0.0])
    box = torch.rand(n - n // 2, 3, generator=g) * 0.5 + torch.tensor([0.6, 0.6, 0.0])
    coord = torch.cat([floor, box])
    color = torch.rand(n, 3, generator=g)
    normal = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    return coord, color, normal


def saved_for_backward(model: nn.Module) -> int:
    """How many tensors the forward pass keeps for backward."""
    coord, color, normal = cloud()
    feat = point_features({"coord": coord, "color": color, "normal": normal}, point_feature_keys(model))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(coord, feat, torch.tensor([len(coord)]))
    return len(saved)


@pytest.mark.parametrize("name", ["point_transformer_tiny", "stratified_transformer_tiny"])
def test_training_switches_the_point_models_checkpointing_on_and_their_blocks_keep_fewer_activations(name):
    torch.manual_seed(0)
    plain = create_model(name).train()
    switched = create_model(name).train()
    assert switched.grad_checkpointing is False
    assert enable_activation_checkpointing(switched) == -1  # the model's own switch
    assert switched.grad_checkpointing is True
    assert saved_for_backward(switched) < saved_for_backward(plain)


def test_the_switch_survives_the_deep_copy_the_ema_model_is():
    import copy

    model = create_model("point_transformer_tiny")
    model.set_grad_checkpointing(True)
    assert copy.deepcopy(model).grad_checkpointing is True
    model.set_grad_checkpointing(False)
    assert model.grad_checkpointing is False


class Convolutional(nn.Module):
    """A model with neither a checkpointing switch nor `blocks` to wrap."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_a_model_the_switch_cannot_reach_is_refused_by_name():
    with pytest.raises(ValueError, match="activation_checkpointing=true, but model convnet has no set_grad_checkpointing"):
        checkpoint_activations(Convolutional(), "convnet")


def test_a_model_with_a_switch_is_accepted():
    model = create_model("stratified_transformer_tiny")
    checkpoint_activations(model, "stratified_transformer_tiny")
    assert model.grad_checkpointing is True and all(stage.grad_checkpointing for stage in model.stages)
