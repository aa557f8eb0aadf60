"""`spatiotemporal pipeline run CONFIG [key=value ...]`: run a job described by a YAML file."""

from __future__ import annotations

import argparse
import sys

HELP = "run a pipeline job from a YAML config, with key=value overrides"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML with `job:` (video_inference, point_inference, tokenize) and its arguments")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. input=videos/ output=out workers=2")


def run(args: argparse.Namespace) -> int:
    from pipelines.arguments import error_types
    from pipelines.config import run_config

    try:
        summary = run_config(args.config, args.overrides)
    except error_types() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.failed else 0
