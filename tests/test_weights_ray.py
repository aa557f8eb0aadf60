"""Published weights on Ray: the driver resolves an entry once (`share_weights`) and its workers
get a local file (`local_weights`) without a second download: the driver's own file where the
node sees it, else the driver's bytes through Ray's object store, written once into the node's
cache; a node with neither, and no network, fails with the offline line rather than hanging.

A node that cannot see the driver's file is a worker whose cache root is elsewhere and whose
network is off (SPATIOTEMPORAL_OFFLINE), in a real local Ray."""

from __future__ import annotations

import os
import time

import pytest

from spatiotemporal.weights import WeightsError, get_entry, local_weights, manual_path, share_weights
from tests.weights_server import WeightsServer, mirror_path

SWIN = "swin3d_t.k400_official"
FILE = "swin_tiny_patch244_window877_kinetics400_1k.pth"


@pytest.fixture
def driver_cache(tmp_path, monkeypatch):
    """The driver's cache, holding the entry's file as a download from a loopback server left it."""
    server = WeightsServer()
    body = os.urandom(1_500_000)
    server.files[mirror_path(SWIN)] = body
    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path / "driver"))
    monkeypatch.setenv("SPATIOTEMPORAL_WEIGHTS_MIRROR", server.url)
    monkeypatch.delenv("SPATIOTEMPORAL_OFFLINE", raising=False)
    yield body, server
    server.stop()


def on_node(env: dict, fn, *args):
    """`fn(*args)` in a Ray worker with `env` set, as a process on another node would run it."""
    import ray

    return ray.get(ray.remote(fn).options(runtime_env={"env_vars": env}).remote(*args), timeout=300)


def _send_this_module_by_value():
    """Ray workers cannot import a test module by name: its functions travel by value instead."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_send_this_module_by_value()


def node_file(shared):
    return str(local_weights(shared)[1])


def node_fetch(shared):
    from spatiotemporal.weights.share import fetch_from_driver

    return str(fetch_from_driver(shared))


def node_error(shared):
    start = time.monotonic()
    try:
        local_weights(shared)
    except WeightsError as err:
        return str(err), time.monotonic() - start
    return "no error", time.monotonic() - start


def test_the_driver_shares_strings_a_worker_on_its_node_uses_its_file(ray_cluster, driver_cache, tmp_path):
    body, server = driver_cache
    shared = share_weights(SWIN)
    driver_file = manual_path(get_entry(SWIN))
    assert shared["entry"] == SWIN and shared["files"][0]["path"] == str(driver_file)
    assert shared["files"][0]["size"] == len(body)
    assert on_node({"SPATIOTEMPORAL_CACHE": str(tmp_path / "node"), "SPATIOTEMPORAL_OFFLINE": "1"},
                   node_file, shared) == str(driver_file)
    assert not (tmp_path / "node").exists()  # nothing copied
    assert [m for m, _, _ in server.requests] == ["GET"]  # the driver's one download


def test_a_node_without_the_file_gets_the_drivers_bytes_once_through_the_object_store(ray_cluster, driver_cache,
                                                                                      tmp_path):
    import ray

    body, server = driver_cache
    shared = share_weights(SWIN)
    env = {"SPATIOTEMPORAL_CACHE": str(tmp_path / "node"), "SPATIOTEMPORAL_OFFLINE": "1"}
    fetch = ray.remote(node_fetch).options(runtime_env={"env_vars": env})
    paths = ray.get([fetch.remote(shared), fetch.remote(shared)], timeout=300)  # two workers of one node
    node_copy = tmp_path / "node" / "weights" / SWIN / FILE
    assert paths == [str(node_copy)] * 2
    assert node_copy.read_bytes() == body
    assert (tmp_path / "node" / "weights" / SWIN / (FILE + ".sha256")).read_text().split()[0] == shared["files"][0]["sha256"]
    assert [m for m, _, _ in server.requests] == ["GET"]  # the publisher was asked once, by the driver
    # The next worker on that node finds the node's copy.
    assert on_node(env, node_file, {**shared, "files": [{**shared["files"][0], "path": str(tmp_path / "gone.pth")}]}) \
        == str(node_copy)


def test_a_node_that_cannot_reach_the_driver_and_is_offline_fails_with_the_offline_line(ray_cluster, driver_cache,
                                                                                      tmp_path):
    shared = share_weights(SWIN)
    gone = {"entry": SWIN, "node": "0" * 56,  # a driver node that has left the cluster
            "files": [{**shared["files"][0], "path": str(tmp_path / "elsewhere" / FILE)}]}
    folder = tmp_path / "node" / "weights" / SWIN
    message, seconds = on_node({"SPATIOTEMPORAL_CACHE": str(tmp_path / "node"), "SPATIOTEMPORAL_OFFLINE": "1"},
                               node_error, gone)
    assert message == (f"{SWIN}: offline; "
                       f"put {get_entry(SWIN).url} at {folder / FILE}")  # the node's own mirror: none
    assert seconds < 30


def node_fetch_measuring_peak_memory(shared, chunk_bytes):
    """fetch_from_driver in chunks of `chunk_bytes`; returns (path, the most memory this worker's
    heap held at once during it). The heap, not RSS: the object store's shared pages, mapped into
    every worker that reads from it, are counted in RSS but are not this worker's."""
    import tracemalloc

    from spatiotemporal.weights import share

    share.SHARE_CHUNK_BYTES = chunk_bytes
    tracemalloc.start()
    try:
        path = share.fetch_from_driver(shared)
        return str(path), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_file_moves_between_nodes_a_chunk_at_a_time(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIOTEMPORAL_CACHE", str(tmp_path / "driver"))
    monkeypatch.setenv("SPATIOTEMPORAL_OFFLINE", "1")
    driver_file = manual_path(get_entry(SWIN))
    driver_file.parent.mkdir(parents=True)
    body = os.urandom(40 << 20)
    driver_file.write_bytes(body)
    shared = share_weights(SWIN)
    env = {"SPATIOTEMPORAL_CACHE": str(tmp_path / "node"), "SPATIOTEMPORAL_OFFLINE": "1"}
    path, peak = on_node(env, node_fetch_measuring_peak_memory, shared, 8 << 20)
    assert path == str(tmp_path / "node" / "weights" / SWIN / FILE)
    assert (tmp_path / "node" / "weights" / SWIN / FILE).read_bytes() == body
    assert peak < 20 << 20, f"the worker held {peak / 2**20:.0f} MiB at once for a 40 MiB file in 8 MiB chunks"
