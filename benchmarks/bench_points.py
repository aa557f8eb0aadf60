"""Point operators and point models on the real scan, against open3d in the same run.

- kNN (k=16, exact): ours, both the PyTorch path (chunked; what CUDA tensors use) and the CPU
  default (which calls open3d), vs open3d's `core.nns.NearestNeighborSearch` called directly,
  on the same points of livingroom_fragment.ply; index building counts in both.
- Grid pooling at 2 cm: ours vs open3d's `voxel_down_sample`.
- Both ScanNet-size models: points/s for forward (eval, no grad) and forward + backward (train)
  at 50k and 100k points of the scan, the latter also with per-block activation checkpointing.
- Inference on the whole scan (112,698 points, its own frame and density): seconds and peak
  resident memory, each model in a fresh subprocess so the peak is its own; both the bare model
  on every point, and the `spatiotemporal infer SCAN.ply --model M --out DIR` command end to end
  (read, normals, 2 cm grid fragments, vote, labeled PLY and PNG), with its default of one
  fragment and with all of them (Pointcept's protocol).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TITLE = "Point clouds: kNN, grid pooling, Point Transformer and Stratified Transformer on CPU"
SCAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "points" / "livingroom_fragment.ply"
MODELS = ("point_transformer", "stratified_transformer")
CHECKPOINTED = "forward+backward, activation checkpointing"


def load_scan(n: int | None = None, seed: int = 0):
    import numpy as np
    import open3d as o3d
    import torch

    path = Path(os.environ.get("SPATIOTEMPORAL_SCAN", SCAN))
    cloud = o3d.io.read_point_cloud(str(path))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(16))
    coord = torch.from_numpy(np.asarray(cloud.points)).float()
    color = torch.from_numpy(np.asarray(cloud.colors)).float()
    normal = torch.from_numpy(np.asarray(cloud.normals)).float()
    if n is not None and n < len(coord):
        keep = torch.randperm(len(coord), generator=torch.Generator().manual_seed(seed))[:n]
        coord, color, normal = coord[keep], color[keep], normal[keep]
    return coord, color, normal


def model_input(model, coord, color, normal):
    """The model's own input features (its `feature_keys`), scaled as training scales them."""
    import torch

    from spatiotemporal.data.point_transforms import point_features
    from spatiotemporal.models.registry import point_feature_keys

    coord = coord - coord.min(0).values  # the models see scans shifted to the origin, as in Pointcept
    cloud = {"coord": coord, "color": color * 2 - 1, "normal": normal}  # open3d colour 0..1 -> -1..1
    return coord, point_features(cloud, point_feature_keys(model)), torch.tensor([len(coord)])


def _child(name: str, n: int, mode: str) -> dict:
    """One measurement in this process: returns seconds and peak RSS (GiB)."""
    import torch

    from spatiotemporal.models import create_model

    torch.manual_seed(0)
    model = create_model(name, grad_checkpointing=mode == CHECKPOINTED)
    coord, feat, offset = model_input(model, *load_scan(None if n <= 0 else n))
    start = time.perf_counter()
    cpu = time.process_time()
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            out = model(coord, feat, offset)
    else:
        model.train()
        out = model(coord, feat, offset)
        torch.nn.functional.cross_entropy(out, torch.zeros(len(coord), dtype=torch.long)).backward()
    seconds = time.perf_counter() - start
    return {
        "model": name, "points": len(coord), "mode": mode, "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "finite": bool(torch.isfinite(out).all()),
    }


def measure(name: str, n: int, mode: str, timeout: int = 3600) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_points", "--child", name, str(n), mode]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:]
        if done.returncode == -9 and not last:
            why = "killed by SIGKILL with no error: on this box, the kernel's out-of-memory killer"
        else:
            why = f"exit {done.returncode}: {' '.join(last)}"
        return {"model": name, "points": n, "mode": mode, "error": why}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_knn(sizes: list[int], repeats: int) -> list[str]:
    import numpy as np
    import open3d as o3d
    import torch

    from spatiotemporal.layers.point_ops import knn_query

    rows = ["| points | ours, torch path (s) | ours, default on CPU (s) | open3d nns (s) | torch path / open3d | default / open3d | distances agree |",
            "|---|---|---|---|---|---|---|"]
    for n in sizes:
        coord = load_scan(n)[0]
        offset = torch.tensor([len(coord)])
        torch_path = min(_timed(lambda: knn_query(16, coord, offset, backend="torch")) for _ in range(repeats))
        default = min(_timed(lambda: knn_query(16, coord, offset)) for _ in range(repeats))
        index, dist = knn_query(16, coord, offset, backend="torch")

        def reference():
            nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(coord.numpy()))
            nns.knn_index()
            return nns.knn_search(o3d.core.Tensor(coord.numpy()), 16)

        ref = min(_timed(reference) for _ in range(repeats))
        agree = np.allclose(dist.numpy() ** 2, reference()[1].numpy(), atol=1e-6)
        rows.append(f"| {len(coord):,} | {torch_path:.2f} | {default:.3f} | {ref:.3f} | {torch_path / ref:.1f}x | "
                    f"{default / ref:.2f}x | {agree} |")
    return rows


