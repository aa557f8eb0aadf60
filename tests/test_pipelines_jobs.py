"""The batch jobs on a real local Ray: every input accounted for exactly once, resumable, and
results that match running the library directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import tokenize, video_inference
from pipelines.job import read_table

MODEL = "vivit_tiny"  # the fastest tiny video model on CPU


def make_video(path: Path, seconds: float = 1.6, size: str = "64x48", rate: int = 10, pattern: str = "testsrc") -> Path:
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={rate}",
         "-t", str(seconds), "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, video_dir: Path, points_dir: Path) -> Path:
    """Three good clips, the shared corrupted mp4, a text file posing as a video, a truncated PLY
    and the real living-room scan."""
    root = tmp_path_factory.mktemp("mixed")
    make_video(root / "a.mp4", pattern="testsrc")
    make_video(root / "b.mp4", pattern="smptebars")
    (root / "sub").mkdir()
    make_video(root / "sub" / "c.mp4", pattern="rgbtestsrc", size="48x64")
    (root / "corrupted.mp4").symlink_to(video_dir / "corrupted.mp4")
    (root / "not_a_video.mp4").write_text("this is text, not h264\n")
    (root / "truncated.ply").write_bytes((points_dir / "livingroom_fragment.ply").read_bytes()[:20_000])
    (root / "livingroom.ply").symlink_to(points_dir / "livingroom_fragment.ply")
    return root


GOOD_VIDEOS = {"a.mp4", "b.mp4", "sub/c.mp4"}
BAD_VIDEOS = {"corrupted.mp4", "not_a_video.mp4"}


def test_tokenize_accounts_for_every_input_exactly_once(ray_cluster, mixed_inputs, tmp_path):
    summary = tokenize.run(mixed_inputs, tmp_path, frames=4, stride=8, size=32, tubelet=(2, 16, 16), progress=False)
    results, failures = read_table(tmp_path, "results"), read_table(tmp_path, "failures")
    assert set(results["id"]) == GOOD_VIDEOS | {"livingroom.ply"}
    assert set(failures["id"]) == BAD_VIDEOS | {"truncated.ply"}
    assert len(results) + len(failures) == 7 and results["id"].is_unique and failures["id"].is_unique
    assert (summary.ok, summary.failed, summary.skipped) == (4, 3, 0)
    reasons = dict(zip(failures["id"], failures["error"]))
    assert "decod" in reasons["corrupted.mp4"].lower()
    assert reasons["truncated.ply"]  # the PLY reader's own reason


def test_video_tokens_are_the_clip_cut_into_tubelets(ray_cluster, mixed_inputs, tmp_path):
    from einops import rearrange

    from spatiotemporal.infer import ClipRecipe, clip_views

    tokenize.run(mixed_inputs / "sub", tmp_path, frames=4, stride=8, size=32, tubelet=(2, 16, 16), progress=False)
    sample = tokenize.TokenShards(tmp_path, kind="video")[0]
    assert sample["id"] == "c.mp4"
    assert sample["tokens"].shape == (2 * 2 * 2, 2 * 16 * 16 * 3) and sample["tokens"].dtype == torch.uint8
    assert sample["grid"].tolist() == [2, 2, 2]
    clip = clip_views(mixed_inputs / "sub" / "c.mp4", ClipRecipe(4, 2, 32, None, (1, 1)))[0]
    rebuilt = rearrange(sample["tokens"].numpy(), "(t h w) (pt ph pw c) -> (t pt) (h ph) (w pw) c",
                        t=2, h=2, w=2, pt=2, ph=16, pw=16)
    np.testing.assert_array_equal(rebuilt, clip)


def test_point_tokens_keep_one_point_per_occupied_voxel(ray_cluster, points_dir, tmp_path):
    from spatiotemporal.io.points import read_ply

    tokenize.run(points_dir / "livingroom_fragment.ply", tmp_path, voxel_size=0.05, progress=False)
    sample = tokenize.TokenShards(tmp_path, kind="points")[0]
    coord = read_ply(points_dir / "livingroom_fragment.ply")["coord"]  # float32, as the job sees it
    voxels = np.floor(coord / 0.05).astype(np.int64)
    voxels -= voxels.min(0)
    occupied = np.unique(voxels, axis=0)
    grid = sample["grid_coord"].numpy()
    assert len(grid) == len(occupied)
    assert len(np.unique(grid, axis=0)) == len(grid)
    # Each token's coordinates lie inside the voxel it is filed under.
    own = np.floor(sample["coord"].numpy() / 0.05).astype(np.int64) - np.floor(coord / 0.05).astype(np.int64).min(0)
    np.testing.assert_array_equal(own, grid)
    assert sample["feat"].shape == (len(grid), 3) and float(sample["feat"].max()) <= 1.0


def test_token_shards_feed_a_torch_dataloader(ray_cluster, mixed_inputs, tmp_path):
    tokenize.run(mixed_inputs, tmp_path, frames=4, stride=8, size=32, tubelet=(1, 16, 16), progress=False)
    videos = tokenize.TokenShards(tmp_path, kind="video")
    loader = torch.utils.data.DataLoader(videos, batch_size=3, collate_fn=lambda rows: torch.stack([r["tokens"] for r in rows]))
    (batch,) = list(loader)
    assert batch.shape == (3, 4 * 2 * 2, 16 * 16 * 3)


def test_rerun_skips_everything_already_in_the_output(ray_cluster, mixed_inputs, tmp_path):
    first = tokenize.run(mixed_inputs, tmp_path, frames=4, stride=8, size=32, progress=False)
    shards = sorted(p.name for p in tmp_path.rglob("*.parquet"))
    second = tokenize.run(mixed_inputs, tmp_path, frames=4, stride=8, size=32, progress=False)
    assert (first.ok, first.failed) == (4, 3)
    assert (second.ok, second.failed, second.skipped) == (0, 0, 7)
    assert sorted(p.name for p in tmp_path.rglob("*.parquet")) == shards


def test_rerun_does_only_the_new_inputs_and_can_retry_failures(ray_cluster, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    make_video(inputs / "one.mp4")
    (inputs / "broken.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    tokenize.run(inputs, out, frames=4, stride=8, size=32, progress=False)
    make_video(inputs / "two.mp4")
    make_video(inputs / "broken.mp4", pattern="smptebars")  # fixed since the first run
    plain = tokenize.run(inputs, out, frames=4, stride=8, size=32, progress=False)
    assert (plain.ok, plain.failed, plain.skipped) == (1, 0, 2)
    retried = tokenize.run(inputs, out, frames=4, stride=8, size=32, retry_failed=True, progress=False)
    assert (retried.ok, retried.failed, retried.skipped) == (1, 0, 2)
    assert sorted(read_table(out)["id"]) == ["broken.mp4", "one.mp4", "two.mp4"]
    assert read_table(out, "failures").empty


def test_video_inference_matches_the_library_and_records_failures(ray_cluster, mixed_inputs, tmp_path):
    from spatiotemporal.infer import VideoClassifier
    from spatiotemporal.models import create_model

    # A checkpoint whose head is not all zeros, so the ranking means something.
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=7)
    names = [f"action {i}" for i in range(7)]
    torch.save({"model": model.state_dict(), "class_names": names}, tmp_path / "ckpt.pt")
    summary = video_inference.run(
        mixed_inputs, tmp_path / "out", model=MODEL, checkpoint=str(tmp_path / "ckpt.pt"), views="2x3",
        topk=3, embed=True, batch_size=2, precision="fp32", progress=False,
    )
    results = read_table(tmp_path / "out").set_index("id")
    failures = read_table(tmp_path / "out", "failures")
    assert set(results.index) == GOOD_VIDEOS and set(failures["id"]) == BAD_VIDEOS
    assert (summary.ok, summary.failed) == (3, 2)
    reference = VideoClassifier(MODEL, str(tmp_path / "ckpt.pt"), views="2x3", device="cpu", precision="fp32")
    for video in GOOD_VIDEOS:
        expected = reference.predict(mixed_inputs / video, topk=3)
        row = results.loc[video]
        assert list(row["labels"]) == expected.labels
        np.testing.assert_allclose(row["probs"], expected.probs, rtol=1e-4, atol=1e-6)
        assert len(row["embedding"]) == 192 and row["decode_s"] > 0 and row["infer_s"] > 0
        assert row["precision"] == "fp32"


def test_video_inference_cuts_the_clips_a_checkpoint_was_built_for(ray_cluster, mixed_inputs, tmp_path):
    # Fine-tuned at 4 frames every 2 of 96 px (timesformer_tiny is registered for 8 x 4 at 112): the
    # decode side must cut those clips, not the registered ones the model would silently resize.
    from spatiotemporal.infer import VideoClassifier
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    model = create_model("timesformer_tiny", num_classes=5, num_frames=4, image_size=96)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_name": "timesformer_tiny",
                "model_kwargs": {"num_frames": 4, "image_size": 96},
                "clip": {"num_frames": 4, "frame_stride": 2, "crop_size": 96, "short_side": 96},
                "class_names": list("abcde")}, checkpoint)
    video_inference.run(mixed_inputs / "a.mp4", tmp_path / "out", model="timesformer_tiny",
                        checkpoint=str(checkpoint), views="1x1", precision="fp32", progress=False)
    (row,) = read_table(tmp_path / "out").to_dict("records")
    reference = VideoClassifier("timesformer_tiny", str(checkpoint), views="1x1", device="cpu", precision="fp32")
    assert (reference.recipe.frames, reference.recipe.stride, reference.recipe.crop) == (4, 2, 96)
    expected = reference.predict(mixed_inputs / "a.mp4", topk=5)
    np.testing.assert_allclose(row["probs"], expected.probs, rtol=1e-4, atol=1e-6)


def test_auto_precision_on_cpus_is_decided_once_on_the_driver(ray_cluster, mixed_inputs, tmp_path, monkeypatch):
    # The driver probes (here a spy that picks bf16) at the actors' one thread; the actors compute
    # in what it chose rather than each probing again while its siblings load the cores.
    import spatiotemporal.infer  # noqa: F401 - imported first: it binds the real choose_precision
    import spatiotemporal.precision as precision

    calls = []

    def spy(requested, device, shapes=None, **kwargs):
        calls.append((requested, device.type, torch.get_num_threads()))
        return precision.PrecisionChoice(requested, "bf16", "the driver's spy")

    monkeypatch.setattr(precision, "choose_precision", spy)
    summary = video_inference.run(mixed_inputs, tmp_path / "out", model=MODEL, views="1x1", workers=2,
                                  random_weights=True, precision="auto", device="cpu", progress=False)
    assert summary.ok == 3
    assert calls == [("auto", "cpu", 1)]
    assert set(read_table(tmp_path / "out")["precision"]) == {"bf16"}


def test_cpu_workers_each_take_one_core_that_decodes_and_infers():
    """On CPUs a worker is one actor on one core and one torch thread, decoding its own batches:
    nothing oversubscribed, and `workers` is the number of cores the job uses. With GPUs, decode
    tasks feed one actor per GPU."""
    cpu = video_inference.resource_plan(2, {"CPU": 2.0})
    assert cpu.decode_in_actor and cpu.actor == {"num_cpus": 1.0} and cpu.threads == 1 and cpu.device == "cpu"
    # More workers than CPUs share them rather than wait forever for a CPU each.
    assert video_inference.resource_plan(4, {"CPU": 2.0}).actor == {"num_cpus": 0.5}
    gpu = video_inference.resource_plan(2, {"CPU": 8.0, "GPU": 2.0})
    assert not gpu.decode_in_actor and gpu.actor == {"num_gpus": 1} and gpu.device == "cuda"
    assert video_inference.resource_plan(1, {"CPU": 8.0, "GPU": 1.0}, device="cpu").decode_in_actor
    with pytest.raises(ValueError):
        video_inference.resource_plan(0, {"CPU": 2.0})


def test_pipeline_run_reads_a_config_with_overrides(ray_cluster, mixed_inputs, tmp_path):
    from pipelines.config import run_config

    root = Path(__file__).resolve().parents[1]
    summary = run_config(root / "configs/pipelines/tokenize.yaml",
                         [f"input={mixed_inputs / 'sub'}", f"output={tmp_path}", "frames=2", "size=16", "tubelet=1x16x16"])
    assert (summary.ok, summary.failed) == (1, 0)
    assert tokenize.TokenShards(tmp_path)[0]["tokens"].shape == (2, 16 * 16 * 3)


def test_summary_json_and_failures_table_name_path_and_error(ray_cluster, mixed_inputs, tmp_path):
    import json

    tokenize.run(mixed_inputs, tmp_path, frames=4, stride=8, size=32, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {k: summary[k] for k in ("ok", "failed", "skipped", "total")} == {"ok": 4, "failed": 3, "skipped": 0, "total": 7}
    assert summary["throughput"] > 0
    # Start-up is part of `seconds`, and the summary says how much of it went before the first result.
    assert 0 <= summary["extra"]["ray_start_s"] <= summary["extra"]["first_output_s"] <= summary["seconds"]
    failures = pd.read_parquet(tmp_path / "failures")
    assert list(failures.columns) == ["id", "path", "error"]
    assert all(Path(p).is_absolute() for p in failures["path"]) and failures["error"].str.len().min() > 0


@pytest.fixture(scope="module")
def scans(tmp_path_factory, points_dir: Path) -> Path:
    """Every 50th point of the living-room scan (real geometry, CPU-test sized) and a truncated PLY."""
    from spatiotemporal.io.points import read_ply, write_ply

    root = tmp_path_factory.mktemp("scans")
    cloud = read_ply(points_dir / "livingroom_fragment.ply")
    write_ply(root / "room.ply", {"coord": cloud["coord"][::50], "color": cloud["color"][::50]})
    (root / "broken.ply").write_bytes((points_dir / "livingroom_fragment.ply").read_bytes()[:5000])
    return root


def test_point_inference_writes_submission_files_and_parquet(ray_cluster, scans, tmp_path):
    from pipelines import point_inference
    from spatiotemporal.data.scannet import NYU40_IDS
    from spatiotemporal.io.points import read_ply

    summary = point_inference.run(scans, tmp_path, model="point_transformer_tiny", random_weights=True,
                                  progress=False)
    assert (summary.ok, summary.failed) == (1, 1)
    failures = read_table(tmp_path, "failures")
    assert list(failures["id"]) == ["broken.ply"] and failures["error"][0]
    (row,) = read_table(tmp_path).to_dict("records")
    n = len(read_ply(scans / "room.ply")["coord"])
    submitted = np.loadtxt(tmp_path / "submission" / "room.txt", dtype=np.int64)
    assert submitted.shape == (n,) and row["num_points"] == n
    np.testing.assert_array_equal(submitted, row["labels"])
    assert row["label_kind"] == "nyu40" and set(np.unique(submitted)) <= set(NYU40_IDS)
    assert row["voxel_size"] == 0.02  # point_transformer_tiny records no grid: Pointcept's ScanNet 2 cm
    again = point_inference.run(scans, tmp_path, model="point_transformer_tiny", random_weights=True,
                                  progress=False)
    assert (again.ok, again.failed, again.skipped) == (0, 0, 2)


def test_point_inference_of_another_label_set_submits_class_indices(ray_cluster, scans, tmp_path):
    # A 25-class head whose bias makes every point class 22: not ScanNet's label set, so there are
    # no nyu40 ids; the job writes the class indices and says so, instead of failing every scan.
    from pipelines import point_inference
    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    model = create_model("point_transformer_tiny", num_classes=25)
    with torch.no_grad():
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.zero_()
        model.classifier[-1].bias[22] = 10.0
    checkpoint = tmp_path / "ck.pt"
    torch.save({"model": model.state_dict(), "num_classes": 25}, checkpoint)
    out = tmp_path / "out"
    summary = point_inference.run(scans, out, model="point_transformer_tiny", checkpoint=str(checkpoint),
                                  progress=False)
    assert (summary.ok, summary.failed) == (1, 1)
    (row,) = read_table(out).to_dict("records")
    assert row["label_kind"] == "class_index"
    assert set(np.loadtxt(out / "submission" / "room.txt", dtype=np.int64)) == {22}


def test_point_inference_takes_scannet_scene_folders(ray_cluster, tmp_path):
    from pipelines import point_inference
    from spatiotemporal.io.points import read_points

    scenes = tmp_path / "scans"
    subprocess.run([sys.executable, "-m", "spatiotemporal.cli", "prepare", "synthetic-scannet", str(scenes),
                    "--scenes", "2", "--spacing", "0.15"], check=True, capture_output=True)
    summary = point_inference.run(scenes, tmp_path / "out", model="point_transformer_tiny", random_weights=True,
                                  progress=False)
    assert (summary.ok, summary.failed) == (2, 0)
    for scene in ("scene0000_00", "scene0001_00"):
        submitted = np.loadtxt(tmp_path / "out" / "submission" / f"{scene}.txt", dtype=np.int64)
        assert submitted.shape == (len(read_points(scenes / scene)["coord"]),)
