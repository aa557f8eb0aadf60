"""Training on a cluster that loses a node: Ray Train restarts the workers on a node that has room
and the run finishes by itself (a joined cluster restarts by default); with no node to take the
lost one's place, the run stops with the reason instead of waiting for room forever.

Each test joins a cluster of its own (several raylets on this machine), so this module has no
test that uses the local Ray of `train_ray_cluster`, which `fit` would run on instead.
"""

from __future__ import annotations

import pytest

from spatiotemporal.train.failures import ATTEMPTS_FILE, TrainingStopped, read_failures
from spatiotemporal.train.feed import read_feed
from spatiotemporal.train.logs import read_metrics
from spatiotemporal.train.loop import fit
from tests.ray_processes import forget_as_current, worker_processes
from tests.train_runs import EPOCHS, kill_when, tiny_run_config


def cluster_of(nodes_for_the_worker: int):
    """A head node with no room for the training worker (1 CPU, it needs 2), which advertises
    `decode` (a CPU-only node that decodes for a run fed by Ray Data), and nodes that have room."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"decode": 1}, "object_store_memory": 256 << 20,
                        "include_dashboard": False},
    )  # fmt: skip
    for _ in range(nodes_for_the_worker):
        cluster.add_node(num_cpus=2, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    forget_as_current(cluster)
    return cluster


@pytest.fixture()
def spare_node_cluster():
    """A node for the training worker, and a spare that takes over when the other is lost."""
    import ray

    cluster = cluster_of(2)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture()
def single_node_cluster(monkeypatch):
    """One node for the training worker, whose restarts wait 5 s for room (Ray Train's timeout,
    read by the controller from the environment the cluster's processes inherit)."""
    import ray

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    cluster = cluster_of(1)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def lose_the_workers_node(cluster) -> str:
    """Removes, at once, the node of `cluster` whose raylet started the (one) training worker;
    returns its id. Workers of earlier tests' clusters that are still exiting are not its."""
    from ray._private import ray_constants

    workers = worker_processes("RayTrainWorker")
    for node in cluster.worker_nodes:
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        if any(raylet in {parent.pid for parent in worker.parents()} for worker in workers if worker.is_running()):
            cluster.remove_node(node, allow_graceful=False)
            return node.node_id
    raise LookupError(f"none of the cluster's worker nodes runs a training worker ({len(workers)} found)")


ONE_WORKER = ("ray.num_workers=1", "ray.resources_per_worker={CPU: 2}", "data.batch_size=4", "train.accum_steps=1")


FEEDS = {"loader": (), "ray": ("data.feed=ray", "data.decode_resources={CPU: 1, decode: 1}")}


@pytest.mark.slow
@pytest.mark.parametrize("feed", FEEDS)
def test_a_run_whose_node_is_lost_restarts_on_another_node_and_finishes(feed, tiny_kinetics, spare_node_cluster, tmp_path):
    """A joined cluster restarts by default (no train.max_failures given). Fed by Ray Data, the
    head decodes, before the loss and after it."""
    cluster = spare_node_cluster
    lost: list[str] = []
    watcher = kill_when(tmp_path / "moved", 3, lambda: lost.append(lose_the_workers_node(cluster)))
    final = fit(tiny_run_config(tiny_kinetics, tmp_path, "moved", EPOCHS, *ONE_WORKER, *FEEDS[feed]), address=cluster.address)
    watcher.join(timeout=60)
    assert lost, "the worker's node was never removed"

    [failure] = read_failures(tmp_path / "moved")
    assert failure["restarting"] and (failure["kind"], failure["limit"]) == ("workers", 3)
    assert read_failures(tmp_path / "moved", ATTEMPTS_FILE)[1]["step"] > 0  # from a checkpoint of the run
    # Ray reports the worker dead, or unreachable where the node went before the health check.
    assert failure["reason"].startswith("rank 0: RayTrainWorker pid ")
    assert " died: " in failure["reason"] or " unreachable (its process or node is gone: " in failure["reason"]
    rows = read_metrics(tmp_path / "moved" / "metrics.jsonl")
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == list(range(1, 17))  # 16 videos / batch 4 = 4 steps per epoch, each once
    assert final["step"] == 16 and final["num_evaluated"] == 4
    fed = read_feed(tmp_path / "moved")
    if feed == "ray":  # a row per epoch fed to its end (an epoch the restart went back into: two)
        assert sorted({row["epoch"] for row in fed}) == [0, 1, 2, 3] and fed[-1]["samples"] == 16
        assert {node for row in fed for node in row["nodes"]} == {cluster.head_node.node_id}
    else:
        assert fed == []


@pytest.mark.slow
def test_a_run_whose_lost_node_nothing_replaces_stops_with_the_reason_instead_of_waiting(
    tiny_kinetics, single_node_cluster, tmp_path
):
    cluster = single_node_cluster
    watcher = kill_when(tmp_path / "stranded", 3, lambda: lose_the_workers_node(cluster))
    config = tiny_run_config(tiny_kinetics, tmp_path, "stranded", EPOCHS, *ONE_WORKER, "train.max_failures=1")
    with pytest.raises(TrainingStopped) as stopped:
        fit(config, address=cluster.address)
    watcher.join(timeout=60)
    # Lost (a restart), then no room: a try to start again, and a second one, which stops the run.
    rows = read_failures(tmp_path / "stranded")
    assert [(row["kind"], row["count"], row["restarting"]) for row in rows] == [
        ("workers", 1, True), ("start", 1, True), ("start", 2, False)
    ]
    assert str(stopped.value) == (
        "training stranded stopped after 2 restarts: WorkerGroupStartupTimeoutError: The worker group startup "
        "timed out after 5.0 seconds waiting for 1 workers (the cluster has no room for ray.num_workers x "
        f"ray.resources_per_worker) (tracebacks: {tmp_path / 'stranded' / 'failures.log'})"
    )
