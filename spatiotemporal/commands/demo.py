"""`spatiotemporal demo`: the main jobs end to end on embedded synthetic data, ending in one summary.

1. Synthetic Kinetics (motion-only classes) -> tiny TimeSformer trained on Ray Train -> the
   Kinetics evaluator's multi-view report and confusion matrix.
2. The trained checkpoint classifies the held-out clips, the real clips of ../shared/data/video and
   a truncated copy of a clip in the Ray `video-inference` pipeline, to show failure accounting.
   corrupted.mp4 breaks after its 28th frame, so it fails only when a view needs a later frame;
   the demo model's views of 8 frames every 2 do not. Each budget predicts into its own folder,
   `inference_<budget>`, which a re-run resumes only if its checkpoint is still the one it was made with.
3. Synthetic ScanNet -> tiny Point Transformer -> the official-semantics ScanNet report and a
   rendered scene.

`--quick` runs the same stages on a smoke budget (see train/demo.py: QUICK).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

HELP = "train tiny video and point models on synthetic data, evaluate them and run batch inference (minutes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory (re-running resumes)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every stage (about 2 minutes); its figures are at chance"
    )
    parser.add_argument("--no-points", action="store_true", help="skip the point-cloud part")


@dataclass
class Stage:
    title: str
    result: str
    wall_s: float
    cpu_s: float


def shared_videos() -> list[Path]:
    """The real clips beside the project (../shared/data/video, or SPATIOTEMPORAL_SHARED_DATA/video)."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    folder = Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", default)) / "video"
    return sorted(p for p in folder.glob("*") if p.suffix in {".mp4", ".mkv", ".mov", ".webm", ".avi"}) if folder.is_dir() else []


def _timed(title: str, work) -> tuple[object, Stage]:
    from spatiotemporal.train.process_cpu import ProcessTreeCPU

    print(f"== {title}", flush=True)
    with ProcessTreeCPU() as cpu:
        value, result = work()
    return value, Stage(title, result, cpu.wall, cpu.seconds)


