"""Published weights by name, end to end: each front end that takes `--weights NAME` or
`model.weights: NAME` gets the catalogue entry's file from a publisher (a loopback HTTP server
serving a generated checkpoint in that entry's real layout: random tensors with the release's keys
and shapes, saved as the publisher saves them) and computes with exactly those tensors.

- `pipeline video-inference --weights`: the driver downloads the file, the Ray job's actors load
  it, and its predictions on real clips are those of the same file loaded in this process.
- training with `model.weights` through Ray Train (`fit`): the run starts from the published
  tensors with a new head for its own classes, and finishes.
- `eval kinetics --weights`: the report is that of the published weights.

The entries are the cheapest that run on two cores: MViTv2-S's SlowFast release (69 GFLOPs per
16x224 view, the fewest of the catalogue; no published hash, so a generated file is accepted and
its digest recorded) for inference and evaluation at one view; Video Swin-T's release for training,
because a Swin takes 32-pixel clips with the release's own tensors (MViTv2's position tables are
sized for 224)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.job import read_table
from spatiotemporal.cli import main
from spatiotemporal.models import create_model
from spatiotemporal.weights import get_entry, manual_path
from tests.weights_server import as_published, cache, serve, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # full-size models on real clips: 20 to 30 s each on two cores

INFER = "mvitv2_s.k400_slowfast"
TRAIN = "swin3d_t.k400_official"
CLIPS = ("flipping_a_pancake.mkv", "rotated_90.mov")  # real clips; one is stored rotated
# The seed of the generated release. Training seeds its model with the config's seed (0): a
# release drawn from that seed would be the very tensors a run that ignored it starts from.
PUBLISHER_SEED = 1234
MVIT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mvitv2_s_kinetics400.yaml"




def publish(server, name: str) -> tuple[dict, bytes]:
    """A generated release of the entry `name` on the loopback server: (the state dict it holds,
    in our names; the file's bytes)."""
    torch.manual_seed(PUBLISHER_SEED)
    state = create_model(get_entry(name).model).state_dict()
    return state, serve(server, name, as_published(name, state))


@pytest.fixture
def clips(tmp_path, video_dir) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in CLIPS:
        (folder / name).symlink_to(video_dir / name)
    return folder


def downloaded(name: str, body: bytes) -> Path:
    """The entry's file in the cache, checked to be the bytes the server published."""
    path = manual_path(get_entry(name))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    return path


def test_a_video_inference_job_predicts_with_the_weights_it_names(train_ray_cluster, server, cache, clips, tmp_path):
    from spatiotemporal.infer import VideoClassifier

    _, body = publish(server, INFER)
    out = tmp_path / "out"
    code = main(["pipeline", "video-inference", "--input", str(clips), "--output", str(out), "--model", "mvitv2_s",
                 "--weights", "k400_slowfast", "--views", "1x1", "--topk", "5", "--batch-size", "2",
                 "--precision", "fp32", "--quiet"])  # fmt: skip
    assert code == 0
    assert [m for m, _, _ in server.requests] == ["GET"]  # the driver's one download; the actor used its file
    file = downloaded(INFER, body)
    # The same release loaded strictly in this process, from that file, on the same view of each clip.
    reference = VideoClassifier("mvitv2_s", checkpoint=str(file), views="1x1", device="cpu", precision="fp32")
    results = read_table(out).set_index("id")
    assert sorted(results.index) == sorted(CLIPS)
    for clip in CLIPS:
        expected = reference.predict(clips / clip, topk=5)
        row = results.loc[clip]
        assert list(row["class_ids"]) == expected.class_ids
        assert list(row["labels"]) == expected.labels
        np.testing.assert_allclose(row["probs"], expected.probs, rtol=1e-4, atol=1e-6)
    assert json.loads((out / "job.json").read_text())["weights"] == INFER


def test_training_with_model_weights_starts_from_the_published_tensors(train_ray_cluster, server, cache, tiny_kinetics,
                                                                      tmp_path):
    from spatiotemporal.train import checkpoint as ckpt
    from spatiotemporal.train.config import load_config
    from spatiotemporal.train.loop import fit

    published, body = publish(server, TRAIN)
    config = load_config(
        data={"model": {"name": "swin3d_t", "weights": "k400_official"}},
        overrides=[
            "name=finetune", f"output_dir={tmp_path / 'runs'}", f"data.root={tiny_kinetics}",
            "data.num_frames=8", "data.frame_stride=1", "data.crop_size=32", "data.short_side=32",
            "data.batch_size=8", "data.hflip=false", "eval.views=1x1", "eval.batch_size=4",
            "schedule.epochs=1", "schedule.warmup_epochs=0",
            # Everything but the new head is frozen (lr x 0), so after training the backbone is
            # still exactly what the run started from.
            "optim.lr_scales={patch_embed: 0, stages: 0, norm: 0}",
            "ray.num_workers=1", "ray.resources_per_worker={CPU: 2}",
        ],
    )  # fmt: skip
    final = fit(config)
    assert final["num_evaluated"] == 4  # the run finished: an epoch trained, the 4 held-out clips evaluated
    assert [m for m, _, _ in server.requests] == ["GET"]
    directory, state, _ = ckpt.resume_point(tmp_path / "runs" / "finetune")
    assert (state["position"]["epoch"], state["position"]["step"]) == (1, 2)  # 16 clips, batches of 8
    # The run records the release it started from, as the driver resolved it for the workers.
    started_from = state["config"]["_weights"]
    assert started_from["entry"] == TRAIN
    assert started_from["files"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    assert started_from["files"][0]["path"] == str(downloaded(TRAIN, body))
    trained = torch.load(directory / ckpt.MODEL_FILE, map_location="cpu", weights_only=False)
    assert len(trained["class_names"]) == 2
    model = trained["model"]
    assert model["head.weight"].shape == (2, published["head.weight"].shape[1])  # a new head for 2 classes
    backbone = [key for key in published if not key.startswith("head.")]
    assert sorted(backbone) == sorted(key for key in model if not key.startswith("head."))
    for key in backbone:
        torch.testing.assert_close(model[key], published[key], rtol=0, atol=0, msg=key)


def test_eval_kinetics_reports_the_published_weights(server, cache, clips, tmp_path, capsys):
    from spatiotemporal.infer import VideoClassifier
    from spatiotemporal.meta import kinetics_class_names

    published, body = publish(server, INFER)
    # What the release predicts for the real clips, from its tensors (saved here in our own layout,
    # apart from the download): the first clip is labelled with its top-1 class, the second with its
    # second class, so the published weights score top-1 50% and top-5 100% on them.
    torch.save({"model": published}, tmp_path / "release.pt")
    reference = VideoClassifier("mvitv2_s", checkpoint=str(tmp_path / "release.pt"), views="1x1", device="cpu",
                                precision="fp32")
    # The data as mmaction2 lists Kinetics: `path class-index` lines, the class names beside them.
    data = tmp_path / "k400"
    data.mkdir()
    (data / "classes.json").write_text(json.dumps({"classes": list(kinetics_class_names(400))}))
    lines = []
    for rank, clip in enumerate(CLIPS):
        (data / clip).symlink_to(clips / clip)
        lines.append(f"{clip} {reference.predict(clips / clip, topk=2).class_ids[rank]}")
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    summary = tmp_path / "summary.json"
    code = main(["eval", "kinetics", "--config", str(MVIT_CONFIG), "--weights", "k400_slowfast",
                 "--data", str(data / "val.txt"), "--views", "1x1", "--batch-size", "2", "--json", str(summary),
                 "data.loader_workers=0"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    report = json.loads(summary.read_text())
    assert (report["num_annotated"], report["num_evaluated"], report["views_per_video"]) == (2, 2, 1)
    assert (report["top1"], report["top5"]) == (0.5, 1.0)
    assert [m for m, _, _ in server.requests] == ["GET"]  # the release came from the publisher
    downloaded(INFER, body)
