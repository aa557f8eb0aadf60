"""Synthetic ScanNet rooms: format, determinism, labels and geometry that make classes learnable."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from spatiotemporal.cli import main
from spatiotemporal.data.scannet import CLASS_NAMES, category_nyu40, nyu40_to_segment20
from spatiotemporal.data.synthetic_scannet import SceneSpec, generate_scene
from spatiotemporal.io.points import read_ply, read_scannet_scene

FAST = SceneSpec(spacing=0.05)


@pytest.fixture(scope="module")
def scenes() -> list:
    """Five rooms, one of each type."""
    return [generate_scene(0, index, FAST) for index in range(5)]


def digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_writes_scannet_raw_scenes_and_split_files(tmp_path):
    out = tmp_path / "syn"
    assert main(["prepare", "synthetic-scannet", str(out), "--scenes", "3", "--seed", "4", "--spacing", "0.06"]) == 0
    train = (out / "scannetv2_train.txt").read_text().split()
    val = (out / "scannetv2_val.txt").read_text().split()
    assert sorted(train + val) == ["scene0000_00", "scene0001_00", "scene0002_00"] and val and not set(train) & set(val)
    scene = out / "scene0000_00"
    assert sorted(p.name for p in scene.iterdir()) == [
        "scene0000_00.aggregation.json",
        "scene0000_00_vh_clean_2.0.010000.segs.json",
        "scene0000_00_vh_clean_2.labels.ply",
        "scene0000_00_vh_clean_2.ply",
    ]
    # ScanNet's vertex layout: float xyz, uchar rgba, and a ushort label in labels.ply.
    header = (scene / "scene0000_00_vh_clean_2.labels.ply").read_bytes()[:300].decode("latin-1")
    assert "format binary_little_endian 1.0" in header
    assert "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n" \
        "property uchar blue\nproperty uchar alpha\nproperty ushort label\nend_header" in header


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert main(["prepare", "synthetic-scannet", str(tmp_path / name), "--scenes", "2", "--seed", str(seed), "--spacing", "0.08"]) == 0
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_every_benchmark_class_appears_in_five_rooms(scenes):
    present = set()
    for scene in scenes:
        segment = nyu40_to_segment20(scene.nyu40)
        present |= set(segment[segment >= 0].tolist())
    assert sorted(CLASS_NAMES[i] for i in present) == sorted(CLASS_NAMES)


def test_labels_agree_with_the_aggregation_categories(scenes):
    for scene in scenes[:2]:
        annotated = scene.instance >= 0
        by_category = np.array([category_nyu40(c) for c in scene.categories])[scene.instance[annotated]]
        np.testing.assert_array_equal(scene.nyu40[annotated], by_category)
        assert (scene.nyu40[~annotated] == 0).all() and 0 < (~annotated).mean() < 0.15
        assert all(category_nyu40(c) > 0 for c in scene.categories)


def test_written_scene_reads_back_with_its_instances(tmp_path):
    main(["prepare", "synthetic-scannet", str(tmp_path), "--scenes", "1", "--seed", "2", "--spacing", "0.08"])
    scene = generate_scene(2, 0, SceneSpec(spacing=0.08))
    raw = read_scannet_scene(tmp_path / "scene0000_00")
    np.testing.assert_array_equal(raw["coord"], scene.coord)
    np.testing.assert_array_equal(raw["nyu40"], scene.nyu40)
    np.testing.assert_array_equal(raw["instance"], scene.instance)
    aggregation = json.loads((tmp_path / "scene0000_00" / "scene0000_00.aggregation.json").read_text())
    assert {g["label"] for g in aggregation["segGroups"]} <= set(scene.categories)
    assert read_ply(tmp_path / "scene0000_00" / "scene0000_00_vh_clean_2.ply")["color"].std() > 20


def test_surfaces_are_sampled_at_the_requested_spacing():
    scene = generate_scene(1, 2, SceneSpec(spacing=0.02))
    assert 60_000 < len(scene.coord) < 400_000  # ScanNet rooms have ~50k-500k vertices
    coord = torch.from_numpy(scene.coord)
    queries = coord[torch.randperm(len(coord), generator=torch.Generator().manual_seed(0))[:400]]
    distance = torch.cdist(queries, coord, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.topk(2, largest=False).values[:, 1]  # [:, 0] is the point itself
    assert 0.006 < float(nearest.median()) < 0.02


def test_small_rooms_for_tests(scenes):
    sizes = [len(s.coord) for s in scenes]
    assert all(10_000 < n < 60_000 for n in sizes), sizes


def _heights(scenes, name):
    z = [s.coord[nyu40_to_segment20(s.nyu40) == CLASS_NAMES.index(name), 2] for s in scenes]
    return np.concatenate(z)


def test_classes_differ_in_height_and_shape(scenes):
    # The floor is the plane z = 0, as in ScanNet scans.
    assert np.abs(np.median(_heights(scenes, "floor"))) < 0.01
    assert np.percentile(_heights(scenes, "wall"), 95) > 1.8
    assert np.percentile(_heights(scenes, "refrigerator"), 99) > 1.6
    assert np.percentile(_heights(scenes, "toilet"), 99) < 0.9
    assert 0.82 < np.median(_heights(scenes, "counter")) < 0.95
    # Tables are coffee tables (0.40-0.48 m) or dining tables (0.72-0.77 m).
    for scene in scenes:
        table = nyu40_to_segment20(scene.nyu40) == CLASS_NAMES.index("table")
        for instance in np.unique(scene.instance[table]):
            top = np.percentile(scene.coord[scene.instance == instance, 2], 99)
            assert 0.38 < top < 0.5 or 0.7 < top < 0.79, top
