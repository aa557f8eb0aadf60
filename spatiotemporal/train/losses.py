"""Segmentation losses beyond cross-entropy.

Lovász-softmax (Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate
for the optimization of the intersection-over-union measure in neural networks", CVPR 2018) is a
convex surrogate of 1 - IoU per class. Point-cloud segmenters (Pointcept's ScanNet configs) add
it to cross-entropy because the benchmark's metric is mIoU: cross-entropy weighs a class by its
point count, so small classes (sinks, pictures) barely move it, while every class present in the
batch weighs the same in the Lovász term.
"""

from __future__ import annotations

import torch


def lovasz_grad(foreground_sorted: torch.Tensor) -> torch.Tensor:
    """The gradient of the Lovász extension of the Jaccard loss at errors sorted descending:
    the increments of 1 - IoU as each point (in that order) is counted as an error."""
    total = foreground_sorted.sum()
    intersection = total - foreground_sorted.cumsum(0)
    union = total + (1.0 - foreground_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Mean over the classes present in `labels` of the Lovász hinge on 1 - IoU.

    logits: (P, C) per point; labels: (P,) class ids, `ignore_index` for unlabelled points.
    Classes absent from the batch are left out, as in the paper's "present" mode: their IoU is
    undefined here and including them would only push their probabilities down everywhere.
    """
    valid = labels != ignore_index
    probs = logits[valid].float().softmax(dim=-1)
    labels = labels[valid]
    if labels.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph, so DDP sees a gradient for every parameter
    losses = []
    for cls in torch.unique(labels):
        foreground = (labels == cls).float()
        errors = (foreground - probs[:, cls]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(foreground[order])))
    return torch.stack(losses).mean()
