"""Classify many videos: CPU tasks decode and cut the test views, an actor pool runs the model.

Decoding is spread over Ray tasks (cheap to retry, scheduled on any node); the model lives in a
pool of actors so it is built once per worker, on a GPU when the cluster has one. Views travel
between the two as uint8, and the actors batch several videos per forward pass.

Result rows: id, path, class_ids, labels, probs (top-k, best first), optional embedding, and
timings (decode_s, infer_s) with where the work ran (decode_node, infer_node, infer_pid).
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipelines.inputs import VIDEO_EXTENSIONS, list_inputs
from pipelines.job import JobSummary, failure_reason, run_job


def decode_batch(batch: dict[str, np.ndarray], recipe, timeout_s: float) -> dict[str, np.ndarray]:
    """A CPU task: uint8 views for each video, or an error row with all-zero views of the same
    shape (a fixed shape keeps the column a dense tensor)."""
    import ray

    from spatiotemporal.infer import clip_views

    node = ray.get_runtime_context().get_node_id()
    temporal, spatial = recipe.views
    shape = (temporal * spatial, recipe.frames, recipe.crop, recipe.crop, 3)
    views, errors, seconds = [], [], []
    for path in batch["path"]:
        start = time.perf_counter()
        try:
            views.append(clip_views(str(path), recipe, timeout_s=timeout_s))
            errors.append("")
        except Exception as err:  # noqa: BLE001 - every failing input becomes a failure row
            views.append(np.zeros(shape, dtype=np.uint8))
            errors.append(failure_reason(err))
        seconds.append(time.perf_counter() - start)
    return {
        "id": batch["id"],
        "path": batch["path"],
        "error": np.array(errors),
        "views": np.stack(views),
        "decode_s": np.array(seconds),
        "decode_node": np.array([node] * len(errors)),
    }


class Predictor:
    """An inference actor: holds one model, turns batches of views into top-k rows."""

    def __init__(self, model: str, checkpoint: str | None, views: tuple[int, int], topk: int, embed: bool,
                 device: str, threads: int):
        import ray
        import torch

        from spatiotemporal.infer import VideoClassifier

        torch.set_num_threads(max(1, threads))
        self.classifier = VideoClassifier(model, checkpoint, views=views, device=device)
        self.topk, self.embed = topk, embed
        self.node = ray.get_runtime_context().get_node_id()
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

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
            "infer_node": pa.array([self.node] * count, pa.string()),
            "infer_pid": pa.array([self.pid] * count, pa.int64()),
        }
        if embedding is not None:
            columns["embedding"] = pa.array(embedding.tolist(), pa.list_(pa.float32()))
        return pa.table(columns)


def _decode_task_options() -> dict:
    return {"scheduling_strategy": "SPREAD", "max_retries": -1}


def run(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str,
    checkpoint: str | None = None,
    views: str | None = None,
    topk: int = 5,
    embed: bool = False,
    workers: int = 1,
    batch_size: int = 4,
    device: str = "auto",
    timeout_s: float = 30.0,
    resume: bool = True,
    retry_failed: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    decode_cpus: float = 0.5,
    shard_rows: int = 256,
    progress: bool = True,
) -> JobSummary:
    """Top-k predictions for every video under `input`, into Parquet shards in `output`."""
    from spatiotemporal.infer import ClipRecipe, parse_views
    from spatiotemporal.models.registry import get_spec

    spec = get_spec(model)
    recipe = ClipRecipe.from_spec(spec, parse_views(views, spec))
    items = list_inputs(input, VIDEO_EXTENSIONS)

    def plan(dataset):
        import ray

        gpus = ray.cluster_resources().get("GPU", 0) if device in ("auto", "cuda") else 0
        # Half a logical CPU per CPU actor: a pool restarted onto fewer nodes (after a node is
        # lost) must still leave room for decode tasks, or the job would wait forever.
        actor_resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 0.5}
        decoded = dataset.map_batches(
            decode_batch,
            fn_kwargs={"recipe": recipe, "timeout_s": timeout_s},
            batch_size=None,
            batch_format="numpy",
            num_cpus=decode_cpus,
            # Decoding is the part that scales with nodes: spread it rather than pack it, and
            # rerun a task lost with its worker or node. Given as a function, these options also
            # keep Ray Data from fusing decoding into the actors: it must stay in spreadable tasks.
            ray_remote_args_fn=_decode_task_options,
        )
        return decoded.map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model": model,
                "checkpoint": checkpoint,
                "views": recipe.views,
                "topk": topk,
                "embed": embed,
                "device": "cuda" if gpus >= 1 else "cpu",
                "threads": 1,
            },
            batch_size=batch_size,
            batch_format="numpy",
            # Ray Data restarts a killed actor and retries its batch by default.
            compute=ray.data.ActorPoolStrategy(size=workers),
            **actor_resources,
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
    )
