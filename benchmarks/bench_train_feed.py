"""Feeding training: the Ray Data feed (`data.feed: ray`) against the torch DataLoader
(`data.feed: loader`), on a real 720p H.264 clip at TimeSformer's real input (8 frames, stride 32,
224 px crops of a 256-320 px short side).

(a) feed throughput, clips/s, with one decode CPU and with two: the feed alone, no model;
(b) training steps/s through `fit` with each feed at equal CPUs (one for the model, one decoding),
    steady state apart from each epoch's start-up;
(c) (b)'s Ray feed on a cluster of two nodes, decoding placed on the node that advertises a
    `decode` resource (a CPU-only node), training on the other.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

TITLE = "Training data feed: Ray Data feed vs torch DataLoader, real 720p clips at 8x224"

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "cockatoo.mp4"
# A TimeSformer of the real input geometry, small enough that decoding matters to its step.
MODEL_KWARGS = "{num_frames: 8, image_size: 224, patch_size: 16, embed_dim: 192, depth: 4, num_heads: 3}"
BATCH = 2


def _videos(root: Path, count: int) -> Path:
    """`count` training entries (and two for validation), each a link to the shared 720p clip:
    each sample draws its own clip from it, so every decode seeks and decodes afresh."""
    for split, n in (("train", count), ("val", 2)):
        lines = []
        for i in range(n):
            link = root / f"{split}_{i:03d}.mp4"
            link.symlink_to(SHARED_CLIP)
            lines.append(f"{link.name} {i % 2}\n")
        (root / f"{split}.txt").write_text("".join(lines))
    return root


def _config(root: Path, out: Path, name: str, *overrides: str) -> dict:
    from spatiotemporal.train.config import load_config

    return load_config(
        data={"model": {"name": "timesformer_tiny"}},
        overrides=[
            f"name={name}", f"output_dir={out}", f"data.root={root}", f"model.kwargs={MODEL_KWARGS}",
            "model.num_classes=2", "data.num_frames=8", "data.frame_stride=32", "data.crop_size=224",
            "data.short_side=256", "data.cache=false", f"data.batch_size={BATCH}", "eval.views=1x1",
            "eval.batch_size=2", "train.log_every=1", "ray.num_workers=1", "ray.resources_per_worker={CPU: 1}",
            "schedule.epochs=2", *overrides,
        ],
    )  # fmt: skip


def _feed_rate(config: dict, decode_tasks: int, count: int) -> float:
    from spatiotemporal.train.feed import RayFeed
    from spatiotemporal.train.tasks import make_task

    config = {**config, "data": {**config["data"], "decode_tasks": decode_tasks, "decode_resources": {"CPU": 1}}}
    keys = [(0, index) for index in range(count)]
    feed = RayFeed(config, keys, count, BATCH, make_task(config).collate)
    batches = iter(feed)
    next(batches)  # start-up: the stream's first batch (task start, index read)
    started = time.perf_counter()
    clips = sum(len(batch["label"]) for batch in batches)
    return clips / (time.perf_counter() - started)


def _loader_rate(config: dict, workers: int, count: int) -> float:
    import torch

    from spatiotemporal.train.sampler import SeededSamples
    from spatiotemporal.train.tasks import make_task

    task = make_task(config)
    samples = SeededSamples(task.train_set(), config["seed"])
    keys = [(0, index) for index in range(count)]
    loader = iter(torch.utils.data.DataLoader(samples, batch_size=BATCH, sampler=keys, collate_fn=task.collate,
                                              num_workers=workers))  # fmt: skip
    next(loader)
    started = time.perf_counter()
    clips = sum(len(batch["label"]) for batch in loader)
    return clips / (time.perf_counter() - started)


def _steps(run_dir: Path) -> tuple[float, list[float]]:
    """(steady steps/s, each epoch's start-up in seconds beyond a steady step) from the run's
    metrics.jsonl: one row per step, each with the training clock."""
    from spatiotemporal.train.logs import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    gaps, firsts, previous, epoch = [], [], 0.0, None
    for row in rows:
        gap = row["elapsed_s"] - previous
        previous = row["elapsed_s"]
        (firsts if row["epoch"] != epoch else gaps).append(gap)
        epoch = row["epoch"]
    steady = statistics.median(gaps)
    return 1.0 / steady, [first - steady for first in firsts]


def _train_flops_per_clip(config: dict) -> float:
    import torch

    from benchmarks.measure import forward_flops
    from spatiotemporal.train.tasks import make_task

    model = make_task(config).build_model().eval()
    clip = torch.randn(1, 3, 8, 224, 224)
    return 3.0 * forward_flops(lambda: model(clip))  # forward + backward (twice the forward)


def run(args) -> str:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from benchmarks.measure import gemm_rate
    from spatiotemporal.ray_console import quiet_ray_console
    from spatiotemporal.train.loop import fit

    count = 12 if args.quick else 24
    with tempfile.TemporaryDirectory() as tmp, quiet_ray_console():
        (Path(tmp) / "videos").mkdir()
        root = _videos(Path(tmp) / "videos", count)
        out = Path(tmp) / "runs"
        base = _config(root, out, "probe")

        # (a) the feed alone, and the DataLoader for scale, on this machine's two CPUs.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            feed = {tasks: _feed_rate(base, tasks, count) for tasks in (1, 2)}
        finally:
            ray.shutdown()
        loader = {workers: _loader_rate(base, workers, count) for workers in (0, 1)}

        # (b) training through fit, the same two CPUs split one for the model, one for decoding.
        fit(_config(root, out, "loader", "data.loader_workers=1"))
        fit(_config(root, out, "ray", "data.feed=ray", "data.decode_tasks=1"))
        steps = {name: _steps(out / name) for name in ("loader", "ray")}

        # (c) the Ray feed with decoding on a second node that advertises `decode`.
        memory = {"object_store_memory": 512 << 20}
        # The worker asks for `trainer`, which only the head offers, as a GPU worker asks for a GPU.
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"trainer": 1},
                                                                "include_dashboard": False, **memory})  # fmt: skip
        cluster.add_node(num_cpus=1, resources={"decode": 1}, **memory)
        cluster.wait_for_nodes()
        try:
            fit(_config(root, out, "placed", "data.feed=ray", "data.decode_tasks=1",
                        "data.decode_resources={CPU: 1, decode: 1}", "ray.resources_per_worker={CPU: 1, trainer: 1}"),
                address=cluster.address)  # fmt: skip
        finally:
            ray.shutdown()
            cluster.shutdown()
        steps["placed"] = _steps(out / "placed")

        flops = _train_flops_per_clip(base)
        torch.set_num_threads(1)  # the rate the training worker's one thread can reach
        roofline = gemm_rate(torch.float32)

    lines = [
        f"{count} training entries, each a link to `cockatoo.mp4` (1280x720 H.264, 20 fps, 14 s); each sample "
        f"decodes its own random clip of 8 frames 32 apart, scaled to a 256-320 px short side and cropped to 224. "
        f"Batch {BATCH}. Clips/s after each stream's first batch.",
        "",
        "(a) The feed alone (no model), on a local Ray of 2 CPUs:",
        "",
        "| feed | clips/s | ratio |",
        "|---|---|---|",
        f"| torch DataLoader, 0 workers (reference) | {loader[0]:.2f} | 1.00x |",
        f"| torch DataLoader, 1 worker | {loader[1]:.2f} | {loader[1] / loader[0]:.2f}x |",
        f"| Ray Data feed, 1 decode CPU | {feed[1]:.2f} | {feed[1] / loader[0]:.2f}x |",
        f"| Ray Data feed, 2 decode CPUs | {feed[2]:.2f} | {feed[2] / loader[0]:.2f}x |",
        "",
        f"2 decode CPUs / 1: **{feed[2] / feed[1]:.2f}x** (goal >= 1.7x).",
        "",
        "(b, c) Training through `fit`, 1 worker holding 1 CPU (1 torch thread), 2 epochs of "
        f"{count // BATCH} steps; steady state is the median step, start-up is each epoch's first step beyond it. "
        f"Tiny TimeSformer (depth 4, width 192) at 8x224: {flops / 1e9:.1f} GFLOP per training clip; this CPU's "
        f"fp32 matrix multiply on 1 thread: {roofline / 1e9:.0f} GFLOP/s.",
        "",
        "| run | steps/s | ratio to the DataLoader (goal >= 0.95x) | start-up per epoch (s) | fraction of the matmul roofline |",
        "|---|---|---|---|---|",
    ]
    names = {
        "loader": "DataLoader, 1 loader worker (reference)",
        "ray": "Ray Data feed, 1 decode CPU, one node",
        "placed": "Ray Data feed, decoding on the `decode` node of 2",
    }
    reference = steps["loader"][0]
    for key, label in names.items():
        rate, startups = steps[key]
        achieved = rate * BATCH * flops
        lines.append(
            f"| {label} | {rate:.3f} | {rate / reference:.2f}x | {', '.join(f'{s:.1f}' for s in startups)} | "
            f"{achieved / roofline:.0%} |"
        )
    lines += [
        "",
        "Both nodes of (c) are raylets on this machine, so they share its two cores: the row shows the feed "
        "working across nodes at the same cost, not the speed-up a separate decoding machine gives.",
    ]
    return "\n".join(lines)
