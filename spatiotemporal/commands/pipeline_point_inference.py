"""`spatiotemporal pipeline point-inference`: per-vertex predictions for many scans on Ray."""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import add_job_arguments, error_types, job_kwargs
from spatiotemporal.commands.weights import add_weights_arguments

HELP = "segment many PLYs / ScanNet scenes on Ray: submission txt + Parquet, resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    add_weights_arguments(parser)
    parser.add_argument("--voxel-size", type=float, default=None,
                        help="grid size in metres (default: the one the model was trained with)")
    parser.add_argument("--max-fragments", type=int, default=1, help="test fragments per scan to vote over (0 = all)")
    parser.add_argument("--workers", type=int, default=1, help="inference actors")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args: argparse.Namespace) -> int:
    from pipelines import point_inference

    try:
        summary = point_inference.run(
            args.input, args.output, model=args.model, checkpoint=args.checkpoint, voxel_size=args.voxel_size,
            weights=args.weights, random_weights=args.random_weights,
            max_fragments=args.max_fragments, workers=args.workers, device=args.device, **job_kwargs(args),
        )
    except error_types() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
