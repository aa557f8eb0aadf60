"""The Kinetics evaluator: view aggregation, top-k, accounting of missing videos, DDP gathering."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spatiotemporal.eval.kinetics import KineticsEvaluator

# Two views where the aggregations disagree: softmax averaging trusts the confident view A
# (class 0), logit averaging lets view B's -5 drag class 0 down (class 1 wins).
VIEW_A = [5.0, 0.0, 0.0]
VIEW_B = [-5.0, 0.1, 0.0]


def test_softmax_aggregation_averages_probabilities():
    ev = KineticsEvaluator(num_classes=3, views_per_video=2, aggregation="softmax")
    ev.update(["v"], torch.tensor([[VIEW_A, VIEW_B]]), [0])
    s = ev.summary()
    assert s.top1 == 1.0 and s.confusion[0] == [1, 0, 0]


def test_logit_aggregation_averages_logits():
    ev = KineticsEvaluator(num_classes=3, views_per_video=2, aggregation="logits")
    ev.update(["v"], torch.tensor([[VIEW_A, VIEW_B]]), [0])
    s = ev.summary()
    assert s.top1 == 0.0 and s.confusion[0] == [0, 1, 0]


def test_views_may_arrive_one_at_a_time_in_any_batch():
    ev = KineticsEvaluator(num_classes=3, views_per_video=2)
    ev.update(["v"], torch.tensor([VIEW_B]), [0], view_indices=[1])
    ev.update(["v"], torch.tensor([VIEW_A]), [0], view_indices=[0])
    assert ev.summary().top1 == 1.0
    assert ev.summary().incomplete_videos == {}


def test_padded_duplicates_count_once():
    # DistributedSampler pads 3 videos to 4 for 2 ranks by repeating the first one.
    ev = KineticsEvaluator(num_classes=3, views_per_video=1)
    logits = torch.eye(3)
    ev.update(["a", "b"], logits[[0, 2]], [0, 1])
    ev.update(["c", "a"], logits[[2, 0]], [2, 0])
    s = ev.summary()
    assert s.num_evaluated == 3 and s.top1 == pytest.approx(2 / 3)


def test_top5_mean_class_and_per_class_accuracy_are_exact():
    ev = KineticsEvaluator(num_classes=6, class_names=list("abcdef"))
    # Class 0: two videos, one right; class 1: one video, wrong but label ranked 2nd; class 5: label ranked last.
    ev.update(
        ["v1", "v2", "v3", "v4"],
        torch.tensor(
            [
                [9.0, 1, 0, 0, 0, 0],
                [0.0, 9, 1, 0, 0, 0],
                [9.0, 8, 0, 0, 0, 0],
                [1.0, 5, 4, 3, 2, 0],
            ]
        ),
        [0, 0, 1, 5],
    )
    s = ev.summary()
    assert s.top1 == 0.25
    assert s.top5 == 0.75  # v4's label is ranked 6th of 6
    assert s.per_class_accuracy == {"a": 0.5, "b": 0.0, "f": 0.0}
    assert s.mean_class_accuracy == pytest.approx(0.5 / 3)
    assert s.class_counts == {"a": 2, "b": 1, "f": 1}


def test_mean_class_accuracy_counts_a_class_that_is_only_predicted_as_zero():
    # mmaction2's mean_class_accuracy builds its confusion matrix over labels and predictions
    # together: here classes 0 and 1 are labels, class 2 only a prediction, so the mean is
    # (1.0 + 0.0 + 0.0) / 3, not (1.0 + 0.0) / 2.
    ev = KineticsEvaluator(num_classes=4)
    ev.update(["a", "b"], torch.eye(4)[[0, 2]], [0, 1])
    s = ev.summary()
    assert s.per_class_accuracy == {"0": 1.0, "1": 0.0}
    assert s.mean_class_accuracy == pytest.approx(1 / 3)


def test_missing_videos_count_wrong_only_in_the_all_annotated_accuracy():
    annotated = {"a": 0, "b": 1, "c": 2, "gone": 1}
    ev = KineticsEvaluator(num_classes=3, annotated=annotated)
    ev.update(["a", "b", "c"], torch.eye(3)[[0, 1, 0]], [0, 1, 2])
    ev.mark_missing("broken", "moov atom not found", label=2)
    s = ev.summary()
    assert (s.num_annotated, s.num_evaluated, s.num_missing) == (4, 3, 2)
    assert s.top1 == pytest.approx(2 / 3)
    assert s.top1_all == pytest.approx(2 / 4)
    assert s.missing == {"broken": "moov atom not found", "gone": "never evaluated"}
    assert "4 annotated videos, 3 evaluated, 2 missing" in s.to_markdown()


def test_without_annotation_list_missing_ones_are_added_to_the_val_set_size():
    ev = KineticsEvaluator(num_classes=2)
    ev.update(["a"], torch.tensor([[1.0, 0.0]]), [0])
    ev.mark_missing("b", "no such file")
    s = ev.summary()
    assert s.num_annotated == 2 and s.top1 == 1.0 and s.top1_all == 0.5


def test_fewer_views_than_the_protocol_are_reported():
    ev = KineticsEvaluator(num_classes=2, views_per_video=3)
    ev.update(["a"], torch.tensor([[1.0, 0.0]]), [0], view_indices=[2])
    assert ev.summary().incomplete_videos == {"a": 1}


def test_rejects_logits_of_the_wrong_width():
    ev = KineticsEvaluator(num_classes=4)
    with pytest.raises(ValueError, match="3 classes"):
        ev.update(["a"], torch.zeros(1, 3), [0])


def test_confusion_png_only_up_to_50_classes(tmp_path):
    small = KineticsEvaluator(num_classes=3)
    small.update(["a"], torch.eye(3)[:1], [0])
    assert small.summary().plot_confusion(tmp_path / "small.png").stat().st_size > 1000
    big = KineticsEvaluator(num_classes=51)
    big.update(["a"], torch.zeros(1, 51), [0])
    assert big.summary().plot_confusion(tmp_path / "big.png") is None


def test_summary_is_json_serialisable(tmp_path):
    ev = KineticsEvaluator(num_classes=2)
    ev.update(["a"], torch.tensor([[0.0, 1.0]]), [1])
    ev.summary().to_json(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["top1"] == 1.0


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ev = KineticsEvaluator(num_classes=3)
    # Rank 0 holds a,b; rank 1 holds c and the padded repeat of a.
    ids = [["a", "b"], ["c", "a"]][rank]
    labels = [[0, 1], [2, 0]][rank]
    ev.update(ids, torch.eye(3)[labels], labels)
    ev.gather()
    s = ev.summary()
    np.save(f"{out_dir}/rank{rank}.npy", np.array([s.num_evaluated, s.top1]))
    dist.destroy_process_group()


def test_gather_merges_ranks_under_ddp(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert np.load(tmp_path / f"rank{rank}.npy").tolist() == [3.0, 1.0]


def test_cli_evaluates_a_checkpoint_on_synthetic_kinetics_with_the_protocol_views(tmp_path):
    import subprocess
    import sys

    from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics
    from spatiotemporal.models import create_model

    data = tmp_path / "data"
    generate_synthetic_kinetics(data, SyntheticKineticsConfig(classes=2, videos_per_class=2, frames=8, size=32), progress=False)
    kwargs = "{num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2}"
    model = create_model("timesformer_tiny", num_classes=2, num_frames=4, image_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name: timesformer_tiny, kwargs: {kwargs}}}\n"
        "data: {num_frames: 4, frame_stride: 2, crop_size: 32, short_side: 32}\n"
    )
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "eval", "kinetics", "--config", str(config),
         "--checkpoint", str(tmp_path / "model.pt"), "--data", str(data / "validate.csv"), "--views", "2x3",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    assert summary["num_annotated"] == 4 and summary["num_evaluated"] == 4 and summary["views_per_video"] == 6
    assert "4 annotated videos, 4 evaluated, 0 missing" in done.stdout
    assert out.with_suffix(".confusion.png").exists()
