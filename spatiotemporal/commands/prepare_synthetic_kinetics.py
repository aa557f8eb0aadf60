"""`spatiotemporal prepare synthetic-kinetics OUT`: a Kinetics-format dataset of motion-only classes."""

from __future__ import annotations

import argparse

HELP = "write a synthetic Kinetics-format dataset (CSVs + h264 mp4) whose classes differ only in motion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (train.csv, validate.csv, test.csv, classes.json, videos)")
    parser.add_argument("--classes", type=int, default=None, help="the first N motions as classes, 2-12 (default 8)")
    parser.add_argument("--motions", default=None,
                        help="the classes by name, comma-separated, instead of --classes; 'kinds' = one motion of "
                        "each kind, none the reverse of another (what the tiny configs train on)")
    parser.add_argument("--videos-per-class", type=int, default=12, help="training videos per class (default 12)")
    parser.add_argument("--val-per-class", type=int, default=None, help="default: a quarter of the training count, >= 2")
    parser.add_argument("--test-per-class", type=int, default=None, help="default: as validation")
    parser.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    parser.add_argument("--size", type=int, default=64, help="frame width and height in pixels, even (default 64)")
    parser.add_argument("--fps", type=int, default=10, help="frame rate written in the files (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same dataset (default 0)")
    parser.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18)")
    parser.add_argument("--no-preview", action="store_true", help="do not write preview.png")


def _motions(arg: str | None) -> tuple[str, ...]:
    from spatiotemporal.data.synthetic_kinetics import MOTION_KINDS

    if not arg:
        return ()
    return MOTION_KINDS if arg.strip() == "kinds" else tuple(m.strip() for m in arg.split(","))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spatiotemporal.data.synthetic_kinetics import (
        SyntheticKineticsConfig,
        generate_synthetic_kinetics,
        write_preview,
    )

    if args.classes is not None and args.motions:
        # The config refuses the pair too; this says it in the flags' names.
        print("error: give --classes (the first N motions) or --motions (the classes by name), not both")
        return 2
    try:
        config = SyntheticKineticsConfig(
            classes=args.classes,
            videos_per_class=args.videos_per_class,
            val_per_class=args.val_per_class,
            test_per_class=args.test_per_class,
            frames=args.frames,
            size=args.size,
            fps=args.fps,
            seed=args.seed,
            crf=args.crf,
            motions=_motions(args.motions),
        )
    except ValueError as error:
        print(f"error: {error}")
        return 2
    result = generate_synthetic_kinetics(args.out, config)
    counts = ", ".join(f"{split} {n}" for split, n in result.counts.items())
    print(f"wrote {sum(result.counts.values())} videos ({counts}) of {len(result.classes)} classes to {result.root} "
          f"in {result.seconds:.1f} s")
    if not args.no_preview:
        print(f"preview: {write_preview(args.out, config, Path(args.out) / 'preview.png')}")
    return 0
