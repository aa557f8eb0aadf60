"""Training that survives losses: with `train.max_failures`, Ray Train restarts the workers from the
latest checkpoint when a worker process is killed or its node is lost, and the run finishes by
itself, ending where an uninterrupted run ends. Each failure is one console line and one row of
failures.jsonl; a run that keeps failing stops with one line naming the reason."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from spatiotemporal.train.config import load_config
from spatiotemporal.train.failures import ATTEMPTS_FILE, max_failures, ranks_and_reasons, read_failures
from spatiotemporal.train.feed import read_feed
from spatiotemporal.train.loop import fit
from tests.console_output import foreign_lines
from tests.ray_processes import worker_processes
from tests.train_runs import EPOCHS, RANDOM_LAYERS, assert_trained_alike, kill_when, tiny_run_config

def test_the_default_restarts_a_joined_clusters_run_and_stops_a_local_one_at_once():
    assert max_failures(None, joined=True) == 3
    assert max_failures(None, joined=False) == 0
    assert max_failures(5, joined=False) == 5 and max_failures(-1, joined=True) == -1
    with pytest.raises(ValueError, match=r"train.max_failures=-2: give a count of restarts, or -1 for no limit"):
        max_failures(-2, joined=True)
    assert load_config(data={"model": {"name": "timesformer_tiny"}}, overrides=["train.max_failures=2"])["train"]["max_failures"] == 2


# Fed by Ray Data, the killed worker also ran its feed's executor; its decode tasks take no CPU of
# their own here (the two workers hold this cluster's two), decoding on the trainers' CPUs.
FEEDS = {"loader": (), "ray": ("data.feed=ray", "data.decode_resources={CPU: 0}")}


@pytest.mark.slow
@pytest.mark.parametrize("feed", FEEDS)
def test_a_killed_worker_process_is_restarted_and_the_run_ends_like_an_uninterrupted_one(
    feed, tiny_kinetics, train_ray_cluster, tmp_path
):
    import ray

    straight = fit(tiny_run_config(tiny_kinetics, tmp_path, "straight", EPOCHS, *RANDOM_LAYERS))
    killed: list[int] = []

    def kill_a_worker() -> None:
        workers = worker_processes("RayTrainWorker")
        if workers:
            workers[0].kill()  # SIGKILL: the process is gone, as after the OOM killer
            killed.append(workers[0].pid)

    watcher = kill_when(tmp_path / "restarted", 3, kill_a_worker)
    restarted = fit(
        tiny_run_config(tiny_kinetics, tmp_path, "restarted", EPOCHS, *RANDOM_LAYERS, "train.max_failures=1", *FEEDS[feed])
    )
    watcher.join(timeout=5)
    assert killed, "no training worker was found to kill"

    run = tmp_path / "restarted"
    [failure] = read_failures(run)
    assert failure["restarting"] and (failure["kind"], failure["limit"]) == ("workers", 1)
    assert f"RayTrainWorker pid {killed[0]} on " in failure["reason"]
    assert "died: its worker process has died" in failure["reason"]
    # The restart continued from a checkpoint of the run, not from its beginning, and the
    # checkpoints the dead attempt wrote past it (never registered by Ray Train) are gone.
    first, second = read_failures(run, ATTEMPTS_FILE)
    assert (first["step"], first["checkpoint"]) == (0, None)
    assert second["step"] > 0 and second["checkpoint"] is not None
    assert len([path for path in run.glob("checkpoint_*") if path.is_dir()]) == 2  # num_to_keep
    assert_trained_alike(tmp_path / "straight", run, straight, restarted)
    fed = read_feed(run)
    if feed == "ray":  # a row per epoch fed to its end (an epoch the restart went back into: two)
        assert sorted({row["epoch"] for row in fed}) == [0, 1, 2, 3] and fed[-1]["samples"] == 16
        assert {node for row in fed for node in row["nodes"]} == {ray.get_runtime_context().get_node_id()}
    else:
        assert fed == []


@pytest.mark.slow
def test_a_run_that_keeps_failing_stops_after_its_restarts_with_one_line_naming_the_reason(tiny_kinetics, tmp_path):
    """No checkpoint before the crash, so each restart starts over and crashes at the same step."""
    config = tmp_path / "crash.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "timesformer_tiny",
                  "kwargs": {"num_frames": 4, "image_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "data": {"root": str(tiny_kinetics), "num_frames": 4, "frame_stride": 2, "crop_size": 32, "short_side": 32,
                 "batch_size": 2, "hflip": False},
        "eval": {"views": "1x1"}, "output_dir": str(tmp_path / "runs"), "name": "crash",
        "train": {"crash_at_step": 1, "checkpoint_every": 0, "max_failures": 1},
    }))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "train", str(config)], capture_output=True, text=True, timeout=300
    )
    run_dir = tmp_path / "runs" / "crash"
    # Both ranks crash at the same step, but Ray Train decides on the first poll that sees an
    # error: that poll may have either rank's exception, or both.
    rows = read_failures(run_dir)
    assert [row["restarting"] for row in rows] == [True, False]
    crash = "SimulatedCrash: crash_at_step=1 reached"
    reasons = [row["reason"] for row in rows]
    assert set(reasons) <= {f"rank 0: {crash}", f"rank 1: {crash}", f"ranks 0,1: {crash}"}
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == (
        f"error: training crash stopped after 1 restart: {reasons[1]} (tracebacks: {run_dir / 'failures.log'})"
    )
    reason = re.escape(crash).join([r"ranks? [0-9,]+: ", ""])
    assert foreign_lines(
        done.stderr,
        bars=["train crash"],
        lines=[
            rf"training workers failed \(1, train.max_failures=1\): {reason}; restarting from the latest checkpoint, if any",
            rf"training workers failed \(2, train.max_failures=1\): {reason}; no restarts left",
        ],
    ) == []
    assert done.stderr.count("training workers failed") == 2
    assert [row["step"] for row in read_failures(run_dir, ATTEMPTS_FILE)] == [0, 0]  # no checkpoint to go back to
    # The workers' tracebacks are kept for the person who reads on: one per rank each row names.
    tracebacks = (run_dir / "failures.log").read_text()
    ranks_named = sum(len(reason.split(":")[0].split()[1].split(",")) for reason in reasons)
    assert tracebacks.count("worker traceback:") == ranks_named and 'loop.py", line' in tracebacks


def test_a_reason_is_the_exception_a_worker_waited_on_without_colours_or_native_source_paths():
    from ray.exceptions import RayTaskError

    trace = 'Traceback (most recent call last):\n  File "/work/x.py", line 3, in f\n    raise ValueError("bad shard 7")\nValueError: bad shard 7'
    task_error = RayTaskError("f", trace, ValueError("bad shard 7"), proctitle="ray::f", pid=42, ip="10.0.0.7")
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:30117: "
        "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
    )
    assert ranks_and_reasons({0: task_error.as_instanceof_cause(), 1: gloo}) == (
        "rank 0: ValueError: bad shard 7; rank 1: RuntimeError: Read error [127.0.0.1]:30117: Connection reset by peer"
    )


# How Ray Train's health check describes the worker it could not reach (its `Worker` repr).
WORKER_INFO = """Worker info: Worker(
  actor=Actor(RayTrainWorker, b3263734567c24c3ad4607a701000000),
  metadata=ActorMetadata(
    hostname='vm',
    node_id='67b62c944a655a203afa5e1f81bc35ab28bce8fb180900974d4477a4',
    node_ip='192.0.2.2',
    pid=13039,
  ),
)"""


@pytest.mark.parametrize(
    ("rpc_error", "detail"),
    [
        ("recvmsg:Connection reset by peer rpc_code: 14", "Connection reset by peer"),
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:192.0.2.2:46745: Failed to connect to "
         "remote host: Connection refused rpc_code: 14", "Connection refused"),
    ],
)  # fmt: skip
def test_a_worker_on_a_lost_node_is_named_by_its_pid_and_node_not_by_actor_id_and_rpc_codes(rpc_error, detail):
    from ray.exceptions import ActorUnavailableError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    unavailable = ActorUnavailableError(
        f"The actor is temporarily unavailable: RpcError: RPC error: {rpc_error}", bytes.fromhex("b3263734567c24c3ad4607a701000000")
    )
    error = WorkerHealthCheckFailedError(f"A worker health check failed.\n{WORKER_INFO}", unavailable)
    assert ranks_and_reasons({0: error}) == (
        f"rank 0: RayTrainWorker pid 13039 on 192.0.2.2 unreachable (its process or node is gone: {detail})"
    )


def test_each_decision_of_ray_trains_controller_is_one_row_counted_as_ray_counts_it(tmp_path):
    """Ray Train's own controller states and errors, in the order a run would see them."""
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2._internal.execution.controller.state import (
        ErroredState, ReschedulingState, RestartingState, RunningState, ShuttingDownState,
    )  # fmt: skip

    from spatiotemporal.train.failures import RecordFailures, failure_line

    record = RecordFailures(str(tmp_path), max_failures=2)
    crashed = WorkerGroupError("rank 0 crashed", {0: ValueError("invalid config:\n\tlr: \n\tbatch_size: 4")})
    timed_out = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    broken = ControllerError(RuntimeError("worker group shutdown failed"))
    record.after_controller_state_update(RunningState(), RunningState())  # a poll: nothing to record
    record.after_controller_state_update(RunningState(), RestartingState(training_failed_error=crashed))
    record.after_controller_state_update(RunningState(), ReschedulingState(training_failed_error=timed_out))
    stopping = ShuttingDownState(next_state=ErroredState(training_failed_error=broken))
    record.after_controller_state_update(RunningState(), stopping)
    record.after_controller_state_update(stopping, stopping.next_state)  # the same error, stopped
    assert [failure_line(row) for row in read_failures(tmp_path)] == [
        "training workers failed (1, train.max_failures=2): rank 0: ValueError: invalid config; "
        "restarting from the latest checkpoint, if any",
        "training workers could not start (1, train.max_failures=2): WorkerGroupStartupTimeoutError: The worker group "
        "startup timed out after 60.0 seconds waiting for 2 workers (the cluster has no room for ray.num_workers x "
        "ray.resources_per_worker); trying again",
        "Ray Train's controller failed: RuntimeError: worker group shutdown failed; no restarts for it",
    ]


def test_a_worker_that_failed_to_start_says_why():
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupFailedError

    from spatiotemporal.train.failures import failure_reason

    try:
        try:
            raise ImportError("No module named 'spatiotemporal'")
        except ImportError as cause:
            raise WorkerGroupStartupFailedError("One of the worker actors failed to initialize due to error:") from cause
    except WorkerGroupStartupFailedError as error:
        failed = ControllerError(error)
    assert failure_reason(failed) == (
        "WorkerGroupStartupFailedError: One of the worker actors failed to initialize due to error "
        "(ImportError: No module named 'spatiotemporal')"
    )
