"""Training fed by Ray Data (`data.feed: ray`): decode tasks, placed by data.decode_resources on
any node, turn each rank's keys into the very batches the DataLoader makes, in the same order; so
a run fed by Ray Data, stopped mid-epoch and resumed, ends where a DataLoader run ends.

The tests here run on a local Ray of their own with room for decode tasks beside two training
workers (4 logical CPUs); test_train_feed_placement.py places decoding on a cluster of two nodes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from spatiotemporal.train import checkpoint as ckpt
from spatiotemporal.train.failures import ATTEMPTS_FILE, read_failures
from spatiotemporal.train.config import ConfigError, load_config
from spatiotemporal.train.feed import DecodePlacementError, RayFeed, decode_placement, read_feed
from spatiotemporal.train.loop import check_cluster_fits, fit
from spatiotemporal.train.sampler import ResumableDistributedSampler, SeededSamples
from spatiotemporal.train.skipped import SkippedVideos, read_skipped, record_skipped
from spatiotemporal.train.tasks import make_task
from tests.train_runs import RANDOM_LAYERS, assert_trained_alike, tiny_run_config

WORKERS = 2


@pytest.fixture(scope="module")
def feed_ray_cluster():
    import ray

    from spatiotemporal.train.ray_env import train_runtime_env

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env=train_runtime_env(local_without_dashboard=True))  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_scannet(tmp_path_factory) -> Path:
    """Four synthetic rooms in Pointcept's layout, sparse (10 cm) so a crop is quick."""
    from spatiotemporal.data.scannet import preprocess_raw_scene
    from spatiotemporal.data.synthetic_scannet import SceneSpec, write_dataset
    from spatiotemporal.io.points import write_preprocessed

    raw, root = tmp_path_factory.mktemp("raw_rooms"), tmp_path_factory.mktemp("pointcept_rooms")
    for scene in write_dataset(raw, 4, spec=SceneSpec(spacing=0.1), val_fraction=0)["train"]:
        write_preprocessed(root / "train" / scene, preprocess_raw_scene(raw / scene))
    return root


def video_config(root: Path, out: Path) -> dict:
    return tiny_run_config(root, out, "feed", "data.feed=ray")


def points_config(root: Path, out: Path) -> dict:
    config = load_config(
        data={"model": {"name": "point_transformer_tiny"}, "task": "points"},
        overrides=[f"data.root={root}", f"output_dir={out}", "data.batch_size=1", "data.max_points=3000",
                   "data.grid_size=0.1", "data.feed=ray"],
    )  # fmt: skip
    return config


def loader_batches(config: dict, sampler) -> list:
    task = make_task(config)
    samples = SeededSamples(task.train_set(), config["seed"])
    batch_size = config["data"]["batch_size"]
    return list(torch.utils.data.DataLoader(samples, batch_size=batch_size, sampler=sampler, collate_fn=task.collate))


def assert_same_batch(fed: dict, loaded: dict) -> None:
    assert fed.keys() == loaded.keys()
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor):
            assert fed[key].dtype == value.dtype and torch.equal(fed[key], value), key
        else:
            assert fed[key] == value, key


@pytest.mark.slow
@pytest.mark.parametrize("task", ["video", "points"])
def test_each_rank_gets_the_batches_the_dataloader_gives_it_in_its_order(
    task, tiny_kinetics, tiny_scannet, feed_ray_cluster, tmp_path
):
    config = video_config(tiny_kinetics, tmp_path) if task == "video" else points_config(tiny_scannet, tmp_path)
    size = len(make_task(config).train_set())
    for rank in range(WORKERS):
        # Epoch 1 from its second batch: where a run resumed mid-epoch continues.
        sampler = ResumableDistributedSampler(size, rank, WORKERS, config["data"]["batch_size"], config["seed"])
        sampler.set_position(1, 1)
        loaded = loader_batches(config, sampler)
        fed = list(RayFeed(config, list(sampler), size, config["data"]["batch_size"], make_task(config).collate))
        assert len(fed) == len(loaded) == sampler.batches_per_epoch() - 1
        for fed_batch, loaded_batch in zip(fed, loaded):
            assert_same_batch(fed_batch, loaded_batch)


