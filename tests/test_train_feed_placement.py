"""data.decode_resources places the Ray Data feed's decode tasks: on a cluster where one node
advertises a custom resource (a CPU-only decoding node), a run that asks for it decodes there and
nowhere else, while its workers train on the other node. Where each sample was decoded is the node
id the decode task read from Ray's runtime context, as the run's feed.jsonl records it.

The test joins a cluster of its own (two raylets on this machine), so this module holds no test
on the local Ray of `train_ray_cluster`.
"""

from __future__ import annotations

import pytest

from spatiotemporal.train.feed import read_feed
from spatiotemporal.train.loop import fit
from tests.ray_processes import forget_as_current
from tests.train_runs import tiny_run_config


@pytest.fixture()
def cluster_with_a_decoding_node():
    """A node for the two training workers (each asks for its `trainer` resource, as GPU workers
    ask for a GPU) and a CPU-only node that advertises `decode`."""
    import ray
    from ray.cluster_utils import Cluster

    memory = {"object_store_memory": 256 << 20}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"trainer": 2}, "include_dashboard": False, **memory},
    )
    decoder = cluster.add_node(num_cpus=1, resources={"decode": 1}, **memory)
    cluster.wait_for_nodes()
    forget_as_current(cluster)
    yield cluster, decoder
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_a_run_decodes_on_the_node_that_offers_the_decode_resource_and_trains_on_the_other(
    tiny_kinetics, cluster_with_a_decoding_node, tmp_path
):
    cluster, decoder = cluster_with_a_decoding_node
    config = tiny_run_config(
        tiny_kinetics, tmp_path, "placed", "schedule.epochs=1", "data.feed=ray",
        "data.decode_resources={CPU: 1, decode: 1}", "ray.resources_per_worker={CPU: 1, trainer: 1}",
    )  # fmt: skip
    final = fit(config, address=cluster.address)
    assert final["step"] == 2 and final["num_evaluated"] == 4
    assert read_feed(tmp_path / "placed") == [{"epoch": 0, "samples": 16, "nodes": {decoder.node_id: 16}}]
