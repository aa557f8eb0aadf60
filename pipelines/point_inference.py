"""Segment many scans: each PLY (or ScanNet scene folder) gets a class for every vertex.

Outputs, besides the shared results/failures tables (one row per scan with its per-vertex
`labels`, what they are in `label_kind`, and per-class counts): `submission/<name>.txt`, one label
per vertex in vertex order. For a model of the ScanNet 20-class label set the labels are nyu40
ids, which is the ScanNet benchmark's semantic-label submission format; any other label set
(S3DIS, a custom head) writes its class indices, as `label_kind` says. `<name>` is the ScanNet scene id for ScanNet
scenes (`scene0000_00.txt`, as the benchmark expects) and otherwise the input's id made safe for a
file name (`a/room.ply` -> `a__room.txt`); see `submission_names`.

Scans are large and few, so each is one unit of work for an inference actor that holds the
model; reading happens in the actor too, to avoid shipping the full cloud between processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipelines.inputs import InputItem, list_inputs
from pipelines.job import (DEFAULT_STALL_TIMEOUT_S, JobSummary, actor_pool, check_device, check_model, failure_reason,
                           model_identity, run_job, usable_gpus)
from pipelines.weights import say_if_random
from spatiotemporal.data.scannet import is_prepared_scene
from spatiotemporal.io.points import POINT_FILE_EXTENSIONS, SCANNET_MESH_SUFFIX, is_scannet_scene

# ScanNet's ground truth sits next to its meshes; it is never a scan to segment.
_GROUND_TRUTH_SUFFIX = ".labels.ply"


def is_scene_folder(path: Path) -> bool:
    """A folder read as one scan: a raw ScanNet scene or a finished Pointcept-layout scene (the
    hidden folders an interrupted `prepare scannet` leaves are neither)."""
    return path.is_dir() and (is_prepared_scene(path) or is_scannet_scene(path))


def _is_scan_file(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(POINT_FILE_EXTENSIONS) and not lower.endswith(_GROUND_TRUTH_SUFFIX)


def list_scans(source: str | os.PathLike) -> list[InputItem]:
    """Every scan under `source`: scene folders at any depth (each one input, its files never
    inputs of their own) plus point files outside them; `source` may itself be a scene folder.
    A glob or manifest is listed by `list_inputs`."""
    root = Path(source)
    if is_scene_folder(root):
        # Same id rule as a single file given as input: its resolved path.
        path = os.path.realpath(root)
        return [InputItem(id=path, path=path)]
    if not root.is_dir():
        # Only ground truth is dropped: a listed file of another type (or a listed scene folder)
        # must reach the reader, to succeed or become a failure row.
        items = list_inputs(source, POINT_FILE_EXTENSIONS)
        return [item for item in items if not item.path.lower().endswith(_GROUND_TRUTH_SUFFIX)]
    return sorted(_walk_scans(root), key=lambda item: item.id)


def _walk_scans(root: Path) -> Iterable[InputItem]:
    """Ids are paths relative to `root`, as `list_inputs` gives for a directory."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        scenes = [name for name in dirnames if is_scene_folder(here / name)]
        # Pruned in place: os.walk then never descends into a scene, so its coord.npy, color.npy
        # or mesh files are not listed again as scans of their own.
        # Hidden folders (an interrupted prepare's `.scene.partial`) are never walked into.
        dirnames[:] = sorted(name for name in set(dirnames) - set(scenes) if not name.startswith("."))
        for name in scenes + [f for f in filenames if _is_scan_file(f)]:
            path = here / name
            yield InputItem(id=path.relative_to(root).as_posix(), path=os.path.realpath(path))


# --------------------------------------------------------------------------- submission names