@pytest.mark.slow
def test_an_epoch_gives_every_usable_video_to_one_rank_once(tiny_kinetics, feed_ray_cluster, tmp_path):
    config = video_config(tiny_kinetics, tmp_path)
    task = make_task(config)
    videos = [record.key for record in task.train_set().dataset.records]
    taken: list[str] = []
    for rank in range(WORKERS):
        sampler = ResumableDistributedSampler(len(videos), rank, WORKERS, 2, config["seed"])
        sampler.set_position(2)
        taken += [key for batch in RayFeed(config, list(sampler), len(videos), 2, task.collate) for key in batch["key"]]
    assert sorted(taken) == sorted(videos)  # 16 videos fill 4 rounds of 2 ranks x 2: none left out


@pytest.mark.slow
def test_an_epoch_gives_every_point_scene_to_one_rank_once(tiny_scannet, feed_ray_cluster, tmp_path):
    """Clouds carry no name: each fed crop is matched to the scene whose crop of that epoch it is."""
    config = points_config(tiny_scannet, tmp_path)
    task = make_task(config)
    scenes = SeededSamples(task.train_set(), config["seed"])
    expected = [scenes[(2, index)]["coord"] for index in range(len(scenes))]
    taken: list[int] = []
    for rank in range(WORKERS):
        sampler = ResumableDistributedSampler(len(scenes), rank, WORKERS, 1, config["seed"])
        sampler.set_position(2)
        for batch in RayFeed(config, list(sampler), len(scenes), 1, task.collate):
            taken += [index for index, coord in enumerate(expected) if torch.equal(batch["coord"], coord.float())]
    assert sorted(taken) == list(range(len(scenes)))  # 4 rooms fill 2 rounds of 2 ranks x 1


@pytest.mark.slow
def test_a_run_fed_by_ray_data_stopped_mid_epoch_and_resumed_ends_like_a_dataloader_run(
    tiny_kinetics, feed_ray_cluster, tmp_path
):
    import ray

    loaded = fit(tiny_run_config(tiny_kinetics, tmp_path, "loaded", *RANDOM_LAYERS))
    assert read_feed(tmp_path / "loaded") == []  # the DataLoader's run: no Ray Data feed
    with pytest.raises(Exception, match="crash_at_step=3"):
        fit(tiny_run_config(tiny_kinetics, tmp_path, "fed", *RANDOM_LAYERS, "data.feed=ray", "train.crash_at_step=3"))
    assert ckpt.step_of(ckpt.latest_checkpoint(tmp_path / "fed")) == 3  # mid-epoch 1
    fed = fit(tiny_run_config(tiny_kinetics, tmp_path, "fed", *RANDOM_LAYERS, "data.feed=ray"), resume=True)
    [attempt] = read_failures(tmp_path / "fed", ATTEMPTS_FILE)
    assert attempt["step"] == 3  # continued from the checkpoint, not from the start
    assert_trained_alike(tmp_path / "loaded", tmp_path / "fed", loaded, fed)
    # Epoch 0 whole (before the stop), then the rest of epoch 1: 2 micro-batches x 2 ranks x 2.
    rows = read_feed(tmp_path / "fed")
    assert [(row["epoch"], row["samples"]) for row in rows] == [(0, 16), (1, 8)]
    assert {node for row in rows for node in row["nodes"]} == {ray.get_runtime_context().get_node_id()}


@pytest.mark.slow
def test_a_training_set_with_a_broken_video_finishes_and_lists_it_once(tiny_kinetics, feed_ray_cluster, tmp_path):
    root = tmp_path / "kinetics"
    shutil.copytree(tiny_kinetics, root)
    broken = sorted((root / "train").rglob("*.mp4"))[0]
    broken.write_bytes(b"not a video")
    final = fit(tiny_run_config(root, tmp_path, "broken", "data.feed=ray"))
    assert final["step"] == 4  # 2 epochs of 2 steps: every batch full, the broken video replaced
    [line] = read_skipped(tmp_path / "broken")  # met in both epochs, listed once
    assert line.startswith(f"{broken}: not a readable media container")


