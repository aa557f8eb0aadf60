"""Lovász-softmax: at hard (one-hot) predictions the Lovász extension equals the set function it
extends, so the loss must be exactly the mean over present classes of 1 - IoU."""

from __future__ import annotations

import torch

from spatiotemporal.train.losses import lovasz_softmax

# Logits this far apart give softmax probabilities of exactly 0 and 1 in float32.
CONFIDENT = 200.0


def confident_logits(predicted: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), num_classes).float() * CONFIDENT


def test_hard_predictions_give_the_mean_jaccard_loss_over_present_classes():
    labels = torch.tensor([0, 0, 1, 1, 2])
    predicted = [0, 1, 1, 1, 0]
    # class 0: tp 1, fp 1, fn 1 -> IoU 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0.
    # Class 3 is absent from the labels and left out.
    expected = ((1 - 1 / 3) + (1 - 2 / 3) + (1 - 0)) / 3
    loss = lovasz_softmax(confident_logits(predicted, 4), labels)
    assert abs(loss.item() - expected) < 1e-6


def test_a_perfect_prediction_costs_nothing():
    labels = torch.tensor([2, 0, 1, 1, 0])
    assert lovasz_softmax(confident_logits(labels.tolist(), 3), labels).item() == 0.0


def test_ignored_points_change_nothing():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with_ignored = torch.cat([logits, torch.randn(3, 3)])
    labels_with_ignored = torch.cat([labels, torch.full((3,), -1)])
    assert torch.equal(lovasz_softmax(logits, labels), lovasz_softmax(with_ignored, labels_with_ignored))


def test_the_loss_falls_as_the_true_class_gains_probability():
    labels = torch.tensor([0, 1, 1, 2])
    logits = torch.zeros(4, 3, requires_grad=True)
    lovasz_softmax(logits, labels).backward()
    # Descent raises every point's true-class logit.
    assert (-logits.grad[torch.arange(4), labels] > 0).all()


def test_a_batch_with_only_ignored_points_gives_zero_with_a_gradient():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = lovasz_softmax(logits, torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
