"""`spatiotemporal pipeline video-inference`: top-k predictions for many videos on Ray."""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import add_job_arguments, error_types, job_kwargs
from spatiotemporal.precision import PRECISIONS

HELP = "classify many videos on Ray (decode tasks + model actor pool), resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--views", default=None, help="TxS test views (default: the model's protocol)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--embed", action="store_true", help="also store each video's embedding vector")
    parser.add_argument("--workers", type=int, default=1, help="inference actors")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="bf16 autocast or fp32 (default auto: bf16 where the workers' device has native bf16)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-video decode timeout (s)")


def run(args: argparse.Namespace) -> int:
    from pipelines import video_inference

    try:
        summary = video_inference.run(
            args.input, args.output, model=args.model, checkpoint=args.checkpoint, views=args.views,
            topk=args.topk, embed=args.embed, workers=args.workers, batch_size=args.batch_size,
            device=args.device, precision=args.precision, timeout_s=args.timeout, **job_kwargs(args),
        )
    except error_types() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
