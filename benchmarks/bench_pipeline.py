"""video_inference throughput on synthetic clips: 2 CPU workers against 1, and against a plain
torch DataLoader + loop doing the same work (same decode, views, model, batch size).

How every setup is timed, the same way for all of them:
- cluster start-up is excluded: Ray is started once, the way a job starts it
  (`pipelines.job.ray_session`), and a warm-up job runs before any timing;
- start-up of the processes that hold the model is included: for Ray, the job's actor processes
  (interpreter, imports, model), which a job always starts afresh; for the reference, a fresh
  `python` process (interpreter, imports, model, DataLoader worker) timed from its launch to its
  last prediction;
- "after 1st" is the rate once the first result is out, i.e. with that start-up left out;
- CPU s/clip is the CPU time of every process of the setup (Ray: driver, raylet, GCS, workers,
  including their exit), a number that a busy machine disturbs much less than the rates.
Setups run interleaved, `repeats` rounds; the table keeps each setup's best (fastest) round.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TITLE = "Pipeline: video_inference throughput (clips/s)"
MODEL = "vivit_tiny"
OLD_AUTO = "ray, 2 workers, decord (the old auto)"
VIEWS = "4x3"  # vivit_tiny's test protocol, what `video-inference` runs by default
BATCH = 4
# Kinetics-like clips: 10 s, short side 256 (the size Kinetics is usually stored at). The job's
# start-up (actor processes, imports, the model) is a few seconds whatever the clip; per-clip work
# of the size users run is what a throughput figure should be about.
CLIP_SIZE, CLIP_FRAMES, CLIP_FPS = 256, 100, 10
ROOT = Path(__file__).resolve().parents[1]


def _make_clips(root: Path, count: int) -> Path:
    """`spatiotemporal prepare synthetic-kinetics`, then a manifest of its first `count` videos."""
    per_class = max(2, -(-count // 8))
    subprocess.run(
        [sys.executable, "-m", "spatiotemporal.cli", "prepare", "synthetic-kinetics", str(root / "data"),
         "--classes", "8", "--videos-per-class", str(per_class), "--val-per-class", "1", "--test-per-class", "1",
         "--frames", str(CLIP_FRAMES), "--size", str(CLIP_SIZE), "--fps", str(CLIP_FPS), "--no-preview"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    videos = sorted((root / "data").rglob("*.mp4"))[:count]
    if len(videos) < count:
        raise RuntimeError(f"synthetic-kinetics wrote {len(videos)} videos, wanted {count}")
    manifest = root / "clips.csv"
    manifest.write_text("id,path\n" + "".join(f"{p.stem},{p}\n" for p in videos))
    return manifest


def _settle(timeout_s: float = 60.0) -> None:
    """Wait for the last job's actors to exit, so their teardown is not charged to the next setup."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if "MapBatches(Predictor)" in " ".join(proc.cmdline()):
                    alive.append(proc)
            except psutil.Error:
                continue
        if not alive:
            return
        time.sleep(0.2)


def _ray_job(manifest: Path, out: Path, workers: int, backend: str = "auto") -> dict:
    from pipelines import video_inference
    from spatiotemporal.train.process_cpu import ProcessTreeCPU

    _settle()
    with ProcessTreeCPU() as cpu:
        summary = video_inference.run(manifest, out, model=MODEL, random_weights=True, views=VIEWS, workers=workers,
                                      batch_size=BATCH, backend=backend, resume=False, progress=False)
        _settle()  # the actors' exit is part of the job's CPU cost, not the next setup's
    assert summary.failed == 0, f"{summary.failed} clips failed"
    return {"seconds": summary.seconds, "first_s": summary.extra["first_output_s"], "count": summary.ok,
            "first_count": BATCH, "cpu_s": cpu.seconds, "precisions": precisions_run(out)}


def precisions_run(out: Path) -> list[str]:
    """The precisions a job's actors ran in, from its results' precision column: what `auto`
    chose where the model ran (each actor probes at its own thread count)."""
    import pandas as pd

    return sorted(set(pd.read_parquet(out / "results", columns=["precision"])["precision"]))


