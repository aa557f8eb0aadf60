"""Pointcept's ScanNet test-time augmentation: 13 fixed transforms of the centred scene whose
fragment votes are summed onto the original vertices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spatiotemporal.data import point_transforms as T
from spatiotemporal.eval.scannet import pointcept_test_augmentations, predict_scene
from spatiotemporal.io.points import estimate_normals, read_ply
from spatiotemporal.models import create_model

GRID = 0.05


@pytest.fixture(scope="module")
def scan(points_dir):
    cloud = read_ply(points_dir / "livingroom_fragment.ply")
    keep = np.random.default_rng(0).choice(len(cloud["coord"]), 3000, replace=False)
    small = {"coord": cloud["coord"][keep], "color": cloud["color"][keep]}
    return {**small, "normal": estimate_normals(small)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("point_transformer_tiny", num_classes=20).eval()


def _moved(augment, point):
    return augment({"coord": torch.tensor([point], dtype=torch.float64)})["coord"][0].tolist()


def test_there_are_thirteen_passes_four_rotations_at_three_scales_and_a_flip():
    passes = pointcept_test_augmentations()
    assert len(passes) == 13
    assert _moved(passes[0], (1.0, 0.0, 0.5)) == pytest.approx([1.0, 0.0, 0.5], abs=1e-6)
    assert _moved(passes[1], (1.0, 0.0, 0.5)) == pytest.approx([0.0, 1.0, 0.5], abs=1e-6)
    assert _moved(passes[2], (1.0, 0.0, 0.5)) == pytest.approx([-1.0, 0.0, 0.5], abs=1e-6)
    assert _moved(passes[7], (1.0, 0.0, 0.5)) == pytest.approx([0.0, -0.95, 0.475], abs=1e-6)
    assert _moved(passes[8], (1.0, 0.0, 0.5)) == pytest.approx([1.05, 0.0, 0.525], abs=1e-6)
    assert _moved(passes[12], (1.0, 2.0, 0.5)) == pytest.approx([-1.0, -2.0, 0.5], abs=1e-6)


def test_an_identity_pass_predicts_what_no_augmentation_does(scan, model):
    identity = T.RandomRotate((0.0, 0.0), "z", center=(0.0, 0.0, 0.0), p=1.0)
    plain, fragments = predict_scene(model, scan, GRID)
    same, same_fragments = predict_scene(model, scan, GRID, augmentations=[identity])
    assert np.array_equal(plain, same) and fragments == same_fragments


def test_every_pass_votes_and_every_vertex_gets_a_label(scan, model):
    passes = pointcept_test_augmentations()
    centred = T.CenterShift(apply_z=True)(T.to_tensors(scan))
    expected = sum(len(T.GridSample(GRID, "test")(augment(centred))) for augment in passes)
    labels, fragments = predict_scene(model, scan, GRID, augmentations=passes)
    assert fragments == expected
    assert labels.shape == (3000,) and labels.min() >= 0 and labels.max() < 20
    assert not math.isnan(float(labels.sum()))
