"""No silent random weights: `infer` without --weights or --checkpoint refuses, naming the model's
catalogue entries; with --random-weights it runs and says the weights are random."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spatiotemporal.cli import main

SHARED = Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VIDEO = SHARED / "video" / "rotated_90.mov"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_infer_without_weights_refuses_and_lists_the_entries(capsys):
    code, stdout, stderr = run(capsys, "infer", str(VIDEO), "--model", "mvitv2_s", "--device", "cpu")
    assert (code, stdout) == (2, "")
    assert stderr == ("error: mvitv2_s has no weights: pass --weights NAME (published: mvitv2_s.k400, "
                      "mvitv2_s.k400_slowfast), --checkpoint PATH, or --random-weights for a smoke test\n")


def test_a_model_with_no_published_weights_says_so(capsys):
    code, _, stderr = run(capsys, "infer", str(VIDEO), "--model", "vivit_tiny", "--device", "cpu")
    assert code == 2
    assert "(the catalogue has no published weights for it)" in stderr


@pytest.mark.skipif(not VIDEO.exists(), reason="needs the shared video samples")
def test_random_weights_run_and_say_so(capsys):
    code, stdout, stderr = run(capsys, "infer", str(VIDEO), "--model", "vivit_tiny", "--random-weights",
                               "--views", "1x1", "--device", "cpu", "--precision", "fp32", "--topk", "2")
    assert code == 0, stderr
    assert stderr.splitlines()[0] == ("note: vivit_tiny runs with random weights (--random-weights): "
                                      "the predictions mean nothing")
    assert "random weights" not in stdout  # stdout holds the predictions alone
    code, stdout, stderr = run(capsys, "infer", str(VIDEO), "--model", "vivit_tiny", "--random-weights",
                               "--views", "1x1", "--device", "cpu", "--precision", "fp32", "--json")
    assert code == 0 and json.loads(stdout)["weights"] == "random"


def test_offline_weights_that_are_not_cached_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path))
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    code, stdout, stderr = run(capsys, "infer", str(VIDEO), "--model", "mvitv2_s", "--weights", "k400",
                               "--device", "cpu")
    assert (code, stdout) == (2, "")
    assert stderr == (f"error: mvitv2_s.k400: offline; put "
                      f"https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth at "
                      f"{tmp_path}/weights/mvitv2_s.k400/mvit_v2_s-ae3be167.pth\n")


def test_weights_path_prints_a_cached_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path))
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    target = tmp_path / "weights" / "mvitv2_b.k400_slowfast" / "MViTv2_B_32x3_k400_f304025456.pyth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"copied by hand")
    assert run(capsys, "weights", "path", "mvitv2_b.k400_slowfast") == (0, f"{target}\n", "")
    code, stdout, _ = run(capsys, "weights", "verify")
    assert (code, stdout) == (0, f"mvitv2_b.k400_slowfast: ok {target}\n")
    target.write_bytes(b"changed since")
    code, stdout, _ = run(capsys, "weights", "verify", "mvitv2_b.k400_slowfast")
    assert code == 1 and stdout.startswith("mvitv2_b.k400_slowfast: mismatch ")


def test_a_pipeline_without_weights_is_refused_before_ray_starts(capsys, tmp_path):
    code, stdout, stderr = run(capsys, "pipeline", "video-inference", "--input", str(VIDEO), "--output",
                               str(tmp_path / "out"), "--model", "mvitv2_s", "--quiet")
    assert (code, stdout) == (2, "")
    assert stderr == ("error: mvitv2_s has no weights: pass --weights NAME (published: mvitv2_s.k400, "
                      "mvitv2_s.k400_slowfast), --checkpoint PATH, or --random-weights for a smoke test\n")
    assert not (tmp_path / "out").exists()


def test_eval_scannet_with_weights_that_are_not_downloadable_says_why_in_one_line(capsys, tmp_path):
    root = Path(__file__).resolve().parents[1]
    code, stdout, _ = run(capsys, "eval", "scannet", "--config", str(root / "configs/point_transformer_scannet.yaml"),
                          "--weights", "scannet", "--data", str(tmp_path))
    assert code == 2
    assert stdout == ("error: point_transformer.scannet: not downloadable: Pointcept gives PTv1 training scripts but "
                      "releases no PTv1 weights (its released weights are PTv3's); train one and pass --checkpoint\n")


def test_weights_help_names_the_switches_the_one_line_errors_leave_out(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["weights", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for switch in ("SPATIOTEMPORAL_CACHE", "SPATIOTEMPORAL_OFFLINE=1", "HF_HUB_OFFLINE=1",
                   "SPATIOTEMPORAL_WEIGHTS_MIRROR", "HF_ENDPOINT", "TORCH_HOME"):
        assert switch in out