def _inference_inputs(folder: Path, data: Path, shared: list[Path]) -> tuple[Path, dict[str, str]]:
    """The manifest of the inference stage, written in `folder` with the truncated copy of a clip,
    and the true class of each held-out clip in it."""
    import csv

    from spatiotemporal.data.kinetics import read_kinetics_csv

    truth = {str(Path(r.path).resolve()): r.label for r in read_kinetics_csv(data / "validate.csv", data) if r.path}
    inputs = sorted(truth)
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.mp4"
    first = Path(inputs[0])
    truncated.write_bytes(first.read_bytes()[: first.stat().st_size // 3])
    inputs += [str(p.resolve()) for p in shared] + [str(truncated.resolve())]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([["path"], *([path] for path in inputs)])
    return manifest, truth


def inference_folder(out: Path, budget_name: str) -> Path:
    """Each budget's predictions have their own folder: a quick demo's never stand for a learning one's."""
    return Path(out) / f"inference_{budget_name}"


def inference_report(folder: Path, manifest: Path, truth: dict[str, str]) -> list[str]:
    """The stage's figures over the manifest's inputs only: counted from the tables, so inputs done
    by an earlier (resumed) run count, and rows of inputs the manifest no longer lists do not."""
    from pipelines.inputs import list_inputs
    from pipelines.job import read_table

    ids = {item.id for item in list_inputs(manifest)}
    results, failures = read_table(folder), read_table(folder, "failures")
    results, failures = results[results["id"].isin(ids)], failures[failures["id"].isin(ids)]
    top1 = {row.path: list(row.labels)[0] for row in results.itertuples()}
    right = sum(top1.get(path) == label for path, label in truth.items())
    predicted = list(top1.values())
    return [
        f"{len(results)} ok, {len(failures)} failed of {len(ids)} inputs; "
        f"top-1 {right / len(truth):.3f} on the {len(truth)} held-out clips",
        "predicted: " + ", ".join(f"{name} {predicted.count(name)}" for name in sorted(set(predicted))),
        *(f"failed: {Path(row.path).name}: {row.error}" for row in failures.itertuples()),
    ]


def run_inference_stage(out: Path, budget_name: str, data: Path, model: str, checkpoint: Path, shared: list[Path]):
    """Batch inference with the trained checkpoint over the held-out clips of `data`, the `shared`
    real clips and a truncated clip; returns (the job's summary, the stage's report lines)."""
    from pipelines import video_inference
    from pipelines.job import JobIdentityError

    manifest, truth = _inference_inputs(Path(out) / f"inference_inputs_{budget_name}", Path(data), shared)
    folder = inference_folder(out, budget_name)
    predict = dict(model=model, checkpoint=str(checkpoint), topk=2)
    try:
        summary = video_inference.run(manifest, folder, **predict)
    except JobIdentityError:
        # The folder's predictions were made with another checkpoint (the model was trained again):
        # all of them are made again with this one.
        summary = video_inference.run(manifest, folder, resume=False, **predict)
    return summary, inference_report(folder, manifest, truth)


def run(args: argparse.Namespace) -> int:
    from spatiotemporal.convert import read_checkpoint_meta
    from spatiotemporal.train.checkpoint import MODEL_FILE, latest_checkpoint
    from spatiotemporal.train.demo import LEARN, QUICK, points_run_name, run_outputs, run_points_demo, run_video_demo

    budget = QUICK if args.quick else LEARN
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    started = time.perf_counter()

    def video():
        config, final = run_video_demo(out, budget)
        checkpoint = latest_checkpoint(Path(config["output_dir"]) / config["name"]) / MODEL_FILE
        chance = 1 / read_checkpoint_meta(str(checkpoint))["num_classes"]  # a uniform guess's top-1
        return (config, checkpoint), f"top-1 {final['top1']:.3f} on {final['num_evaluated']} held-out clips (chance {chance:.2f})"

    n_stages = 2 if args.no_points else 3
    (config, checkpoint), stage = _timed(f"1/{n_stages} train + evaluate tiny {budget.video_config.split('_')[0]} on motion-only synthetic Kinetics", video)
    stages.append(stage)
    video_run = Path(config["output_dir"]) / config["name"]

    def inference():
        summary, lines = run_inference_stage(
            out, budget.name, Path(config["data"]["root"]), config["model"]["name"], checkpoint, shared_videos()
        )
        return summary, "\n    ".join(lines)

    summary, stage = _timed(f"2/{n_stages} batch inference with the trained model (Ray video-inference pipeline)", inference)
    stages.append(stage)
    written = [*run_outputs(video_run), Path(summary.output)]

    if not args.no_points:
        def points():
            config, final = run_points_demo(out, budget)
            return config, f"mIoU {final['miou']:.3f} (official ScanNet semantics) on the held-out rooms"

        config, stage = _timed(f"3/{n_stages} train + evaluate tiny Point Transformer on synthetic ScanNet rooms", points)
        stages.append(stage)
        written += run_outputs(Path(config["output_dir"]) / points_run_name(budget))

    print(f"\n== demo summary ({budget.name} budget, {os.cpu_count()} CPU cores, {time.perf_counter() - started:.0f} s in all)")
    for stage in stages:
        print(f"{stage.title}: {stage.wall_s:.0f} s wall, {stage.cpu_s:.0f} CPU s\n    {stage.result}")
    if budget.at_chance:
        print("quick run: each model trained for seconds, so its figures are at chance by design; "
              "`spatiotemporal demo` without --quick trains them to learn (minutes)")  # fmt: skip
    pictures = [p for p in written if p.suffix == ".png"]
    tables = [p for p in written if p.suffix in {".md", ".jsonl"} or p == Path(summary.output)]
    print("pictures:\n" + "\n".join(f"  {p}" for p in pictures))
    print("reports and tables:\n" + "\n".join(f"  {p}{'/' if p.is_dir() else ''}" for p in tables))
    return 0
