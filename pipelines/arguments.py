"""Command-line options every pipeline job shares (argparse only, so `--help` stays fast)."""

from __future__ import annotations

import argparse


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a directory, a glob, or a manifest (.csv/.jsonl/.parquet with a path column and optional id)")
    parser.add_argument("--output", required=True, help="OUTDIR: results/ and failures/ Parquet tables, summary.json")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray started by the job")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="redo inputs already in OUTDIR")
    parser.add_argument("--retry-failed", action="store_true", help="retry inputs listed in the failures table")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the summary line still prints)")


def job_kwargs(args: argparse.Namespace) -> dict:
    return {
        "resume": args.resume,
        "retry_failed": args.retry_failed,
        "address": args.address,
        "num_cpus": args.num_cpus,
        "progress": not args.quiet,
    }
