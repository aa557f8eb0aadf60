"""Classify many videos: decode and cut the test views, then run the model, in a pool of actors.

The model lives in a pool of actors (`workers` of them) so it is built once per worker. How the
work is laid out on the cluster is `resource_plan`'s job:

- with GPUs, decoding is spread over CPU tasks (cheap to retry, scheduled on any node) that feed
  one actor per GPU; views travel between the two as uint8;
- on a CPU-only cluster the model and the decoder compete for the same cores, so each worker is
  one actor that decodes its own batch and runs the model on one thread, reserving one CPU:
  `workers` is then the number of cores the job uses, nothing is oversubscribed, and decoded views
  never cross a process boundary.

Either way the actors batch several videos per forward pass.

Result rows: id, path, class_ids, labels, probs (top-k, best first), optional embedding, and
timings (decode_s, infer_s) with where the work ran (decode_node, infer_node, infer_pid), the
decoder that read the video (backend; the summary line counts inputs per backend) and the
precision it ran in (bf16 autocast or fp32; `precision="auto"` picks bf16 on a GPU that supports
it, and on a CPU where a measured probe at the model's matmul shapes finds it clearly faster).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from pipelines.inputs import VIDEO_EXTENSIONS, list_inputs
from pipelines.job import (DEFAULT_STALL_TIMEOUT_S, JobSummary, actor_pool, check_device, check_model, failure_reason,
                           model_identity, run_job, usable_gpus)
from pipelines.weights import say_if_random


def decode_batch(batch: dict[str, np.ndarray], recipe, timeout_s: float, backend: str = "auto") -> dict[str, np.ndarray]:
    """A CPU task: uint8 views for each video, or an error row with all-zero views of the same
    shape (a fixed shape keeps the column a dense tensor)."""
    import ray

    from spatiotemporal.infer import clip_views_and_backend

    node = ray.get_runtime_context().get_node_id()
    temporal, spatial = recipe.views
    shape = (temporal * spatial, recipe.frames, recipe.crop, recipe.crop, 3)
    views, errors, seconds, backends = [], [], [], []
    for path in batch["path"]:
        start = time.perf_counter()
        try:
            clip, served_by = clip_views_and_backend(str(path), recipe, timeout_s=timeout_s, backend=backend)
            views.append(clip)
            backends.append(served_by)
            errors.append("")
        except Exception as err:  # noqa: BLE001 - every failing input becomes a failure row
            views.append(np.zeros(shape, dtype=np.uint8))
            backends.append("")
            errors.append(failure_reason(err))
        seconds.append(time.perf_counter() - start)
    return {
        "id": batch["id"],
        "path": batch["path"],
        "error": np.array(errors),
        "views": np.stack(views),
        "decode_s": np.array(seconds),
        "decode_node": np.array([node] * len(errors)),
        "backend": np.array(backends),
    }


class Predictor:
    """An inference actor: holds one model, turns batches of views into top-k rows.

    Given a `recipe`, it decodes the batch's videos itself (the CPU-only plan); otherwise the
    batch arrives with its `views` already decoded by `decode_batch` tasks.
    """

    def __init__(self, model: str, checkpoint: str | None, views: tuple[int, int], topk: int, embed: bool,
                 device: str, threads: int, precision: str = "auto", recipe=None, timeout_s: float = 30.0,
                 backend: str = "auto",
                 weights: dict | None = None, random_weights: bool = False):
        import ray
        import torch

        from spatiotemporal.infer import VideoClassifier

        torch.set_num_threads(max(1, threads))
        # `weights`: the driver's `share_weights`, fetched at most once per node.
        self.classifier = VideoClassifier(model, checkpoint, views=views, device=device, precision=precision,
                                          weights=weights, random_weights=random_weights)
        self.topk, self.embed = topk, embed
        self.recipe, self.timeout_s, self.backend = recipe, timeout_s, backend
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        if self.recipe is not None:
            batch = decode_batch(batch, self.recipe, self.timeout_s, self.backend)
        count = len(batch["id"])
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        k = min(self.topk, self.classifier.num_classes)
        class_ids = np.zeros((count, k), dtype=np.int64)
        probs = np.zeros((count, k), dtype=np.float32)
        embedding = None
        start = time.perf_counter()
        if ok.any():
            ids, top, emb = self.classifier.predict_views(batch["views"][ok], k, embed=self.embed)
            class_ids[ok], probs[ok] = ids, top
            if emb is not None:
                embedding = np.zeros((count, emb.shape[1]), dtype=np.float32)
                embedding[ok] = emb
        per_item = (time.perf_counter() - start) / max(int(ok.sum()), 1)
        names = self.classifier.class_names
        # Plain Arrow list columns: Ray's tensor extension mis-reads sliced fixed-shape blocks.
        columns = {
            "id": pa.array(batch["id"].tolist(), pa.string()),
            "path": pa.array(batch["path"].tolist(), pa.string()),
            "error": pa.array(batch["error"].tolist(), pa.string()),
            "class_ids": pa.array(class_ids.tolist(), pa.list_(pa.int64())),
            "labels": pa.array([[names[i] for i in row] for row in class_ids], pa.list_(pa.string())),
            "probs": pa.array(probs.tolist(), pa.list_(pa.float32())),
            "decode_s": pa.array(batch["decode_s"].tolist(), pa.float64()),
            "infer_s": pa.array([per_item] * count, pa.float64()),
            "decode_node": pa.array(batch["decode_node"].tolist(), pa.string()),
            "backend": pa.array(batch["backend"].tolist(), pa.string()),
            "infer_node": pa.array([self.node] * count, pa.string()),
            "infer_pid": pa.array([self.pid] * count, pa.int64()),
            "precision": pa.array([self.classifier.precision] * count, pa.string()),
        }
        if embedding is not None:
            columns["embedding"] = pa.array(embedding.tolist(), pa.list_(pa.float32()))
        return pa.table(columns)


def _decode_task_options() -> dict:
    return {"scheduling_strategy": "SPREAD", "max_retries": -1}


@dataclass(frozen=True)
class ResourcePlan:
    """Where each stage runs and what it reserves.

    `decode_in_actor`: the actors decode their own batches (no decode tasks). `actor`: Ray
    resources of one inference actor. `threads`: torch threads per actor. `decode_cpus`: what
    one decode task reserves when decoding runs in tasks.
    """

    decode_in_actor: bool
    actor: dict[str, float]
    threads: int
    decode_cpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.actor.get("num_gpus", 0) else "cpu"


def resource_plan(workers: int, cluster: dict[str, float], device: str = "auto",
                  decode_cpus: float = 0.5, address: str | None = None) -> ResourcePlan:
    """How `workers` inference workers use a cluster with `cluster` resources (`ray.cluster_resources()`).

    GPUs: one GPU per actor; decode tasks take the CPUs. CPU only: a worker is one core that
    decodes and runs the model on one thread. Threads beyond that would only oversubscribe the
    cores that other workers use (2 actors x 2 threads on 2 cores, or actors competing with decode
    tasks), and separate decode tasks would only add processes and copies on those same cores.
    A worker reserves a whole CPU, so Ray places no other work on it, unless more workers are asked
    for than the cluster has CPUs: then they share what there is rather than wait forever.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    gpus = usable_gpus(device, cluster, address)
    if gpus >= 1:
        return ResourcePlan(decode_in_actor=False, actor={"num_gpus": 1}, threads=1, decode_cpus=decode_cpus)
    cpus = cluster.get("CPU", 1) or 1
    share = min(1.0, cpus / workers)
    return ResourcePlan(decode_in_actor=True, actor={"num_cpus": share}, threads=1, decode_cpus=decode_cpus)


