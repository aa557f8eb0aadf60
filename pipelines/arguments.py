"""Command-line options every pipeline job shares (argparse only, so `--help` stays fast)."""

from __future__ import annotations

import argparse


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a directory, a glob, or a manifest (.csv/.jsonl/.parquet with a path column and optional id)")
    parser.add_argument("--output", required=True, help="OUTDIR: results/ and failures/ Parquet tables, summary.json")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray started by the job")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="redo every listed input: their earlier rows in OUTDIR's results/ and failures/ are "
                             "removed first (rows of inputs not listed stay). By default inputs already in OUTDIR "
                             "(same id and path) are skipped, and an id held there for another file is an error")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry the listed inputs that are in the failures table (other failures stay)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the summary line still prints)")


def error_types() -> tuple[type[BaseException], ...]:
    """Errors a pipeline command reports as one `error:` line with exit code 2: a bad listing or
    argument, an OUTDIR conflict, or a job the plan aborted (its failures and summary written)."""
    from pipelines.inputs import ManifestError
    from pipelines.job import JobAborted

    return (ManifestError, ValueError, FileNotFoundError, JobAborted)


def job_kwargs(args: argparse.Namespace) -> dict:
    return {
        "resume": args.resume,
        "retry_failed": args.retry_failed,
        "address": args.address,
        "num_cpus": args.num_cpus,
        "progress": not args.quiet,
    }
