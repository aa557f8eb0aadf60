"""Published weights named in a config: their release's own arguments reach everything that reads
the config (clips, model, checkpoints), a resumed run does without their file, and a front end
resolves a model's spec (and skeleton) without reading weights. No download: entries are resolved
by name only, and files are stood in for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spatiotemporal.train.config import load_config
from spatiotemporal.train.tasks import VideoTask, build_configured_model, evaluation_config, share_config_weights


def large(**model) -> dict:
    return load_config(data={"model": {"name": "timesformer_large", **model}})


def test_a_config_of_the_64_frame_release_cuts_and_builds_64_frames():
    # timesformer_large is registered for 96 frames; its SSv2 release is a 64-frame model.
    config = large(weights="ssv2")
    assert config["model"]["kwargs"] == {"num_frames": 64}
    assert VideoTask(config).num_frames == 64
    assert large(weights="k400")["model"]["kwargs"] == {}
    assert VideoTask(large(weights="k400")).num_frames == 96
    # The config's own arguments win over the release's.
    explicit = large(weights="ssv2", kwargs={"num_frames": 32, "drop_path_rate": 0.1})
    assert explicit["model"]["kwargs"] == {"num_frames": 32, "drop_path_rate": 0.1}
    assert VideoTask(explicit).num_frames == 32


def test_evaluating_published_weights_takes_their_own_arguments():
    config = evaluation_config(large(), "ssv2")  # eval kinetics --weights ssv2
    assert config["model"]["kwargs"] == {"num_frames": 64} and config["model"]["num_classes"] == 174
    assert VideoTask(config).num_frames == 64
    # A config of one release evaluating another drops the first one's arguments.
    other = evaluation_config(large(weights="ssv2"), "k400")
    assert other["model"]["kwargs"] == {} and VideoTask(other).num_frames == 96
    # A checkpoint evaluated after the build keeps the arguments its run was fine-tuned with.
    assert evaluation_config(large(weights="ssv2"), None)["model"]["kwargs"] == {"num_frames": 64}


def test_a_resumed_run_neither_shares_nor_reads_the_published_file(monkeypatch):
    import spatiotemporal.train.tasks as tasks
    import spatiotemporal.weights as weights

    def refuse(*args, **kwargs):
        raise AssertionError("the published weights were fetched for a resumed run")

    monkeypatch.setattr(weights, "share_weights", refuse)
    built = []
    monkeypatch.setattr(tasks, "create_model", lambda name, **kwargs: built.append((name, kwargs)) or "model")
    config = {**large(weights="ssv2"), "_resume_dir": "/runs/x/checkpoint_000001"}
    assert share_config_weights(config) is config
    assert build_configured_model(config, 5) == "model"
    assert built == [("timesformer_large", {"num_classes": 5, "num_frames": 64})]
    # A run that starts from the beginning still shares them.
    with pytest.raises(AssertionError, match="fetched"):
        share_config_weights({**config, "_resume_dir": None})


def _tiny_checkpoint(path: Path) -> Path:
    from spatiotemporal.models import create_model

    model = create_model("timesformer_tiny", num_classes=5, num_frames=4, image_size=96)
    torch.save({"model": model.state_dict(), "model_name": "timesformer_tiny",
                "model_kwargs": {"num_frames": 4, "image_size": 96},
                "clip": {"num_frames": 4, "frame_stride": 2, "crop_size": 96, "short_side": 96},
                "class_names": list("abcde")}, path)
    return path


def test_resolved_spec_reads_metadata_only(monkeypatch, tmp_path):
    import spatiotemporal.convert as convert
    import spatiotemporal.weights as weights
    from spatiotemporal.models.registry import resolved_spec

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt.pt")

    def whole_read(*args, **kwargs):
        raise AssertionError("the whole checkpoint was read for its spec")

    monkeypatch.setattr(convert, "read_checkpoint", whole_read)
    spec = resolved_spec("timesformer_tiny", str(checkpoint))
    assert (spec.num_frames, spec.frame_stride, spec.crop_size) == (4, 2, 96)
    # Published weights: the entry's arguments, the file (here one that is not a checkpoint) unread.
    stand_in = tmp_path / "TimeSformer_divST_64_224_SSv2.pyth"
    stand_in.write_text("not read")
    monkeypatch.setattr(weights, "local_weights",
                        lambda name, model=None: (weights.get_entry(name, model), stand_in))
    assert resolved_spec("timesformer_large", weights="ssv2").num_frames == 64


def test_the_model_skeleton_is_the_architecture_on_the_meta_device(tmp_path):
    from spatiotemporal.models import create_model
    from spatiotemporal.models.registry import model_skeleton

    checkpoint = _tiny_checkpoint(tmp_path / "ckpt.pt")
    skeleton = model_skeleton("timesformer_tiny", str(checkpoint))
    built = create_model("timesformer_tiny", pretrained=str(checkpoint))
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert repr(skeleton) == repr(built) and skeleton.spec == built.spec and skeleton.num_classes == 5


def test_a_cpu_job_decides_auto_precision_once_on_the_driver(monkeypatch):
    import spatiotemporal.infer  # noqa: F401 - imported first: it binds the real choose_precision
    import spatiotemporal.precision as precision
    from pipelines.video_inference import ResourcePlan, driver_precision
    from spatiotemporal.models.registry import resolved_spec

    calls = []

    def spy(requested, device, shapes=None, **kwargs):
        calls.append((requested, device.type, torch.get_num_threads(), len(shapes())))
        return precision.PrecisionChoice(requested, "bf16", "spy")

    monkeypatch.setattr(precision, "choose_precision", spy)
    spec = resolved_spec("vivit_tiny")
    cpu = ResourcePlan(decode_in_actor=True, actor={"num_cpus": 1.0}, threads=1, decode_cpus=0.5)
    gpu = ResourcePlan(decode_in_actor=False, actor={"num_gpus": 1}, threads=1, decode_cpus=0.5)
    threads = torch.get_num_threads()
    assert driver_precision("auto", cpu, "vivit_tiny", None, None, spec) == "bf16"
    assert calls and calls[0][:3] == ("auto", "cpu", 1) and calls[0][3] > 0
    assert torch.get_num_threads() == threads
    assert driver_precision("auto", gpu, "vivit_tiny", None, None, spec) == "auto"  # each GPU decides
    assert driver_precision("fp32", cpu, "vivit_tiny", None, None, spec) == "fp32"
    assert len(calls) == 1
