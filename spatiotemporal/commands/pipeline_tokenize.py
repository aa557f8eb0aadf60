"""`spatiotemporal pipeline tokenize`: clips -> tubelet/patch tokens, scans -> point tokens."""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import add_job_arguments, error_types, job_kwargs

HELP = "decode clips and scans into model-ready token shards (safetensors) on Ray, resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="crop size (short side resized to it first)")
    parser.add_argument("--tubelet", default="2x16x16", help="TxHxW; 1x16x16 gives per-frame patches")
    parser.add_argument("--voxel-size", type=float, default=0.02)
    parser.add_argument("--shard-rows", type=int, default=64, help="inputs per shard")


def run(args: argparse.Namespace) -> int:
    from pipelines import tokenize

    try:
        summary = tokenize.run(
            args.input, args.output, frames=args.frames, stride=args.stride, size=args.size,
            tubelet=args.tubelet, voxel_size=args.voxel_size, shard_rows=args.shard_rows, **job_kwargs(args),
        )
    except error_types() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
