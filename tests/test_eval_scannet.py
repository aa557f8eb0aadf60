"""ScanNet evaluation with the official benchmark's semantics, submission files, and voting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spatiotemporal.eval.scannet import (
    CLASS_NAMES,
    FragmentVoter,
    ScanNetEvaluator,
    evaluate_submission,
    nyu40_to_train,
    read_ids,
    train_to_nyu40,
    write_submission,
)
from spatiotemporal.io.errors import InputError

WALL, FLOOR, CHAIR, TABLE = 1, 2, 5, 7


def test_iou_counts_tp_fp_fn_over_the_valid_ids():
    gt = np.array([WALL, WALL, WALL, FLOOR, FLOOR, CHAIR])
    pred = np.array([WALL, WALL, FLOOR, FLOOR, WALL, CHAIR])
    ev = ScanNetEvaluator()
    ev.update(pred, gt)
    s = ev.summary()
    assert s.iou["wall"] == pytest.approx(2 / 4)  # tp 2, fn 1, fp 1
    assert s.iou["floor"] == pytest.approx(1 / 3)  # tp 1, fn 1, fp 1
    assert s.iou["chair"] == 1.0
    assert s.miou == pytest.approx((2 / 4 + 1 / 3 + 1) / 3) and s.num_classes_defined == 3
    assert s.overall_accuracy == pytest.approx(4 / 6)
    assert s.macc == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_ground_truth_outside_the_20_ids_is_ignored():
    ev = ScanNetEvaluator()
    # 0 (unannotated), 13 (pillow) and 40 (otherprop) are not benchmark classes.
    ev.update(np.array([WALL, WALL, WALL, WALL]), np.array([WALL, 0, 13, 40]))
    s = ev.summary()
    assert s.num_vertices == 1 and s.iou["wall"] == 1.0


def test_prediction_outside_the_20_ids_is_a_false_negative_and_no_false_positive():
    ev = ScanNetEvaluator()
    ev.update(np.array([WALL, 0, 40, 13]), np.array([WALL, WALL, CHAIR, CHAIR]))
    s = ev.summary()
    assert s.iou["wall"] == pytest.approx(1 / 2)  # tp 1, fn 1 (predicted 0)
    assert s.iou["chair"] == 0.0  # tp 0, fn 2
    assert s.denominator["chair"] == 2
    # No class received the out-of-set predictions as false positives.
    assert all(math.isnan(s.iou[n]) for n in CLASS_NAMES if n not in ("wall", "chair"))


def test_classes_absent_from_both_are_nan_and_left_out_of_the_mean():
    ev = ScanNetEvaluator()
    ev.update(np.array([TABLE]), np.array([TABLE]))
    s = ev.summary()
    assert s.miou == 1.0 and s.num_classes_defined == 1 and math.isnan(s.iou["bathtub"])


def test_train_ids_map_to_nyu40_and_back():
    nyu = train_to_nyu40(np.array([0, 19, -1, 12]))
    assert nyu.tolist() == [1, 39, 0, 14]
    assert nyu40_to_train(np.array([1, 39, 0, 14, 13, 300])).tolist() == [0, 19, -1, 12, -1, -1]


def test_mismatched_vertex_counts_name_the_file():
    with pytest.raises(InputError, match="scene0000_00.txt: 2 predicted values for 3"):
        ScanNetEvaluator().update(np.array([1, 1]), np.array([1, 1, 1]), "scene0000_00.txt")


def test_submission_files_evaluate_against_txt_ground_truth(tmp_path):
    write_submission(tmp_path / "pred" / "scene0001_00.txt", [WALL, FLOOR, CHAIR])
    write_submission(tmp_path / "gt" / "scene0001_00.txt", [WALL, FLOOR, TABLE])
    assert read_ids(tmp_path / "pred" / "scene0001_00.txt").tolist() == [1, 2, 5]
    s = evaluate_submission(tmp_path / "pred", tmp_path / "gt")
    assert s.num_scenes == 1 and s.iou["wall"] == 1.0 and s.iou["table"] == 0.0 and s.iou["chair"] == 0.0


def test_ground_truth_may_be_raw_labels_ply(tmp_path):
    from plyfile import PlyData, PlyElement

    vertex = np.array(
        [(0.0, 0.0, 0.0, WALL), (1.0, 0.0, 0.0, FLOOR), (0.0, 1.0, 0.0, 0)],
        dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("label", "u2")],
    )
    (tmp_path / "gt").mkdir()
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp_path / "gt" / "scene0002_00_vh_clean_2.labels.ply"))
    write_submission(tmp_path / "pred" / "scene0002_00.txt", [WALL, WALL, WALL])
    s = evaluate_submission(tmp_path / "pred", tmp_path / "gt")
    assert s.num_vertices == 2 and s.iou["wall"] == 0.5 and s.iou["floor"] == 0.0


def test_missing_ground_truth_is_an_input_error(tmp_path):
    write_submission(tmp_path / "pred" / "scene0003_00.txt", [WALL])
    (tmp_path / "gt").mkdir()
    with pytest.raises(InputError, match="no ground truth for predicted scene scene0003_00"):
        evaluate_submission(tmp_path / "pred", tmp_path / "gt")


def test_unparseable_submission_is_an_input_error(tmp_path):
    (tmp_path / "bad.txt").write_text("wall\nfloor\n")
    with pytest.raises(InputError, match="bad.txt"):
        read_ids(tmp_path / "bad.txt")


def test_votes_sum_softmax_over_fragments_onto_every_vertex():
    voter = FragmentVoter(num_points=3, num_classes=2)
    voter.add(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 1]))
    voter.add(np.array([[0.3, 0.7], [0.45, 0.55]]), np.array([1, 2]))
    # vertex 1: 0.4 + 0.3 = 0.7 vs 0.6 + 0.7 = 1.3
    assert voter.predict().tolist() == [0, 1, 1]


def test_a_vertex_no_fragment_covers_is_an_error():
    voter = FragmentVoter(num_points=3, num_classes=2, name="scene0004_00")
    voter.add(np.array([[1.0, 0.0]]), np.array([0]))
    with pytest.raises(InputError, match="scene0004_00: 2 vertices got no prediction"):
        voter.predict()


def test_with_voxels_an_uncovered_vertex_takes_its_voxels_summed_vote():
    # Vertices 0, 1 share voxel 0; 2, 3 share voxel 1. Two fragments cover only vertices 0 and 2.
    voter = FragmentVoter(num_points=4, num_classes=2, voxel_of=np.array([0, 0, 1, 1]))
    voter.add(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 2]))
    voter.add(np.array([[0.3, 0.7], [0.1, 0.9]]), np.array([0, 2]))
    # vertex 1 gets voxel 0's sum (1.1, 0.9) -> class 0; vertex 3 gets (0.5, 1.5) -> class 1
    assert voter.predict().tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(voter.votes[1], [1.1, 0.9])


def test_report_has_a_row_per_class_and_a_top_down_png(tmp_path):
    from spatiotemporal.eval.plots import plot_scene_top_down

    ev = ScanNetEvaluator()
    ev.update(np.array([WALL, FLOOR]), np.array([WALL, FLOOR]))
    table = ev.summary().to_markdown()
    assert table.count("\n| ") == 21 and "| wall | 1 | 100.00 | 1 / 1 |" in table
    rng = np.random.default_rng(0)
    coord = rng.uniform(size=(500, 3))
    png = plot_scene_top_down(coord, rng.integers(0, 20, 500), rng.integers(-1, 20, 500), tmp_path / "s.png")
    assert png.stat().st_size > 1000


def test_cli_scores_submission_folders_and_writes_json(tmp_path):
    import json
    import subprocess
    import sys

    write_submission(tmp_path / "pred" / "scene0005_00.txt", [WALL, WALL, FLOOR, 0])
    write_submission(tmp_path / "gt" / "scene0005_00.txt", [WALL, FLOOR, FLOOR, FLOOR])
    done = subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "eval", "scannet", "--pred", str(tmp_path / "pred"),
         "--gt", str(tmp_path / "gt"), "--json", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    # wall: tp 1, fp 1 (a floor vertex) -> 1/2; floor: tp 1, fn 2 (one as wall, one as 0) -> 1/3
    assert s["iou"]["wall"] == 0.5 and s["iou"]["floor"] == pytest.approx(1 / 3)
    assert "| wall | 1 | 50.00 | 1 / 2 |" in done.stdout


def test_cli_reports_a_missing_prediction_folder_as_an_error(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "eval", "scannet", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "nope: prediction directory does not exist" in done.stdout


def test_cli_model_path_writes_submissions_that_score_the_same_against_the_raw_labels(tmp_path):
    """`eval scannet --config --checkpoint --data` votes the model onto every raw vertex: its
    submission files, scored on their own against the raw `labels.ply`, give the same numbers."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from spatiotemporal.data.scannet import preprocess_raw_scene
    from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
    from spatiotemporal.io.points import read_points, write_preprocessed
    from spatiotemporal.train.config import load_config
    from spatiotemporal.train.tasks import PointsTask

    raw, data = tmp_path / "raw", tmp_path / "data"
    scenes = write_dataset(raw, 2, seed=7, spec=SceneSpec(spacing=0.08), val_fraction=0)["train"]
    for name in scenes:
        write_preprocessed(data / "val" / name, preprocess_raw_scene(raw / name))
    config = Path(__file__).resolve().parents[1] / "configs" / "point_transformer_tiny_synthetic_scannet.yaml"
    torch.manual_seed(0)
    torch.save(PointsTask(load_config(config)).build_model().state_dict(), tmp_path / "model.pt")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spatiotemporal.cli", "eval", "scannet", *args],
                              capture_output=True, text=True, timeout=600)

    model_run = cli("--config", str(config), "--checkpoint", str(tmp_path / "model.pt"), "--data", str(data),
                    "--out", str(tmp_path / "out"), "--json", str(tmp_path / "model.json"))
    assert model_run.returncode == 0, model_run.stdout + model_run.stderr
    for name in scenes:
        vertices = len(read_points(raw / name / f"{name}_vh_clean_2.ply")["coord"])
        assert len(read_ids(tmp_path / "out" / "submission" / f"{name}.txt")) == vertices
    assert (tmp_path / "out" / "eval_scannet.md").is_file()
    assert any(p.suffix == ".png" for p in (tmp_path / "out").iterdir())

    file_run = cli("--pred", str(tmp_path / "out" / "submission"), "--gt", str(raw), "--json", str(tmp_path / "files.json"))
    assert file_run.returncode == 0, file_run.stdout + file_run.stderr
    from_model, from_files = (json.loads((tmp_path / f).read_text()) for f in ("model.json", "files.json"))
    assert from_model["num_scenes"] == from_files["num_scenes"] == 2
    for key in ("miou", "macc", "overall_accuracy"):
        assert from_files[key] == pytest.approx(from_model[key], abs=1e-12), key
