"""`spatiotemporal infer`: top-k for videos, per-class counts (+ labeled PLY and PNG) for scans,
one line per failed file, exit 1 when any failed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

from spatiotemporal.infer import ClipRecipe, aggregate_views, clip_views, views_to_input
from spatiotemporal.models import create_model

MODEL = "vivit_tiny"


def infer(capsys, *argv: str):
    """Run `spatiotemporal infer ...` in this process (the model is the costly part, not the
    interpreter start-up); returns (exit code, stdout, stderr)."""
    from spatiotemporal.cli import main

    code = main(["infer", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def make_video(path: Path, size: str = "96x64", pattern: str = "testsrc") -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate=10",
                    "-t", "2", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Random (not zero) head weights and our own class names, saved the way training saves."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=6)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
        model.head.bias.copy_(torch.linspace(-1, 1, 6))
    path = tmp_path_factory.mktemp("ckpt") / "vivit.pt"
    torch.save({"model": model.state_dict(), "class_names": [f"motion {i}" for i in range(6)]}, path)
    return path


def test_softmax_and_logit_averaging_differ_as_the_papers_define():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    softmax_mean = (torch.tensor([np.e**2, 1]) / (np.e**2 + 1) + torch.tensor([0.5, 0.5])) / 2
    torch.testing.assert_close(aggregate_views(logits, "softmax"), softmax_mean.float())
    torch.testing.assert_close(aggregate_views(logits, "logits"), torch.tensor([1.0, 0.0]).softmax(0))


def test_three_crops_span_the_long_side_of_each_temporal_view(tmp_path):
    from spatiotemporal.io.video import VideoReader

    video = make_video(tmp_path / "wide.mp4", size="96x64")
    views = clip_views(video, ClipRecipe(frames=4, stride=2, crop=32, short_side=32, views=(2, 3)))
    assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.uint8
    from spatiotemporal.data.transforms import short_side_scale

    with VideoReader(video) as reader:
        frames = torch.as_tensor(reader.get_frames(list(range(len(reader)))))
    # Resized as evaluation resizes: (T, 32, 48, 3).
    frames = rearrange(short_side_scale(rearrange(frames, "t h w c -> t c h w"), 32), "t c h w -> t h w c").numpy()
    width = frames.shape[2]
    # Views 0, 1, 2 are the first temporal clip cut left, centre and right.
    first_clip = views[0]
    # Resizing a 4-frame view and the whole video in one call may round a pixel differently: 1 level.
    def same(a, b):
        return np.abs(a.astype(int) - b.astype(int)).max() <= 1

    lefts = [same(first_clip[0], f[:, :32]) for f in frames]
    assert any(lefts)
    t = lefts.index(True)
    assert same(views[2][0], frames[t, :, width - 32 :])
    assert same(views[1][0], frames[t, :, (width - 32 + 1) // 2 : (width - 32 + 1) // 2 + 32])


def test_videos_get_top_k_labels_from_the_checkpoints_class_names(tmp_path, checkpoint, video_dir, capsys):
    a = make_video(tmp_path / "a.mp4")
    b = make_video(tmp_path / "b.mp4", pattern="smptebars")
    code, stdout, stderr = infer(capsys, str(a), str(video_dir / "corrupted.mp4"), str(b), "--model", MODEL,
                                 "--checkpoint", str(checkpoint), "--views", "2x1", "--topk", "3", "--device", "cpu",
                                 "--precision", "fp32", "--json")
    assert code == 1
    failed_lines = [line for line in stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed_lines) == 1 and "corrupted.mp4" in failed_lines[0] and "decod" in failed_lines[0]
    report = json.loads(stdout)
    assert [r["path"] for r in report["results"]] == [str(a), str(b)]
    # The reference: the same views through the model by hand.
    model = create_model(MODEL, num_classes=6, pretrained=str(checkpoint)).eval()
    spec = model.spec
    for record, video in zip(report["results"], (a, b)):
        views = clip_views(video, ClipRecipe.from_spec(spec, (2, 1)))
        with torch.no_grad():
            probs = aggregate_views(model(views_to_input(views, spec)), spec.protocol.aggregation)
        top = probs.topk(3)
        assert record["labels"] == [f"motion {i}" for i in top.indices.tolist()]
        np.testing.assert_allclose(record["probs"], top.values.numpy(), rtol=1e-4)
        assert record["precision"] == "fp32"


def test_bf16_runs_under_autocast_and_keeps_the_fp32_ranking(tmp_path, checkpoint, capsys):
    """--precision bf16 (what auto picks where the probe finds bf16 faster): matmuls in bf16,
    so the probabilities move by bf16 rounding, not more, and the ranking holds."""
    video = make_video(tmp_path / "a.mp4")
    runs = {}
    for precision in ("fp32", "bf16"):
        code, stdout, stderr = infer(capsys, str(video), "--model", MODEL, "--checkpoint", str(checkpoint),
                                     "--views", "2x3", "--topk", "6", "--device", "cpu", "--precision", precision,
                                     "--json")
        assert code == 0, stderr[-2000:]
        (runs[precision],) = json.loads(stdout)["results"]
        assert runs[precision]["precision"] == precision
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16["probs"] != fp32["probs"]  # autocast took effect
    np.testing.assert_allclose(bf16["probs"], fp32["probs"], atol=0.02)
    assert bf16["labels"][0] == fp32["labels"][0]


def test_bf16_units_are_reported_and_explicit_precisions_are_kept():
    """What `auto` picks on a CPU is the measured probe's choice: tests/test_precision_probe.py."""
    from spatiotemporal.precision import choose_precision, has_native_bf16

    cpu = torch.device("cpu")
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert has_native_bf16(cpu) == native
    assert choose_precision("fp32", cpu).dtype == torch.float32 and choose_precision("bf16", cpu).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        choose_precision("fp16", cpu).dtype