@pytest.mark.slow
def test_the_feed_decodes_only_the_micro_batches_whole_steps_take(tiny_kinetics, feed_ray_cluster, tmp_path):
    """4 micro-batches a rank, 3 to a step: one step, and the fourth is neither decoded nor counted."""
    fit(tiny_run_config(tiny_kinetics, tmp_path, "tail", "data.feed=ray", "train.accum_steps=3", "schedule.epochs=1"))
    [row] = read_feed(tmp_path / "tail")
    assert (row["epoch"], row["samples"]) == (0, 12)  # 2 ranks x 3 micro-batches x 2


def test_the_list_of_skipped_videos_holds_each_once_across_ranks_and_restarts(tmp_path):
    ranks = [SkippedVideos(), SkippedVideos()]
    batch = {"error": ["", "a.mp4: bad\nb.mp4: worse", ""]}  # one sample met two broken videos in a row
    assert ranks[0].add(batch) == ["a.mp4: bad", "b.mp4: worse"]
    assert ranks[0].add(batch) == []  # the worker warns of each once
    ranks[1].add({"error": ["a.mp4: bad"]})
    record_skipped(tmp_path, ranks[0].take() + ranks[1].take())
    assert ranks[0].take() == []
    record_skipped(tmp_path, ["b.mp4: worse"])  # a restarted run meets it again
    assert read_skipped(tmp_path) == ["a.mp4: bad", "b.mp4: worse"]


def test_a_decode_task_asks_for_resources_one_live_node_offers_whole():
    wanted = {"CPU": 1, "decode": 2}
    assert decode_placement(wanted, [{"CPU": 4.0}, {"CPU": 2.0, "decode": 2.0}]) == (wanted, None)
    # Two nodes of decode 1 each hold 2 between them, but no task can take 2 of one.
    assert decode_placement(wanted, [{"CPU": 4.0, "decode": 1.0}, {"CPU": 4.0, "decode": 1.0}]) == (
        {"CPU": 1.0}, "data.decode_resources: no node offers {CPU: 1, decode: 2}; decoding on any node's CPUs"
    )
    assert decode_placement({"decode": 1}, [{"CPU": 1.0}])[0] == {"CPU": 1.0}  # a task's CPU: 1 unless given
    with pytest.raises(DecodePlacementError, match=r"^data.decode_resources: no node of the cluster can hold one decode task \(\{CPU: 6\}\); lower data"):
        decode_placement({"CPU": 6}, [{"CPU": 4.0}, {"CPU": 4.0}])


@pytest.mark.parametrize(("override", "message"), [
    ("data.feed=dali", "data.feed must be one of loader, ray, not 'dali'"),
    ("data.decode_tasks=0", "data.decode_tasks must be at least 1, not 0"),
    ("data.feed_memory_mb=0", "data.feed_memory_mb must be at least 1, not 0"),
    ("data.decode_resources={CPU: -1}", "data.decode_resources.CPU must be a number >= 0, not -1"),
    ("data.decode_resources={GPU: 1}", "data.decode_resources.GPU: decode tasks take CPUs and resources the nodes advertise"),
])  # fmt: skip
def test_feed_settings_that_cannot_work_are_refused_with_the_setting_named(override, message):
    with pytest.raises(ConfigError, match=re.escape(f"the config: {message}")):
        load_config(data={"model": {"name": "timesformer_tiny"}}, overrides=[override])


def test_a_cluster_without_a_cpu_for_decoding_beside_the_workers_is_refused():
    ray = {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    check_cluster_fits(ray, {"CPU": 2.0})  # the DataLoader decodes in the workers
    check_cluster_fits(ray, {"CPU": 3.0}, decode={"CPU": 1})
    with pytest.raises(ValueError, match=r"^the Ray cluster has 2 CPU, the training workers hold 2 and data.feed=ray needs 1 more for a decode task; "):
        check_cluster_fits(ray, {"CPU": 2.0}, decode={"CPU": 1})
