"""Jobs on a 2-node Ray cluster (two raylets on this machine): work spreads over both nodes, a
killed worker process or a lost node still leaves every input done exactly once."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from pipelines import video_inference  # noqa: E402
from pipelines.job import read_table  # noqa: E402
from tests.ray_processes import forget_as_current, wait_until, worker_processes  # noqa: E402

MODEL = "vivit_tiny"
ROOT = Path(__file__).resolve().parents[1]


def make_video(path: Path, pattern: str = "testsrc") -> None:
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=64x48:rate=10",
         "-t", "1.6", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory, video_dir: Path) -> Path:
    """A manifest of 24 inputs: 23 ids over three generated clips, plus the corrupted sample."""
    root = tmp_path_factory.mktemp("clips")
    patterns = ("testsrc", "smptebars", "rgbtestsrc")
    for pattern in patterns:
        make_video(root / f"{pattern}.mp4", pattern)
    lines = ["id,path"] + [f"clip{i:03d},{patterns[i % 3]}.mp4" for i in range(23)]
    lines.append(f"broken,{video_dir / 'corrupted.mp4'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 256 << 20, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    forget_as_current(cluster)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def assert_exactly_once(out: Path, expected: int) -> tuple:
    results, failures = read_table(out, "results"), read_table(out, "failures")
    ids = list(results["id"]) + list(failures["id"])
    assert len(ids) == expected and len(set(ids)) == expected
    assert list(failures["id"]) == ["broken"]
    return results, failures


def run_job(videos: Path, out: Path, **kw):
    # Small shards, so the first written shard tells the tests the job is under way.
    return video_inference.run(videos, out, model=MODEL, random_weights=True, views="1x1", batch_size=2, shard_rows=4,
                               progress=False, **kw)


def wait_for_first_shard(out: Path, timeout_s: float = 300) -> bool:
    return wait_until(lambda: bool(list((out / "results").glob("*.parquet"))), timeout_s)


@pytest.mark.slow
def test_a_job_on_an_existing_cluster_runs_tasks_on_both_nodes(cluster, videos, tmp_path):
    """`--address` joins the cluster rather than starting one; decoding spreads over its nodes."""
    code = subprocess.run(
        [str(ROOT / ".venv/bin/spatiotemporal"), "pipeline", "video-inference", "--input", str(videos),
         "--output", str(tmp_path), "--model", MODEL, "--random-weights", "--views", "1x1", "--workers", "2", "--batch-size", "2",
         "--address", cluster[0].address, "--quiet"],
        capture_output=True, text=True, timeout=400,
    )
    assert code.returncode == 1, code.stderr[-2000:]  # one input is broken
    assert "23 ok, 1 failed, 0 skipped of 24 inputs" in code.stderr
    results, _ = assert_exactly_once(tmp_path, 24)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    assert set(results["decode_node"]) == nodes  # decode tasks ran on both nodes
    assert set(results["infer_node"]) == nodes  # and so did the two inference actors


@pytest.mark.slow
def test_killing_an_inference_worker_mid_job_loses_and_repeats_nothing(cluster, videos, tmp_path):
    killed: list[int] = []

    def kill_first_actor() -> None:
        if wait_for_first_shard(tmp_path):
            actors = worker_processes("MapWorker(MapBatches(Predictor))")
            if actors:
                actors[0].kill()
                killed.append(actors[0].pid)

    killer = threading.Thread(target=kill_first_actor, daemon=True)
    killer.start()
    summary = run_job(videos, tmp_path, workers=1)
    killer.join(timeout=5)
    assert killed, "no inference worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    results, _ = assert_exactly_once(tmp_path, 24)
    assert (summary.ok, summary.failed) == (23, 1)
    # The killed process did part of the work and a new one took over the rest.
    assert killed[0] in set(results["infer_pid"]) and set(results["infer_pid"]) - {killed[0]}


@pytest.mark.slow
def test_losing_a_node_mid_job_still_completes_every_input(cluster, videos, tmp_path):
    head_cluster, worker = cluster
    removed: list[bool] = []

    def remove_worker_node() -> None:
        if wait_for_first_shard(tmp_path):
            head_cluster.remove_node(worker, allow_graceful=False)
            removed.append(True)

    remover = threading.Thread(target=remove_worker_node, daemon=True)
    remover.start()
    summary = run_job(videos, tmp_path, workers=2)
    remover.join(timeout=30)
    assert removed, "the worker node was never removed"
    assert_exactly_once(tmp_path, 24)
    assert (summary.ok, summary.failed) == (23, 1)
    # The job can finish before the GCS's health checks have declared the killed node dead.
    assert wait_until(lambda: sum(1 for n in ray.nodes() if n["Alive"]) == 1, timeout_s=60, interval_s=0.5)