@pytest.mark.parametrize("name", ["timesformer_tiny", "vivit_tiny", "mvitv2_tiny", "swin3d_tiny"])
def test_bf16_weights_stored_once_give_the_same_bits_as_autocast_casting_them_per_call(name):
    """The bf16 inference path stores the Linear/Conv weights in bf16 once: autocast would cast
    exactly those, to exactly that dtype, on every call, so nothing but time may change."""
    import copy

    from spatiotemporal.precision import store_autocast_weights

    torch.manual_seed(0)
    model = create_model(name, num_classes=7).eval()
    stored = store_autocast_weights(copy.deepcopy(model), torch.bfloat16)
    matmul_layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    for module in stored.modules():
        expected = torch.bfloat16 if isinstance(module, matmul_layers) else torch.float32
        assert all(p.dtype == expected for p in module.parameters(recurse=False)), module
    clip = torch.randn(2, 3, model.spec.num_frames, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(stored(clip), model(clip))


def test_text_output_prints_ranked_labels(tmp_path, checkpoint, capsys):
    a = make_video(tmp_path / "a.mp4")
    code, stdout, stderr = infer(capsys, str(a), "--model", MODEL, "--checkpoint", str(checkpoint), "--views", "1x1",
                                 "--topk", "2", "--device", "cpu")
    assert code == 0, stderr[-2000:]
    lines = stdout.splitlines()
    assert lines[0] == str(a) and lines[1].strip().startswith("1. motion ") and lines[2].strip().startswith("2. motion ")


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory, points_dir) -> Path:
    """Every 40th point of the living-room scan: the real geometry, small enough for a CPU test."""
    from spatiotemporal.io.points import read_ply, write_ply

    cloud = read_ply(points_dir / "livingroom_fragment.ply")
    small = {k: v[::40] for k, v in cloud.items() if isinstance(v, np.ndarray) and len(v) == len(cloud["coord"])}
    path = tmp_path_factory.mktemp("scan") / "room.ply"
    write_ply(path, small)
    return path


def test_a_scan_gets_class_counts_a_labeled_ply_and_a_png(tmp_path, small_scan, points_dir, capsys):
    from spatiotemporal.data.scannet import NYU40_IDS
    from spatiotemporal.io.points import read_ply

    broken = tmp_path / "broken.ply"
    broken.write_bytes((points_dir / "livingroom_fragment.ply").read_bytes()[:5000])
    code, stdout, stderr = infer(capsys, str(small_scan), str(broken), "--model", "point_transformer_tiny",
                                 "--random-weights", "--out", str(tmp_path / "out"), "--device", "cpu", "--json")
    assert code == 1
    assert [line for line in stderr.splitlines() if line.startswith("FAILED")][0].startswith(f"FAILED {broken}:")
    (record,) = json.loads(stdout)["results"]
    n = len(read_ply(small_scan)["coord"])
    assert record["points"] == n and sum(record["counts"].values()) == n
    labeled = read_ply(record["labeled_ply"])
    assert len(labeled["coord"]) == n
    np.testing.assert_allclose(labeled["coord"], read_ply(small_scan)["coord"])
    assert set(np.unique(labeled["label"])) <= set(NYU40_IDS)
    png = Path(record["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_scan_is_voxelized_at_the_grid_the_model_was_trained_at(small_scan, capsys):
    code, stdout, stderr = infer(capsys, str(small_scan), "--model", "stratified_transformer_tiny",
                                 "--random-weights", "--device", "cpu", "--json")
    assert code == 0, stderr[-2000:]
    (record,) = json.loads(stdout)["results"]
    assert record["voxel_size"] == 0.04  # stratified_transformer_tiny's config grid_size, not 0.02


def test_a_labeled_ply_of_another_label_set_holds_class_indices_and_says_so(tmp_path, small_scan, capsys):
    from spatiotemporal.io.points import read_ply

    model = create_model("point_transformer_tiny", num_classes=25)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.arange(25.0) == 22)  # every point: class 22
    checkpoint = tmp_path / "ck.pt"
    torch.save({"model": model.state_dict(), "num_classes": 25}, checkpoint)
    out = tmp_path / "out"
    code, stdout, stderr = infer(capsys, str(small_scan), "--model", "point_transformer_tiny", "--checkpoint",
                                 str(checkpoint), "--out", str(out), "--device", "cpu")
    assert code == 0, stderr[-2000:]
    assert "  class_22 " in stdout
    assert "  the PLY's label property holds class indices 0..24 (not the ScanNet label set, so no nyu40 ids)" in stdout
    assert set(np.unique(read_ply(out / "room.labeled.ply")["label"])) == {22}