def driver_precision(precision: str, layout: ResourcePlan, model: str, checkpoint: str | None,
                     weights: str | None, spec) -> str:
    """The precision the inference actors are given. `auto` with CPU actors is decided here, on the
    driver, once per job: the probe at the model's matmul shapes (its architecture built on the meta
    device: no weights, no memory) with torch at the actors' thread count, so that every actor
    computes in the same precision and none probes while its siblings load the cores. GPU actors
    keep `auto`: each decides by its own GPU."""
    if precision != "auto" or layout.device != "cpu":
        return precision
    import torch

    from spatiotemporal.infer import view_input_shape
    from spatiotemporal.models.registry import model_skeleton
    from spatiotemporal.precision import choose_precision, model_matmul_shapes

    def shapes():
        skeleton = model_skeleton(model, checkpoint, weights=weights)
        return model_matmul_shapes(skeleton, view_input_shape(spec))

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, layout.threads))
    try:
        return choose_precision("auto", torch.device("cpu"), shapes).precision
    finally:
        torch.set_num_threads(threads)


def run(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str,
    checkpoint: str | None = None,
    weights: str | None = None,
    random_weights: bool = False,
    views: str | None = None,
    topk: int = 5,
    embed: bool = False,
    workers: int = 1,
    batch_size: int = 4,
    device: str = "auto",
    precision: str = "auto",
    timeout_s: float = 30.0,
    backend: str = "auto",
    resume: bool = True,
    retry_failed: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    decode_cpus: float = 0.5,
    shard_rows: int = 256,
    progress: bool = True,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> JobSummary:
    """Top-k predictions for every video under `input`, into Parquet shards in `output`.

    `weights` names published weights (`spatiotemporal weights list`), resolved on the driver
    and fetched at most once per node; with neither it nor `checkpoint` the job is refused unless
    `random_weights` asks for a random model (smoke tests, benchmarks)."""
    from spatiotemporal.infer import ClipRecipe, check_topk, parse_views
    from spatiotemporal.io.errors import CheckpointError
    from spatiotemporal.models.registry import resolved_spec
    from spatiotemporal.precision import check_precision
    from spatiotemporal.weights import require_weights, share_weights

    check_precision(precision)  # before any actor starts
    from spatiotemporal.io.video import check_backend

    check_backend(backend)
    check_topk(topk)
    check_model(model, checkpoint, "video")
    check_device(device, address)
    say_if_random(require_weights(model, checkpoint, weights, random_weights))
    # The clips the model was built and trained for: a checkpoint's own frames and size, not the
    # registered spec's, or the decode tasks would cut views the actors' model does not take.
    try:
        spec = resolved_spec(model, checkpoint, weights=weights)  # a catalogue entry is fetched here
    except CheckpointError as err:  # unreadable: refused before Ray starts, in one line
        raise ValueError(str(err)) from None
    recipe = ClipRecipe.from_spec(spec, parse_views(views, spec))
    # What makes the rows what they are: a resume into rows made otherwise is refused (run_job).
    identity = {**model_identity(model, checkpoint, weights, random_weights),
                "views": list(recipe.views), "topk": topk, "embed": bool(embed)}
    items = list_inputs(input, VIDEO_EXTENSIONS)

    def plan(dataset):
        import ray

        pool = actor_pool(dataset, workers)  # counted on the inputs' blocks, before decoding
        layout = resource_plan(pool.max_size, ray.cluster_resources(), device, decode_cpus, address)
        # `auto` on CPUs is decided here once, at the actors' thread count, before they load the cores.
        actor_precision = driver_precision(precision, layout, model, checkpoint, weights, spec)
        predictor_kwargs = {
            "model": model,
            "checkpoint": checkpoint,
            "views": recipe.views,
            "topk": topk,
            "embed": embed,
            "device": layout.device,
            "threads": layout.threads,
            "precision": actor_precision,
            "weights": share_weights(weights, model) if weights else None,
            "random_weights": random_weights,
        }
        if layout.decode_in_actor:
            predictor_kwargs.update(recipe=recipe, timeout_s=timeout_s, backend=backend)
        else:
            dataset = dataset.map_batches(
                decode_batch,
                fn_kwargs={"recipe": recipe, "timeout_s": timeout_s, "backend": backend},
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=layout.decode_cpus,
                # Decoding is the part that scales with nodes: spread it rather than pack it, and
                # rerun a task lost with its worker or node. Given as a function, these options
                # also keep Ray Data from fusing decoding into the GPU actors.
                ray_remote_args_fn=_decode_task_options,
            )
        return dataset.map_batches(
            Predictor,
            fn_constructor_kwargs=predictor_kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            # Ray Data restarts a killed actor and retries its batch by default.
            compute=pool,
            **layout.actor,
        )

    return run_job(
        "video-inference",
        items,
        output,
        plan,
        resume=resume,
        retry_failed=retry_failed,
        rows_per_block=batch_size,
        shard_rows=shard_rows,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        stall_timeout_s=stall_timeout_s,
        tally=("backend",),
        identity=identity,
    )
