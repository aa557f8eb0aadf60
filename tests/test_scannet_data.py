"""ScanNet v2 labels, split lists, raw-scene preprocessing and the preprocessed-layout dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatiotemporal.data import point_transforms as T
from spatiotemporal.data import scannet
from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
from spatiotemporal.io.errors import PointCloudError
from spatiotemporal.io.points import read_scannet_scene, write_preprocessed


def test_the_20_benchmark_classes_and_their_nyu40_ids():
    assert scannet.CLASSES == (
        ("wall", 1), ("floor", 2), ("cabinet", 3), ("bed", 4), ("chair", 5), ("sofa", 6), ("table", 7),
        ("door", 8), ("window", 9), ("bookshelf", 10), ("picture", 11), ("counter", 12), ("desk", 14),
        ("curtain", 16), ("refrigerator", 24), ("shower curtain", 28), ("toilet", 33), ("sink", 34),
        ("bathtub", 36), ("otherfurniture", 39),
    )
    assert scannet.NUM_CLASSES == 20 and scannet.IGNORE_INDEX == -1


def test_every_other_nyu40_id_maps_to_ignore():
    ids = np.arange(0, 42)
    expected = np.full(42, -1)
    for index, nyu40 in enumerate(scannet.NYU40_IDS):
        expected[nyu40] = index
    np.testing.assert_array_equal(scannet.nyu40_to_segment20(ids), expected)
    np.testing.assert_array_equal(scannet.nyu40_to_segment20(np.array([65535, -3, 13, 40])), [-1, -1, -1, -1])


def test_raw_categories_map_to_nyu40_through_the_shipped_tsv():
    mapping = scannet.raw_category_to_nyu40()
    # 607 rows; "object" appears twice (both nyu40 40), so 606 distinct raw categories.
    assert len(mapping) == 606 and mapping["object"] == 40
    assert mapping["chair"] == 5 and mapping["office chair"] == 5
    assert mapping["kitchen cabinets"] == 3 and mapping["couch"] == 6
    assert mapping["shower curtain"] == 28 and mapping["trash can"] == 39 and mapping["books"] == 23
    assert scannet.category_nyu40("not a scannet category") == 0


def test_official_split_lists():
    train, val, test = (scannet.split_scenes(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1201, 312, 100)
    assert not set(train) & set(val) and not set(val) & set(test)
    assert "scene0000_00" in train and val[0] == "scene0568_00" and test[0] == "scene0707_00"
    with pytest.raises(ValueError):
        scannet.split_scenes("trainval")


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_dataset(root, 2, seed=5, spec=SceneSpec(spacing=0.08))
    return root


def test_preprocessing_maps_labels_to_20_classes_and_keeps_instances(raw_root):
    raw = read_scannet_scene(raw_root / "scene0000_00")
    out = scannet.preprocess_raw_scene(raw_root / "scene0000_00")
    np.testing.assert_array_equal(out["segment"], scannet.nyu40_to_segment20(raw["nyu40"]))
    np.testing.assert_array_equal(out["instance"], raw["instance"])
    assert set(np.unique(out["segment"])) >= {-1, 0, 1}
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1.0, atol=1e-4)


def test_floor_normals_point_up(raw_root):
    out = scannet.preprocess_raw_scene(raw_root / "scene0000_00")
    floor = out["normal"][out["segment"] == 1]
    assert np.median(floor[:, 2]) > 0.95


def test_without_labels_ply_the_aggregation_categories_give_the_same_labels(raw_root, tmp_path):
    import shutil

    scene = tmp_path / "scene0001_00"
    shutil.copytree(raw_root / "scene0001_00", scene)
    with_labels = scannet.preprocess_raw_scene(scene)
    (scene / "scene0001_00_vh_clean_2.labels.ply").unlink()
    from_aggregation = scannet.preprocess_raw_scene(scene)
    np.testing.assert_array_equal(from_aggregation["segment"], with_labels["segment"])


def test_dataset_yields_scenes_of_the_preprocessed_layout(raw_root, tmp_path):
    for name in ("scene0000_00", "scene0001_00"):
        write_preprocessed(tmp_path / "train" / name, scannet.preprocess_raw_scene(raw_root / name))
    dataset = scannet.ScanNetDataset(tmp_path, "train", loop=2)
    assert len(dataset) == 4 and dataset.scenes == ["scene0000_00", "scene0001_00"]
    item = dataset[3]
    assert item["name"] == "scene0001_00"
    assert item["coord"].dtype == np.float32 and item["segment"].dtype == np.int64
    assert item["color"].dtype == np.float32 and item["color"].max() <= 255
    assert len(item["instance"]) == len(item["coord"])

    transformed = scannet.ScanNetDataset(tmp_path, "train", transform=T.Compose([T.CenterShift(), T.GridSample(0.1)]))
    sample = transformed[0]
    assert isinstance(sample["coord"], torch.Tensor) and len(sample["coord"]) < len(item["coord"])
    assert sample["name"] == "scene0000_00"


def test_test_mode_dataset_items_are_named_fragments(raw_root, tmp_path):
    write_preprocessed(tmp_path / "val" / "scene0001_00", scannet.preprocess_raw_scene(raw_root / "scene0001_00"))
    dataset = scannet.ScanNetDataset(tmp_path, "val", transform=T.Compose([T.GridSample(0.1, "test")]))
    fragments = dataset[0]
    assert isinstance(fragments, list) and len(fragments) > 1
    assert {f["name"] for f in fragments} == {"scene0001_00"}


def test_dataset_over_a_missing_split_is_an_error(tmp_path):
    with pytest.raises(PointCloudError, match="split folder does not exist"):
        scannet.ScanNetDataset(tmp_path, "val")


def test_a_half_written_scene_left_by_an_interrupted_prepare_is_not_a_scene(raw_root, tmp_path):
    cloud = scannet.preprocess_raw_scene(raw_root / "scene0000_00")
    write_preprocessed(tmp_path / "train" / "scene0000_00", cloud)
    # `prepare scannet` writes here first and renames when done; a killed run leaves it behind.
    write_preprocessed(tmp_path / "train" / ".scene0001_00.partial", cloud)
    assert scannet.ScanNetDataset(tmp_path, "train").scenes == ["scene0000_00"]
