"""Decode once, train many times: clips become tubelet (or patch) tokens, scans become
grid-sampled point tokens with their coordinates, written as safetensors shards.

Shard format (read back with `TokenShards`): each `results/part-*.parquet` row names its input
(`id`, `path`, `kind`) and the tensors it owns: `tensor_file` is their safetensors file, relative
to OUTDIR (`tokens/part-*.safetensors`; results/ holds only Parquet), and `tensor_keys` their keys,
`<id>/<name>`:
  video  -> `tokens` uint8 (N, pt*ph*pw*C), `grid` int64 (3,) = tokens along (t, h, w)
  points -> `coord` float32 (M, 3), `grid_coord` int32 (M, 3), `feat` float32 (M, C)
Video tokens stay uint8 pixels (lossless, 4x smaller than float); a model's embedding normalizes
them with its own mean/std.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.inputs import POINT_EXTENSIONS, VIDEO_EXTENSIONS, list_inputs
from pipelines.job import DEFAULT_STALL_TIMEOUT_S, PAYLOAD, JobSummary, failure_reason, run_job

# Inputs per task call: a clip's tokens are megabytes, so a batch holds few of them.
ROWS_PER_BATCH = 2


@dataclass(frozen=True)
class TokenizeConfig:
    frames: int = 16
    stride: int = 4
    size: int = 224
    tubelet: tuple[int, int, int] = (2, 16, 16)  # (t, h, w); t=1 gives per-frame patches
    voxel_size: float = 0.02
    timeout_s: float = 30.0


def parse_tubelet(text: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(text, tuple):
        return text
    parts = tuple(int(p) for p in str(text).lower().split("x"))
    if len(parts) != 3:
        raise ValueError(f"tubelet must look like TxHxW (e.g. 2x16x16), got {text!r}")
    return parts  # type: ignore[return-value]


def video_tokens(path: str, config: TokenizeConfig) -> dict[str, np.ndarray]:
    from einops import rearrange

    from spatiotemporal.infer import ClipRecipe, clip_views

    recipe = ClipRecipe(config.frames, config.stride, config.size, None, (1, 1))
    clip = clip_views(path, recipe, timeout_s=config.timeout_s)[0]  # (T, H, W, C)
    pt, ph, pw = config.tubelet
    if config.frames % pt or config.size % ph or config.size % pw:
        raise ValueError(f"tubelet {config.tubelet} does not tile {config.frames}x{config.size}x{config.size}")
    tokens = rearrange(clip, "(t pt) (h ph) (w pw) c -> (t h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
    grid = np.array([config.frames // pt, config.size // ph, config.size // pw], dtype=np.int64)
    return {"tokens": np.ascontiguousarray(tokens), "grid": grid}


def point_tokens(path: str, config: TokenizeConfig) -> dict[str, np.ndarray]:
    import torch

    from spatiotemporal.data.point_transforms import GridSample, to_tensors
    from spatiotemporal.io.points import read_points

    cloud = to_tensors(read_points(path))
    # A fixed seed makes the one-point-per-voxel choice, and so the shards, reproducible.
    sampled = GridSample(config.voxel_size, "train", generator=torch.Generator().manual_seed(0))(cloud)
    coord = sampled["coord"].float()
    feat = sampled["color"].float() / 255.0 if "color" in sampled else coord
    return {
        "coord": coord.numpy(),
        "grid_coord": sampled["grid_coord"].int().numpy(),
        "feat": np.ascontiguousarray(feat.numpy(), dtype=np.float32),
    }


def tokenize_batch(batch: dict[str, np.ndarray], config: TokenizeConfig) -> dict[str, Any]:
    """A CPU task: each input becomes one row with its tensors serialized, or one failure row."""
    import ray
    from safetensors.numpy import save

    node = ray.get_runtime_context().get_node_id()
    out: dict[str, list] = {k: [] for k in ("id", "path", "error", "kind", "num_tokens", "seconds", "node_id", PAYLOAD)}
    for row_id, path in zip(batch["id"], batch["path"]):
        start = time.perf_counter()
        kind = "points" if str(path).lower().endswith(POINT_EXTENSIONS) else "video"
        error, blob, count = "", b"", 0
        try:
            tensors = point_tokens(str(path), config) if kind == "points" else video_tokens(str(path), config)
            count = len(tensors["tokens" if kind == "video" else "coord"])
            blob = save(tensors)
        except Exception as err:  # noqa: BLE001 - the job records every failing input with its reason
            error = failure_reason(err)
        out["id"].append(str(row_id))
        out["path"].append(str(path))
        out["error"].append(error)
        out["kind"].append(kind)
        out["num_tokens"].append(count)
        out["seconds"].append(time.perf_counter() - start)
        out["node_id"].append(node)
        out[PAYLOAD].append(blob)
    return {k: np.array(v, dtype=object) if k == PAYLOAD else np.array(v) for k, v in out.items()}


def run(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    frames: int = 16,
    stride: int = 4,
    size: int = 224,
    tubelet: str | tuple[int, int, int] = (2, 16, 16),
    voxel_size: float = 0.02,
    timeout_s: float = 30.0,
    resume: bool = True,
    retry_failed: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    shard_rows: int = 64,
    progress: bool = True,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
) -> JobSummary:
    """Tokenize every clip and scan under `input` into shards in `output`."""
    config = TokenizeConfig(frames, stride, size, parse_tubelet(tubelet), voxel_size, timeout_s)
    items = list_inputs(input, VIDEO_EXTENSIONS + POINT_EXTENSIONS)

    def plan(dataset):
        return dataset.map_batches(
            tokenize_batch, fn_kwargs={"config": config}, batch_size=ROWS_PER_BATCH, batch_format="numpy", num_cpus=1
        )

    return run_job(
        "tokenize",
        items,
        output,
        plan,
        resume=resume,
        retry_failed=retry_failed,
        rows_per_block=ROWS_PER_BATCH,
        shard_rows=shard_rows,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        stall_timeout_s=stall_timeout_s,
        # What makes the tokens what they are (the timeout only decides which inputs fail): a
        # resume into tokens made otherwise is refused (run_job).
        identity={"config": {k: v for k, v in asdict(config).items() if k != "timeout_s"}},
    )


class TokenShards:
    """The tokenize job's output as a map-style dataset of {id, kind, <tensors>} (torch tensors),
    so a training run can use it with a plain DataLoader."""

    def __init__(self, output: str | os.PathLike, kind: str | None = None):
        from pipelines.job import read_table

        self.root = Path(output)
        table = read_table(output, "results")
        if kind is not None:
            table = table[table["kind"] == kind]
        self.rows = table.sort_values("id").reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from safetensors import safe_open

        from pipelines.job import tensor_path

        row = self.rows.iloc[index]
        out: dict[str, Any] = {"id": row["id"], "kind": row["kind"]}
        with safe_open(str(tensor_path(self.root, row["tensor_file"])), framework="pt") as handle:
            for key in row["tensor_keys"]:
                out[key.rsplit("/", 1)[1]] = handle.get_tensor(key)
        return out
