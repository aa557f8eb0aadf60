"""Grid sampling: ours (PyTorch; train = one random point per voxel, test = fragments covering
every point) against open3d's `voxel_down_sample` on the same points, and against Pointcept's
NumPy recipe (FNV-1a voxel hash, argsort, np.unique) written out here, on the real
livingroom_fragment.ply and a 1M-point synthetic ScanNet cloud."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

TITLE = "Point data: grid sampling vs open3d voxel_down_sample"

SHARED = Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per function. The functions take turns within every repetition, so a
    load spike from other jobs on the machine hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: first calls allocate and load kernels
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _fnv_hash(grid: np.ndarray) -> np.ndarray:
    """Pointcept's 64-bit FNV-1a hash of integer voxel coordinates."""
    grid = grid.astype(np.uint64)
    key = np.full(len(grid), 14695981039346656037, dtype=np.uint64)
    for axis in range(3):
        key = key * np.uint64(1099511628211)
        key = np.bitwise_xor(key, grid[:, axis])
    return key


def _numpy_train_sample(coord: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    grid = np.floor(coord / size).astype(np.int64)
    grid -= grid.min(0)
    key = _fnv_hash(grid)
    order = np.argsort(key)
    _, counts = np.unique(key[order], return_counts=True)
    start = np.cumsum(np.insert(counts, 0, 0)[:-1])
    return order[start + rng.integers(0, counts.max(), counts.size) % counts]


def _million_point_cloud() -> np.ndarray:
    from spatiotemporal.data.synthetic_scannet import SceneSpec, generate_scene

    parts, total, index = [], 0, 0
    while total < 1_000_000:
        coord = generate_scene(0, index, SceneSpec(spacing=0.012)).coord
        coord[:, 0] += 10.0 * index  # rooms side by side, like a multi-room scan
        parts.append(coord)
        total += len(coord)
        index += 1
    return np.concatenate(parts)[:1_000_000]


def run(args) -> str:
    import torch

    repeats = 1 if args.quick else 7
    # open3d's voxel_down_sample is single-threaded; time ours on one thread too. (On a
    # machine shared with other jobs, torch's two-thread pool also spends most of its time
    # waiting for the busy second core.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(repeats: int) -> str:
    import open3d as o3d
    import torch

    from spatiotemporal.data.point_transforms import GridSample
    from spatiotemporal.io.points import read_ply

    clouds = {
        "livingroom_fragment.ply (real)": read_ply(SHARED / "points" / "livingroom_fragment.ply")["coord"],
        "synthetic ScanNet rooms": _million_point_cloud(),
    }
    rows = []
    for name, coord in clouds.items():
        tensor = torch.from_numpy(coord)
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.astype(np.float64)))
        for size in (0.02, 0.05):
            generator = torch.Generator().manual_seed(0)
            train = GridSample(size, "train", generator=generator)
            test = GridSample(size, "test")
            rng = np.random.default_rng(0)
            t = _timed(
                {
                    "open3d": lambda: pcd.voxel_down_sample(size),
                    "numpy": lambda: _numpy_train_sample(coord, size, rng),
                    "train": lambda: train({"coord": tensor}),
                    "test": lambda: test({"coord": tensor}),
                },
                repeats,
            )
            t_ref, t_np, t_train, t_test = t["open3d"], t["numpy"], t["train"], t["test"]
            voxels = len(train({"coord": tensor})["coord"])
            fragments = len(test({"coord": tensor}))
            o3d_voxels = len(pcd.voxel_down_sample(size).points)
            rows.append(
                f"| {name} | {len(coord):,} | {size} | {voxels:,} / {o3d_voxels:,} | "
                f"{t_ref * 1e3:.1f} | {t_np * 1e3:.1f} | {t_train * 1e3:.1f} | {t_ref / t_train:.2f}x | "
                f"{t_test * 1e3:.1f} ({fragments} fragments) |"
            )
    lines = [
        f"Median of {repeats} interleaved runs after a warm-up, CPU, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, open3d {o3d.__version__}. "
        "open3d averages the points of each voxel and offsets its grid by half a voxel, so its "
        "voxel count differs from ours (floor(coord / size), as Pointcept): most on the synthetic "
        "rooms, whose floors lie at z = 0, exactly on one of our voxel boundaries. "
        "Ratio > 1 means ours is faster. The machine was shared with other jobs: compare within a row.",
        "",
        "| cloud | points | voxel (m) | voxels ours / open3d | open3d voxel_down_sample (ms) | "
        "Pointcept-style NumPy train (ms) | ours train (ms) | open3d / ours train | ours test, all fragments (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines)
