"""`spatiotemporal pipeline video-inference`: top-k predictions for many videos on Ray."""

from __future__ import annotations

import argparse
import sys

from pipelines.arguments import add_job_arguments, error_types, job_kwargs
from spatiotemporal.commands.weights import add_weights_arguments
from spatiotemporal.precision import PRECISIONS

HELP = "classify many videos on Ray (decode tasks + model actor pool), resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    add_weights_arguments(parser)
    parser.add_argument("--views", default=None, help="TxS test views (default: the model's protocol)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--embed", action="store_true", help="also store each video's embedding vector")
    parser.add_argument("--workers", type=int, default=1, help="inference actors")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="bf16 autocast or fp32 (default auto: bf16 on GPUs that support it, and on CPUs "
                             "where a short cached probe times it clearly faster than fp32 at the model's shapes)")
    parser.add_argument("--backend", default="auto",
                        help="video decoder: auto (PyAV, then decord, then torchcodec for a file the one before "
                             "fails on), or pyav, decord, torchcodec alone")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds one video's frames may take to decode, with PyAV or decord (default 30); "
                             "a video past it is recorded as failed")



def run(args: argparse.Namespace) -> int:
    from pipelines import video_inference

    try:
        summary = video_inference.run(
            args.input, args.output, model=args.model, checkpoint=args.checkpoint, views=args.views,
            weights=args.weights, random_weights=args.random_weights,
            topk=args.topk, embed=args.embed, workers=args.workers, batch_size=args.batch_size,
            device=args.device, precision=args.precision, timeout_s=args.timeout,
            backend=args.backend, **job_kwargs(args),
        )
    except error_types() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
