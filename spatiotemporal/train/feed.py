"""Training fed by Ray Data (`data.feed: ray`): decode tasks on any node of the cluster turn this
rank's (epoch, index) keys into samples, and the worker takes them in batches, in order.

Each rank runs its own stream over the keys `ResumableDistributedSampler` gives it, rather than
one dataset split with `streaming_split` (what `get_dataset_shard` hands out). That split gives
each rank whichever blocks are ready when it asks, so which rank trains on which sample, and in
what order, depends on timing; a resumed run could not take "the rest of the epoch", nor could a
seed name the run. Here the keys are fixed by (seed, epoch, rank), Ray Data keeps their order
(`preserve_order`), and a sample is a function of (seed, epoch, index) wherever it is decoded
(`SeededSamples`): the batches are the DataLoader's, so a run and its resumption equal it.

A sample travels as one pickled object per row, so clips (fixed shape) and point crops (any
number of points) take the same road and meet the task's own `collate` on the worker.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

# A decode task takes this many keys at once: small, so the first batch comes soon.
_KEYS_PER_TASK = 2
FEED_FILE = "feed.jsonl"  # in the run directory: where each epoch's samples were decoded


class DecodePlacementError(ValueError):
    """No node of the cluster can hold one decode task."""


def _bundle(resources: Mapping[str, float]) -> dict[str, float]:
    return {**{name: float(amount) for name, amount in resources.items()}, "CPU": decode_cpus(resources)}


def decode_placement(wanted: Mapping[str, float], nodes: list[Mapping[str, float]]) -> tuple[dict, str | None]:
    """The resources one decode task asks for on a cluster whose live nodes offer `nodes` (each
    node's total resources), and a note when they differ from `wanted`. A task must fit whole on
    one node: when none offers the resources asked for, the named (custom) ones are dropped and
    decoding runs on any node's CPUs, the trainers' spare ones included, rather than waiting for a
    node that never comes; when no node has even the CPUs, the run is refused."""
    bundle = _bundle(wanted)

    def fits(resources: Mapping[str, float]) -> bool:
        return any(all(node.get(name, 0.0) >= amount for name, amount in resources.items()) for node in nodes)

    if fits(bundle):
        return dict(wanted), None
    asked = ", ".join(f"{name}: {amount:g}" for name, amount in bundle.items())
    if fits({"CPU": bundle["CPU"]}):
        kept = {"CPU": bundle["CPU"]}
        return kept, f"data.decode_resources: no node offers {{{asked}}}; decoding on any node's CPUs"
    raise DecodePlacementError(
        f"data.decode_resources: no node of the cluster can hold one decode task ({{{asked}}}); "
        "lower data.decode_resources.CPU or join nodes with more CPUs"
    )


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the cluster this process is connected to."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def decode_cpus(resources: Mapping[str, float]) -> float:
    """CPUs one decode task holds: the configured count, 1 when none is given (as Ray Data's
    tasks take by default)."""
    return float(resources.get("CPU", 1))


_TRAIN_SETS: dict[str, object] = {}


def _train_set(config: dict, size: int):
    """This process's training set for `config`, built once: Ray reuses its worker processes, so
    a decode task after the first finds the index read and, with data.cache, the videos decoded
    (each decode process then holds its own copy: data.cache is for small datasets)."""
    from spatiotemporal.train.tasks import make_task

    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _TRAIN_SETS or len(_TRAIN_SETS[key]) != size:  # the files changed since
        _TRAIN_SETS.clear()  # one run's set at a time
        _TRAIN_SETS[key] = make_task(config).train_set()
    if len(_TRAIN_SETS[key]) != size:
        raise RuntimeError(f"{config['data']['root']}: the training set has {len(_TRAIN_SETS[key])} samples on this "
                           f"node, {size} where training started; do all nodes see the same files?")  # fmt: skip
    return _TRAIN_SETS[key]


def decode_keys(batch: dict[str, np.ndarray], config: dict, keys: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Ray Data's map function: the samples of the rows `batch["id"]` of `keys` ((epoch, index)
    pairs of a training set of `size` samples), each pickled, and the id of the node that decoded
    them."""
    import ray

    from spatiotemporal.train.sampler import SeededSamples

    with warnings.catch_warnings():
        # The dataset's warnings (videos missing from the index, a broken video skipped) would
        # print from every decode process, prefixed by Ray: the training worker says them once,
        # its set's when it reads the index, a broken video's from the sample's error (skipped.py).
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = SeededSamples(_train_set(config, size), config["seed"])
        rows = [pickle.dumps(samples[tuple(int(k) for k in keys[row])], protocol=5) for row in batch["id"]]
    node = ray.get_runtime_context().get_node_id()
    return {"sample": np.array(rows, dtype=object), "node": np.array([node] * len(rows))}


class RayFeed:
    """The batches of `keys` (this rank's (epoch, index) pairs of a training set of `size`
    samples, in order), decoded by Ray Data tasks placed by data.decode_resources and collated by
    `collate`. data.feed_prefetch batches wait ready for the worker; decoding runs ahead within
    data.feed_memory_mb of the object store, data.decode_tasks tasks at once. `decoded_on` counts,
    per node id, the samples decoded there so far."""

    def __init__(self, config: dict, keys: list[tuple[int, int]], size: int, batch_size: int, collate) -> None:
        self.config, self.keys, self.size = config, keys, size
        self.batch_size, self.collate = batch_size, collate
        self.decoded_on: Counter[str] = Counter()

    def __iter__(self) -> Iterator:
        import ray.data

        from spatiotemporal.ray_console import quiet_ray_data

        if not self.keys:
            return
        data = self.config["data"]
        quiet_ray_data()
        # Placed anew at each epoch: a restart after a lost node finds the nodes alive now.
        resources, note = decode_placement(data["decode_resources"], live_nodes())
        if note is not None and note != self.config.get("_decode_note"):  # not the one `fit` printed
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        cpus = resources.pop("CPU", 1.0)
        blocks = -(-len(self.keys) // _KEYS_PER_TASK)
        # Row numbers as in-memory blocks: `ray.data.range` would read them in tasks of 1 CPU each,
        # which never run where the workers hold every CPU and the decode tasks take none.
        rows = ray.data.from_items([{"id": row} for row in range(len(self.keys))], override_num_blocks=blocks)
        # The stream's own copy of the process's DataContext, so other Ray Data work of the
        # process keeps its settings.
        rows.context.execution_no_progress_timeout_s = data["feed_stall_s"]  # a stall fails the workers
        options = rows.context.execution_options
        options.preserve_order = True
        options.resource_limits = options.resource_limits.copy(object_store_memory=data["feed_memory_mb"] * 2**20)
        stream = rows.map_batches(
            decode_keys,
            fn_kwargs={"config": _decode_config(self.config), "keys": np.asarray(self.keys), "size": self.size},
            batch_size=_KEYS_PER_TASK,
            num_cpus=cpus,
            resources=resources or None,
            # No more tasks than blocks: Ray Data warns of a limit it cannot reach.
            compute=ray.data.TaskPoolStrategy(size=min(data["decode_tasks"], blocks)),
        )
        batches = stream.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=data["feed_prefetch"]
        )
        for batch in batches:
            self.decoded_on.update(batch["node"].tolist())
            yield self.collate([pickle.loads(sample) for sample in batch["sample"]])



def record_feed(run_dir: Path, epoch: int, decoded_on_by_rank: list[Mapping[str, int]]) -> None:
    """One row for an epoch the feed gave: its samples, and how many each node decoded (its Ray
    node id). A resumed or restarted epoch counts the samples fed since it started again."""
    nodes: Counter[str] = Counter()
    for decoded_on in decoded_on_by_rank:
        nodes.update(decoded_on)
    row = {"epoch": epoch, "samples": sum(nodes.values()), "nodes": dict(sorted(nodes.items()))}
    with (Path(run_dir) / FEED_FILE).open("a") as rows:
        rows.write(json.dumps(row) + "\n")


def read_feed(run_dir: Path) -> list[dict]:
    from spatiotemporal.train.failures import read_failures  # the run's JSONL reader (a torn last row is left out)

    return read_failures(run_dir, FEED_FILE)


def _decode_config(config: dict) -> dict:
    """What a decode task needs of the run's config: the settings a training set is built from,
    without the run's bookkeeping (checkpoint lists, directories), so every task of the run, and
    of its resumption, builds the same set."""
    return {key: value for key, value in config.items() if not key.startswith("_")}