_SCANNET_SCENE = re.compile(r"scene\d{4}_\d{2}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 200  # bytes; file systems allow 255 and ".txt" / ".tmp" suffixes need room


def _strip_scan_suffix(name: str) -> str:
    """`room.ply` -> `room`; a ScanNet mesh `scene0000_00_vh_clean_2.ply` -> `scene0000_00`."""
    if name.lower().endswith(SCANNET_MESH_SUFFIX):
        return name[: -len(SCANNET_MESH_SUFFIX)]
    for suffix in POINT_FILE_EXTENSIONS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _id_name(item_id: str) -> str:
    """The whole id as one file name: folders joined by `__`, the point-file suffix dropped."""
    parts = [p for p in PurePosixPath(item_id.replace("\\", "/")).parts if p not in ("/", ".")]
    parts[-1:] = [_strip_scan_suffix(parts[-1])] if parts else []
    name = "__".join(_UNSAFE.sub("_", p) for p in parts if p).lstrip(".") or "scan"
    if len(name.encode()) > _MAX_NAME:
        name = f"{name[: _MAX_NAME - 9]}-{_short_hash(item_id)}"
    return name


def _preferred_name(item_id: str) -> str:
    """ScanNet scenes keep the benchmark's `<scene_id>` name; anything else is named by its whole
    id, so two runs into one OUTDIR can never overwrite each other's files."""
    stem = _strip_scan_suffix(PurePosixPath(item_id.replace("\\", "/")).name)
    return stem if _SCANNET_SCENE.fullmatch(stem) else _id_name(item_id)


def _clashing(names: dict[str, str]) -> set[str]:
    # Case-folded: `Room` and `room` are one file on macOS and Windows file systems.
    counts = Counter(name.casefold() for name in names.values())
    return {item_id for item_id, name in names.items() if counts[name.casefold()] > 1}


def submission_names(ids: Iterable[str]) -> dict[str, str]:
    """A distinct submission file stem per id, from the ids alone (so a resumed run names each
    scan as the first run did).

    Only clashes fall back: a ScanNet scene listed twice (e.g. in two folders) is named by its
    whole id, and ids whose names still clash (`room.ply` and `room.npy`) get a hash of the id.
    """
    names = {item_id: _preferred_name(item_id) for item_id in ids}
    for item_id in _clashing(names):
        names[item_id] = _id_name(item_id)
    for item_id in _clashing(names):
        names[item_id] = f"{_id_name(item_id)}-{_short_hash(item_id)}"
    return names


class Segmenter:
    """An inference actor: one model, scans in, per-vertex labels (nyu40 ids for ScanNet) out."""

    def __init__(self, model: str, checkpoint: str | None, voxel_size: float | None, max_fragments: int | None,
                 device: str, threads: int, weights: dict | None = None, random_weights: bool = False):
        import ray
        import torch

        from spatiotemporal.infer import PointSegmenter

        torch.set_num_threads(max(1, threads))
        # `weights`: the driver's `share_weights`, fetched at most once per node.
        self.segmenter = PointSegmenter(model, checkpoint, device=device, voxel_size=voxel_size,
                                        max_fragments=max_fragments, weights=weights, random_weights=random_weights)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]):
        out: dict[str, list] = {k: [] for k in ("id", "path", "error", "num_points", "fragments", "labels",
                                                "label_kind", "voxel_size", "class_counts", "seconds", "node_id")}
        for row_id, path in zip(batch["id"], batch["path"]):
            start = time.perf_counter()
            try:
                prediction = self.segmenter.predict(str(path))
                labels, kind, error = prediction.label_ids.astype(np.int16), prediction.label_kind, ""
                counts, fragments = prediction.counts(), prediction.fragments
            except Exception as err:  # noqa: BLE001 - every failing scan becomes a failure row
                labels, kind, error, counts, fragments = np.zeros(0, np.int16), "", failure_reason(err), {}, 0
            out["id"].append(str(row_id))
            out["path"].append(str(path))
            out["error"].append(error)
            out["num_points"].append(len(labels))
            out["fragments"].append(fragments)
            out["labels"].append(labels)
            out["label_kind"].append(kind)
            # Resolved by the segmenter (the grid the model was trained at unless given): recorded,
            # since a warning about a differing size goes to the actor's log, not the user.
            out["voxel_size"].append(self.segmenter.voxel_size)
            # JSON keeps the column one type whatever classes a scan contains.
            out["class_counts"].append(json.dumps(counts))
            out["seconds"].append(time.perf_counter() - start)
            out["node_id"].append(self.node)
        import pyarrow as pa

        # Plain Arrow columns; per-vertex ids are a list column (scans differ in size).
        columns = {k: pa.array(v) for k, v in out.items() if k != "labels"}
        columns["labels"] = pa.array([a.tolist() for a in out["labels"]], pa.list_(pa.int16()))
        return pa.table(columns)


def run(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str,
    checkpoint: str | None = None,
    weights: str | None = None,
    random_weights: bool = False,
    voxel_size: float | None = None,
    max_fragments: int | None = 1,
    workers: int = 1,
    device: str = "auto",
    resume: bool = True,
    retry_failed: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    shard_rows: int = 16,
    progress: bool = True,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> JobSummary:
    """Per-vertex predictions for every scan under `input`. `voxel_size` None: the one the
    model was trained with (its checkpoint's, else its config's). `weights` names published weights
    (resolved on the driver, fetched at most once per node); with neither it nor `checkpoint` the
    job is refused unless `random_weights` asks for a random model."""
    from spatiotemporal.weights import require_weights, share_weights, weights_file

    check_model(model, checkpoint, "points")  # before Ray starts: a bad name or path is one line
    check_device(device, address)
    say_if_random(require_weights(model, checkpoint, weights, random_weights))
    if weights:  # fetched (or refused, in one line) before Ray starts
        weights_file(weights, model)
    # What makes the rows what they are: a resume into rows made otherwise is refused (run_job).
    identity = {**model_identity(model, checkpoint, weights, random_weights),
                "voxel_size": voxel_size, "max_fragments": max_fragments}
    items = list_scans(input)
    submission = Path(output) / "submission"
    # Named over the whole listing, not just the pending part, so resuming renames nothing.
    names = submission_names(item.id for item in items)

    def write_submission(row: dict[str, Any]) -> None:
        submission.mkdir(parents=True, exist_ok=True)
        target = submission / f"{names[row['id']]}.txt"
        tmp = target.with_suffix(".txt.tmp")
        np.savetxt(tmp, np.asarray(row["labels"], dtype=np.int64), fmt="%d")
        os.replace(tmp, target)

    def plan(dataset):
        import ray

        gpus = usable_gpus(device, ray.cluster_resources(), address)
        resources = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 0.5}
        pool = actor_pool(dataset, workers)
        return dataset.map_batches(
            Segmenter,
            fn_constructor_kwargs={
                "model": model,
                "checkpoint": checkpoint,
                "voxel_size": voxel_size,
                "max_fragments": max_fragments,
                "device": "cuda" if gpus >= 1 else "cpu",
                "threads": 1 if pool.max_size > 1 else max(1, (os.cpu_count() or 1)),
                "weights": share_weights(weights, model) if weights else None,
                "random_weights": random_weights,
            },
            batch_size=1,
            batch_format="numpy",
            compute=pool,
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
        stall_timeout_s=stall_timeout_s,
        identity=identity,
    )
