"""`--device cuda` is a promise: where no CUDA device is available the job refuses in one line,
before Ray starts, instead of running on the CPU; `auto` still picks what there is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from pipelines import point_inference, video_inference  # noqa: E402
from pipelines.job import check_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv/bin/spatiotemporal")
MODELS = {"video-inference": "vivit_tiny", "point-inference": "point_transformer_tiny"}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    for name in ("a.mp4", "room.ply"):
        (tmp_path / "in" / name).write_bytes(b"x")
    return tmp_path / "in"


@no_cuda
@pytest.mark.parametrize("command", sorted(MODELS))
def test_the_cli_refuses_cuda_without_a_cuda_device_in_one_line(inputs, tmp_path, command):
    run = subprocess.run([CLI, "pipeline", command, "--input", str(inputs), "--output", str(tmp_path / "out"),
                          "--model", MODELS[command], "--device", "cuda", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["error: --device cuda: no CUDA device is available"]
    assert not (tmp_path / "out").exists()


@no_cuda
def test_a_config_asking_for_cuda_is_refused_the_same_way(inputs, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: video_inference\nmodel: vivit_tiny\ndevice: cuda\n")
    run = subprocess.run([CLI, "pipeline", "run", str(config), f"input={inputs}", f"output={tmp_path / 'out'}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["error: --device cuda: no CUDA device is available"]


def test_a_running_ray_without_gpus_refuses_cuda(ray_cluster, inputs, tmp_path):
    """Inside a notebook or test that started Ray, the cluster's GPUs are what counts."""
    refusal = r"^--device cuda: no CUDA device is available \(the Ray cluster has no GPU\)$"
    for job, model in ((video_inference, "vivit_tiny"), (point_inference, "point_transformer_tiny")):
        with pytest.raises(ValueError, match=refusal):
            job.run(inputs, tmp_path / "out", model=model, device="cuda", progress=False)
    assert not (tmp_path / "out").exists()


def test_joining_a_cluster_without_gpus_refuses_cuda_before_any_input_is_recorded(inputs, tmp_path):
    """The driver's own devices say nothing about a cluster it joins: the cluster is asked once joined.
    A refused run changes nothing in OUTDIR, not even the earlier rows `--no-resume` would redo."""
    from ray.cluster_utils import Cluster

    from pipelines.job import OutputStore, read_table

    earlier = {"id": ["a.mp4"], "path": [str(inputs / "a.mp4")], "error": ["an earlier run's reason"]}
    OutputStore(tmp_path / "out").write("failures", earlier)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "object_store_memory": 128 << 20,
                                                            "include_dashboard": False})
    # Ray records the newest cluster in /tmp/ray/ray_current_cluster, and a bare ray.init()
    # anywhere else on a shared machine would then try to attach to this test cluster.
    address = cluster.address
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and current.read_text().strip() == address:
        current.unlink()
    try:
        run = subprocess.run([CLI, "pipeline", "video-inference", "--input", str(inputs), "--output",
                              str(tmp_path / "out"), "--model", "vivit_tiny", "--random-weights", "--device", "cuda",
                              "--quiet", "--no-resume", "--address", address], capture_output=True, text=True, timeout=180)
    finally:
        cluster.shutdown()
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1] == (
        f"error: --device cuda: no CUDA device is available (the Ray cluster at {address} has no GPU)"
    )
    assert not (tmp_path / "out" / "results").exists()
    assert read_table(tmp_path / "out", "failures").to_dict("list") == earlier


def test_a_device_other_than_auto_cpu_or_cuda_is_refused():
    with pytest.raises(ValueError, match=r"^device must be one of auto, cpu, cuda; got 'gpu'$"):
        check_device("gpu", None)


def test_auto_and_cpu_are_never_refused():
    check_device("auto", None)
    check_device("cpu", None)


def test_a_plan_for_cuda_never_falls_back_to_cpu_workers():
    """The last line of defence, should a cluster lose its GPUs between the check and the plan."""
    with pytest.raises(ValueError, match=r"^--device cuda: no CUDA device is available"):
        video_inference.resource_plan(1, {"CPU": 8.0}, device="cuda")
    assert video_inference.resource_plan(1, {"CPU": 8.0, "GPU": 1.0}, device="cuda").device == "cuda"
    assert video_inference.resource_plan(1, {"CPU": 8.0}, device="auto").device == "cpu"