def bench_grid(repeats: int) -> list[str]:
    import numpy as np
    import open3d as o3d
    import torch

    from spatiotemporal.layers.point_ops import grid_pool

    coord, color, _ = load_scan()
    offset = torch.tensor([len(coord)])
    ours = min(_timed(lambda: grid_pool(coord, color, offset, 0.02, reduce="mean")) for _ in range(repeats))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(coord.double().numpy()))
    cloud.colors = o3d.utility.Vector3dVector(color.double().numpy())
    ref = min(_timed(lambda: cloud.voxel_down_sample(0.02)) for _ in range(repeats))
    n_ours = len(grid_pool(coord, color, offset, 0.02)[0])
    n_ref = len(np.asarray(cloud.voxel_down_sample(0.02).points))
    return [
        "| 2 cm grid on the scan | seconds | voxels |", "|---|---|---|",
        f"| ours `grid_pool` | {ours:.3f} | {n_ours:,} |",
        f"| open3d `voxel_down_sample` | {ref:.3f} | {n_ref:,} |",
        f"| ratio ours / open3d | {ours / ref:.1f}x | (grids anchored differently) |",
    ]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args) -> str:
    quick = getattr(args, "quick", False)
    sizes = [20_000] if quick else [50_000, 100_000]
    repeats = 1 if quick else 2
    out = [
        f"Real scan `{SCAN.name}` (112,698 points, 4.5 mm spacing). Wall seconds on a shared machine; "
        "`cpu s` is this process's CPU time, steadier when other jobs compete for the cores.",
        "", "### kNN, k = 16", "", *bench_knn(sizes, repeats), "", "### Grid pooling", "", *bench_grid(repeats), "",
        "### Models: points per second", "",
        "| model | points | mode | seconds | cpu s | points/s | peak RSS (GiB) |", "|---|---|---|---|---|---|---|",
    ]
    models = ["point_transformer_tiny", "stratified_transformer_tiny"] if quick else list(MODELS)
    for name in models:
        for n in sizes:
            for mode in ("forward", "forward+backward", CHECKPOINTED):
                r = measure(name, n, mode)
                out.append(_row(r))
                print(out[-1], flush=True)
    out += ["", "### Inference on the whole scan (112,698 points, no grid sampling, one process per model)", "",
            "| model | points | mode | seconds | cpu s | points/s | peak RSS (GiB) |", "|---|---|---|---|---|---|---|"]
    for name in models:
        r = measure(name, 0, "forward")
        out.append(_row(r))
        print(out[-1], flush=True)
    out += ["", "### `spatiotemporal infer` on the scan, end to end (a fresh process per run)", "",
            "| command | seconds | CPU s | peak RSS (GiB) |", "|---|---|---|---|"]
    for name in models:
        for fragments in ("1", "0"):
            out.append(_infer_row(name, fragments))
            print(out[-1], flush=True)
    return "\n".join(out)


def _infer_row(name: str, fragments: str) -> str:
    """Runs the CLI as a user would; wall time from launch to exit, rusage of that one process."""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        args = ["infer", str(SCAN), "--model", name, "--random-weights", "--out", out, "--max-fragments", fragments]
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "spatiotemporal.cli", *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    shown = f"`spatiotemporal infer {SCAN.name} --model {name} --max-fragments {fragments}`"
    if os.waitstatus_to_exitcode(status) != 0:
        return f"| {shown} | failed: {' '.join(stderr.strip().splitlines()[-1:])} | | |"
    return f"| {shown} | {seconds:.1f} | {usage.ru_utime + usage.ru_stime:.1f} | {usage.ru_maxrss / 2**20:.2f} |"


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['points']} | {r['mode']} | failed: {r['error']} | | | |"
    return (
        f"| {r['model']} | {r['points']:,} | {r['mode']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
        f"{r['points'] / r['seconds']:,.0f} | {r['peak_rss_gib']:.2f} |"
    )


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    print(json.dumps(_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
