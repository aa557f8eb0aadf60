"""video_inference throughput on synthetic clips: 2 inference workers against 1, and against a
plain torch DataLoader + loop doing the same work (same decode, views, model, batch size)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TITLE = "Pipeline: video_inference throughput (clips/s)"
MODEL = "vivit_tiny"
VIEWS = "1x1"
BATCH = 4


def _make_clips(root: Path, count: int) -> Path:
    """`spatiotemporal prepare synthetic-kinetics`, then a manifest of its first `count` videos."""
    per_class = max(2, -(-count // 8))
    subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "prepare", "synthetic-kinetics", str(root / "data"),
         "--classes", "8", "--videos-per-class", str(per_class), "--frames", "32", "--size", "64", "--no-preview"],
        check=True, stdout=subprocess.DEVNULL,
    )
    videos = sorted((root / "data").rglob("*.mp4"))[:count]
    if len(videos) < count:
        raise RuntimeError(f"synthetic-kinetics wrote {len(videos)} videos, wanted {count}")
    manifest = root / "clips.csv"
    manifest.write_text("id,path\n" + "".join(f"{p.stem},{p}\n" for p in videos))
    return manifest


def _ray_job(manifest: Path, out: Path, workers: int) -> float:
    from pipelines import video_inference

    summary = video_inference.run(manifest, out, model=MODEL, views=VIEWS, workers=workers, batch_size=BATCH,
                                  resume=False, progress=False)
    assert summary.failed == 0, f"{summary.failed} clips failed"
    return summary.ok / summary.seconds


class _Clips:
    def __init__(self, paths: list[str], recipe):
        self.paths, self.recipe = paths, recipe

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        from spatiotemporal.infer import clip_views

        return torch.from_numpy(clip_views(self.paths[index], self.recipe))


def _dataloader_loop(manifest: Path) -> float:
    """The reference: one process, a DataLoader decoding in one worker process, the model in the
    main process with the box's threads."""
    import pandas as pd
    import torch

    from spatiotemporal.infer import VideoClassifier

    start = time.perf_counter()
    classifier = VideoClassifier(MODEL, views=VIEWS, device="cpu")
    paths = list(pd.read_csv(manifest)["path"])
    loader = torch.utils.data.DataLoader(_Clips(paths, classifier.recipe), batch_size=BATCH, num_workers=1)
    done = 0
    for views in loader:
        classifier.predict_views(views.numpy(), topk=5)
        done += len(views)
    return done / (time.perf_counter() - start)


def run(args) -> str:
    import ray

    count = 40 if getattr(args, "quick", False) else 200
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        root = Path(tmp)
        manifest = _make_clips(root, count)
        rates: dict[str, float] = {}
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, object_store_memory=1 << 30)
        try:
            # Warm-up: worker processes and imports are a one-off per cluster, not per job.
            _ray_job(manifest, root / "warm", workers=2)
            rates["ray, 1 worker"] = _ray_job(manifest, root / "w1", workers=1)
            rates["ray, 2 workers"] = _ray_job(manifest, root / "w2", workers=2)
        finally:
            ray.shutdown()
        rates["DataLoader + loop"] = _dataloader_loop(manifest)
    scaling = rates["ray, 2 workers"] / rates["ray, 1 worker"]
    versus = rates["ray, 2 workers"] / rates["DataLoader + loop"]
    lines = [
        f"{count} synthetic clips (64x64, 32 frames), `{MODEL}`, views {VIEWS}, batch {BATCH}, CPU. "
        "Throughput counts the whole job (listing, decode tasks, actor start-up, writing Parquet).",
        "",
        "| setup | clips/s |",
        "|---|---|",
        *[f"| {name} | {rate:.2f} |" for name, rate in rates.items()],
        "",
        f"- 2 workers vs 1: **{scaling:.2f}x** (target >= 1.7x)",
        f"- ray 2 workers vs DataLoader + loop: **{versus:.2f}x** (target >= 1.0x)",
    ]
    return "\n".join(lines)
