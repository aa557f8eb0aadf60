"""`spatiotemporal demo`: the main jobs end to end on embedded synthetic data.

1. Synthetic Kinetics (motion-only classes) -> tiny TimeSformer trained on Ray Train -> the
   Kinetics evaluator's multi-view report.
2. The trained checkpoint classifies the held-out clips in the Ray `video-inference` pipeline,
   with a truncated copy of one of them mixed in (and corrupted.mp4 when ../shared is present),
   to show failure accounting. corrupted.mp4 breaks after its 28th frame, so it fails only when
   a view needs a later frame; the demo model's 1x3 views of 8 frames every 2 do not.
3. Synthetic ScanNet -> tiny Point Transformer -> the official-semantics ScanNet report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the main jobs end to end on embedded synthetic data (train, evaluate, batch inference)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="working directory (re-running resumes)")
    parser.add_argument("--full", action="store_true", help="train longer (minutes -> tens of minutes)")
    parser.add_argument("--no-points", action="store_true", help="skip the point-cloud part")


def run(args: argparse.Namespace) -> int:
    from pipelines import video_inference
    from pipelines.job import read_table
    from spatiotemporal.train.checkpoint import MODEL_FILE, latest_checkpoint
    from spatiotemporal.train.demo import run_outputs, run_points_demo, run_video_demo

    out = Path(args.out)
    quick = not args.full
    print("== 1/3 train + evaluate tiny TimeSformer on synthetic Kinetics")
    run_video_demo(out, quick=quick)

    print("== 2/3 batch inference with the trained model (Ray video-inference pipeline)")
    checkpoint = latest_checkpoint(out / "runs" / "demo_timesformer")
    videos = sorted((out / "synthetic_kinetics").glob("val/**/*.mp4"))
    manifest = out / "inference_inputs.csv"
    inputs = [str(p.resolve()) for p in videos]
    truncated = out / "truncated.mp4"
    truncated.write_bytes(videos[0].read_bytes()[: videos[0].stat().st_size // 3])
    inputs.append(str(truncated.resolve()))
    corrupted = Path(__file__).resolve().parents[3] / "shared" / "data" / "video" / "corrupted.mp4"
    if corrupted.exists():
        inputs.append(str(corrupted))
    manifest.write_text("path\n" + "\n".join(inputs) + "\n")
    summary = video_inference.run(
        manifest,
        out / "inference",
        model="timesformer_tiny",
        checkpoint=str(checkpoint / MODEL_FILE),
        topk=2,
    )
    results, failures = read_table(summary.output), read_table(summary.output, "failures")
    print(results[["path", "labels", "probs"]].head(8).to_string(index=False))
    for row in failures.itertuples():
        print(f"FAILED {row.path}: {row.error}")

    if not args.no_points:
        print("== 3/3 train + evaluate tiny Point Transformer on synthetic ScanNet")
        run_points_demo(out, quick=quick)

    print(f"== written under {out}")
    written = [*run_outputs(out / "runs" / "demo_timesformer"), Path(summary.output)]
    if not args.no_points:
        written += run_outputs(out / "runs" / "demo_point_transformer")
    for path in written:
        print(f"  {path}{'/' if path.is_dir() else ''}")
    return 0