def _reference(manifest: Path) -> dict:
    """The reference in a fresh interpreter, timed from launch to its last prediction."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline", "--reference", str(manifest)],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the reference exited with {done.returncode}: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the process and its DataLoader worker
    report = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"seconds": report["end"] - launched, "first_s": report["first"] - launched, "count": report["count"],
            "first_count": report["first_count"], "cpu_s": cpu, "precisions": [report["precision"]]}


class _Clips:
    def __init__(self, paths: list[str], recipe):
        self.paths, self.recipe = paths, recipe

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        from spatiotemporal.infer import clip_views

        return torch.from_numpy(clip_views(self.paths[index], self.recipe))


def _dataloader_loop(manifest: str, num_workers: int = 1) -> dict:
    """The reference: a DataLoader decoding in one worker process, the model in the main process
    with the cores the worker leaves (DataLoader workers run torch on one thread)."""
    import pandas as pd
    import torch

    from spatiotemporal.infer import VideoClassifier

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - num_workers))
    classifier = VideoClassifier(MODEL, views=VIEWS, device="cpu", random_weights=True)
    paths = list(pd.read_csv(manifest)["path"])
    loader = torch.utils.data.DataLoader(_Clips(paths, classifier.recipe), batch_size=BATCH, num_workers=num_workers)
    done, first, first_count = 0, None, 0
    for views in loader:
        classifier.predict_views(views.numpy(), topk=5)
        done += len(views)
        if first is None:
            first, first_count = time.time(), done
    return {"end": time.time(), "first": first, "count": done, "first_count": first_count,
            "precision": classifier.precision}


def _rate(run: dict) -> tuple[float, float]:
    """(clips/s for the whole run, clips/s after the first result)."""
    steady = (run["count"] - run["first_count"]) / max(run["seconds"] - run["first_s"], 1e-9)
    return run["count"] / run["seconds"], steady


def run(args) -> str:
    from pipelines.job import ray_session

    quick = getattr(args, "quick", False)
    count, repeats = (40, 1) if quick else (200, 2)
    load_before = os.getloadavg()
    # The decoder `auto` used before it measured its order (decord first), beside today's `auto`.
    setups = ("ray, 1 worker", "ray, 2 workers", OLD_AUTO, "DataLoader + loop")
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        root = Path(tmp)
        manifest = _make_clips(root, count)
        with ray_session(num_cpus=os.cpu_count()):
            # Warm-up: Ray's own actors and the driver's imports are a one-off per cluster.
            _ray_job(manifest, root / "warm", workers=2)
            for round_ in range(repeats):
                runs["ray, 1 worker"].append(_ray_job(manifest, root / f"w1-{round_}", workers=1))
                runs["ray, 2 workers"].append(_ray_job(manifest, root / f"w2-{round_}", workers=2))
                runs[OLD_AUTO].append(_ray_job(manifest, root / f"w2d-{round_}", workers=2, backend="decord"))
                runs["DataLoader + loop"].append(_reference(manifest))
    best = {name: max(rounds, key=lambda r: r["count"] / r["seconds"]) for name, rounds in runs.items()}
    rates = {name: _rate(r) for name, r in best.items()}
    scaling = rates["ray, 2 workers"][0] / rates["ray, 1 worker"][0]
    versus = rates["ray, 2 workers"][0] / rates["DataLoader + loop"][0]
    scaling_steady = rates["ray, 2 workers"][1] / rates["ray, 1 worker"][1]
    versus_steady = rates["ray, 2 workers"][1] / rates["DataLoader + loop"][1]
    new_auto = rates["ray, 2 workers"][0] / rates[OLD_AUTO][0]
    new_auto_steady = rates["ray, 2 workers"][1] / rates[OLD_AUTO][1]
    load_after = os.getloadavg()
    # What `auto` chose where the model ran (each process probes at its own thread count): the
    # results' precision column for Ray, the reference's classifier for the loop.
    precision = "; ".join(f"{name}: {' + '.join(sorted({p for r in rounds for p in r['precisions']}))}"
                          for name, rounds in runs.items())
    lines = [
        f"{count} synthetic clips ({CLIP_SIZE}x{CLIP_SIZE}, {CLIP_FRAMES} frames at {CLIP_FPS} fps), `{MODEL}`, "
        f"views {VIEWS}, batch {BATCH}, CPU, precision auto in every setup (chosen: {precision}); "
        f"best of {repeats} interleaved round(s). Ray: each worker is one actor that decodes its batch and "
        "runs the model on one thread (one core). Reference: `DataLoader(num_workers=1)` decoding, the model "
        "in the main process on the remaining core(s).",
        "Timed alike: cluster start-up excluded (Ray started once, warm-up job first); start-up of the "
        "processes that hold the model included (Ray: the job's actors; reference: a fresh python process, "
        "from launch to its last prediction). *after 1st* leaves that start-up out: the rate once the first "
        "result is out.",
        "",
        "| setup | clips/s | first result (s) | clips/s after 1st | CPU s/clip (all processes) |",
        "|---|---|---|---|---|",
        *[f"| {name} | {rates[name][0]:.2f} | {best[name]['first_s']:.1f} | {rates[name][1]:.2f} | "
          f"{1000 * best[name]['cpu_s'] / best[name]['count']:.0f} ms |" for name in setups],
        "",
        f"- 2 workers vs 1: **{scaling:.2f}x** (target >= 1.7x); after the first result {scaling_steady:.2f}x",
        f"- ray 2 workers vs DataLoader + loop: **{versus:.2f}x** (target >= 1.0x); after the first result "
        f"{versus_steady:.2f}x",
        f"- decoding: `auto` (PyAV first) against decord, the old `auto`, both with 2 workers: **{new_auto:.2f}x**; "
        f"after the first result {new_auto_steady:.2f}x",
        f"- load average before {', '.join(f'{x:.1f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.1f}' for x in load_after)} (on a busy machine the rates mean little; CPU s/clip less so)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reference":
        print(json.dumps(_dataloader_loop(sys.argv[2])))
    else:
        sys.exit("usage: python -m benchmarks.bench_pipeline --reference MANIFEST (run.py runs the section)")
