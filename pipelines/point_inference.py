"""Segment many scans: each PLY (or ScanNet scene folder) gets a class for every vertex.

Outputs, besides the shared results/failures tables (one row per scan with per-vertex nyu40 ids
and per-class counts): `submission/<scene>.txt`, one nyu40 id per vertex in vertex order -- the
ScanNet benchmark's semantic-label submission format.

Scans are large and few, so each is one unit of work for an inference actor that holds the
model; reading happens in the actor too, to avoid shipping the full cloud between processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.inputs import POINT_EXTENSIONS, InputItem, list_inputs
from pipelines.job import JobSummary, failure_reason, run_job


def list_scans(source: str | os.PathLike) -> list[InputItem]:
    """Scene folders (ScanNet raw or preprocessed) under `source` if it holds any, else point files.

    ScanNet's `*.labels.ply` are ground truth, not scans, so they are never inputs.
    """
    from spatiotemporal.io.points import is_scannet_scene

    root = Path(source)
    if root.is_dir():
        scenes = sorted(p for p in root.iterdir() if p.is_dir() and (is_scannet_scene(p) or (p / "coord.npy").is_file()))
        if scenes:
            return [InputItem(id=p.name, path=str(p.resolve())) for p in scenes]
    items = list_inputs(source, POINT_EXTENSIONS)
    return [item for item in items if not item.path.endswith(".labels.ply")]


def scene_name(item_id: str) -> str:
    name = Path(item_id).name
    for suffix in POINT_EXTENSIONS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class Segmenter:
    """An inference actor: one model, scans in, per-vertex nyu40 ids out."""

    def __init__(self, model: str, checkpoint: str | None, voxel_size: float, max_fragments: int | None,
                 device: str, threads: int):
        import ray
        import torch

        from spatiotemporal.infer import PointSegmenter

        torch.set_num_threads(max(1, threads))
        self.segmenter = PointSegmenter(model, checkpoint, device=device, voxel_size=voxel_size,
                                        max_fragments=max_fragments)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]):
        out: dict[str, list] = {k: [] for k in ("id", "path", "error", "num_points", "fragments", "nyu40",
                                                "class_counts", "seconds", "node_id")}
        for row_id, path in zip(batch["id"], batch["path"]):
            start = time.perf_counter()
            try:
                prediction = self.segmenter.predict(str(path))
                nyu40, error = prediction.nyu40.astype(np.int16), ""
                counts, fragments = prediction.counts(), prediction.fragments
            except Exception as err:  # noqa: BLE001 - every failing scan becomes a failure row
                nyu40, error, counts, fragments = np.zeros(0, np.int16), failure_reason(err), {}, 0
            out["id"].append(str(row_id))
            out["path"].append(str(path))
            out["error"].append(error)
            out["num_points"].append(len(nyu40))
            out["fragments"].append(fragments)
            out["nyu40"].append(nyu40)
            # JSON keeps the column one type whatever classes a scan contains.
            out["class_counts"].append(json.dumps(counts))
            out["seconds"].append(time.perf_counter() - start)
            out["node_id"].append(self.node)
        import pyarrow as pa

        # Plain Arrow columns; per-vertex ids are a list column (scans differ in size).
        columns = {k: pa.array(v) for k, v in out.items() if k != "nyu40"}
        columns["nyu40"] = pa.array([a.tolist() for a in out["nyu40"]], pa.list_(pa.int16()))
        return pa.table(columns)


def run(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str,
    checkpoint: str | None = None,
    voxel_size: float = 0.02,
    max_fragments: int | None = 1,
    workers: int = 1,
    device: str = "auto",
    resume: bool = True,
    retry_failed: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    shard_rows: int = 16,
    progress: bool = True,
) -> JobSummary:
    """Per-vertex predictions for every scan under `input`."""
    items = list_scans(input)
    submission = Path(output) / "submission"

    def write_submission(row: dict[str, Any]) -> None:
        submission.mkdir(parents=True, exist_ok=True)
        target = submission / f"{scene_name(row['id'])}.txt"
        tmp = target.with_suffix(".txt.tmp")
        np.savetxt(tmp, np.asarray(row["nyu40"], dtype=np.int64), fmt="%d")
        os.replace(tmp, target)

    def plan(dataset):
        import ray

        gpus = ray.cluster_resources().get("GPU", 0) if device in ("auto", "cuda") else 0
        resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 0.5}
        return dataset.map_batches(
            Segmenter,
            fn_constructor_kwargs={
                "model": model,
                "checkpoint": checkpoint,
                "voxel_size": voxel_size,
                "max_fragments": max_fragments,
                "device": "cuda" if gpus >= 1 else "cpu",
                "threads": 1 if workers > 1 else max(1, (os.cpu_count() or 1)),
            },
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            **resources,
        )

    return run_job(
        "point-inference",
        items,
        output,
        plan,
        resume=resume,
        retry_failed=retry_failed,
        rows_per_block=1,
        shard_rows=shard_rows,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        on_row=write_submission,
    )
