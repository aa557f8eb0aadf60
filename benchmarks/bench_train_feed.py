"""Feeding the training loop: torch DataLoader (decode per sample, or decoded-once cache) against a
Ray Data stream running the same decode + transform, in clips per second, on synthetic Kinetics."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

TITLE = "Training data feed: torch DataLoader vs Ray Data stream (clips/s)"


def _clips_per_second(iterable, count_of) -> float:
    started = time.perf_counter()
    n = sum(count_of(item) for item in iterable)
    return n / (time.perf_counter() - started)


def run(args) -> str:
    import numpy as np
    import ray
    import torch

    from spatiotemporal.data.synthetic_kinetics import SyntheticKineticsConfig, generate_synthetic_kinetics
    from spatiotemporal.train.config import load_config
    from spatiotemporal.train.sampler import SeededSamples
    from spatiotemporal.train.tasks import CachedClips, VideoTask

    per_class = 4 if args.quick else 16
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic_kinetics(root, SyntheticKineticsConfig(classes=4, videos_per_class=per_class, frames=16, size=32), progress=False)
        config = load_config(
            Path(__file__).resolve().parents[1] / "configs" / "timesformer_tiny_synthetic_kinetics.yaml",
            [f"data.root={root}", "data.cache=false"],
        )
        task = VideoTask(config)
        dataset = task.train_set()
        keys = [(0, i) for i in range(len(dataset))]
        rows = []

        def loader(ds, workers):
            return torch.utils.data.DataLoader(
                SeededSamples(ds, 0), batch_size=8, sampler=keys, collate_fn=task.collate, num_workers=workers
            )

        batch_count = lambda batch: len(batch["label"])  # noqa: E731
        rows.append(("torch DataLoader, decode per sample, 0 workers", _clips_per_second(loader(dataset, 0), batch_count)))
        # The same read with decord, which `auto` tried first before it followed the measured order.
        old_auto = copy.copy(dataset)
        old_auto.backend = "decord"
        rows.append(("torch DataLoader, decode per sample, 0 workers, decord (the old auto)",
                     _clips_per_second(loader(old_auto, 0), batch_count)))
        rows.append(("torch DataLoader, decode per sample, 1 worker", _clips_per_second(loader(dataset, 1), batch_count)))
        cached = CachedClips(dataset)
        list(loader(cached, 0))  # first epoch fills the cache
        rows.append(("torch DataLoader, decoded-once cache (epoch 2+), 0 workers", _clips_per_second(loader(cached, 0), batch_count)))

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            def decode(row: dict) -> dict:
                dataset.set_epoch(0)
                sample = dataset[int(row["index"])]
                return {"video": sample["video"].numpy(), "label": np.int64(sample["label"])}

            stream = ray.data.from_items([{"index": i} for i in range(len(dataset))]).map(decode)
            batches = stream.iter_torch_batches(batch_size=8)
            rows.append(("Ray Data stream (map decode, iter_torch_batches)", _clips_per_second(batches, lambda b: len(b["label"]))))
        finally:
            ray.shutdown()

    reference = rows[0][1]
    lines = [f"{len(keys)} clips of 8x32x32 (tiny TimeSformer input), batch 8; ratio against the first row.", "",
             "| feed | clips/s | ratio |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {name} | {rate:.1f} | {rate / reference:.2f}x |" for name, rate in rows]
    return "\n".join(lines)
