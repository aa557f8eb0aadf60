"""Command-line options every pipeline job shares (argparse only, so `--help` stays fast)."""

from __future__ import annotations

import argparse
import math

# Here rather than in pipelines.job, so that `--help` need not import the job machinery.
DEFAULT_STALL_TIMEOUT_S = 900.0


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a directory, a glob, or a manifest (.csv/.jsonl/.parquet with a path column and optional id)")
    parser.add_argument("--output", required=True, help="OUTDIR: results/ and failures/ Parquet tables, summary.json")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. auto or host:6379)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray started by the job")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="redo every listed input: their earlier rows in OUTDIR's results/ and failures/ are "
                             "removed once the job has started (rows of inputs not listed stay, unless OUTDIR's "
                             "job.json says another model or setting made them: then every earlier row goes; a job "
                             "refused at its start, such as --device cuda on a cluster without GPUs, removes none). "
                             "By default inputs already in OUTDIR (same id and path) are skipped, an id held there "
                             "for another file is an error, and so is resuming rows another model or setting made")
    parser.add_argument("--retry-failed", action="store_true",
                        help="retry the listed inputs that are in the failures table (other failures stay)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the summary line still prints)")
    parser.add_argument("--stall-timeout", type=_seconds, default=DEFAULT_STALL_TIMEOUT_S, metavar="SECONDS",
                        help="stop when the job has made no progress for this long (a cluster that lost the "
                             "workers or resources the job needs) and record the unfinished inputs as failures, to "
                             "redo with --retry-failed; leave room for workers to start and load the model, and for "
                             f"the slowest single input (default {DEFAULT_STALL_TIMEOUT_S:g}; "
                             "YAML key stall_timeout_s)")


def stall_seconds(value, name: str = "stall_timeout_s") -> float:
    """A stall timeout is a finite number of seconds > 0 (0 would give up at once)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return seconds


def _seconds(text: str) -> float:
    try:
        return stall_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None


def error_types() -> tuple[type[BaseException], ...]:
    """Errors a pipeline command reports as one `error:` line with exit code 2: a bad listing or
    argument, an OUTDIR conflict, or a job the plan aborted (its failures and summary written)."""
    from pipelines.inputs import ManifestError
    from pipelines.job import JobAborted

    return (ManifestError, ValueError, FileNotFoundError, JobAborted)


def job_kwargs(args: argparse.Namespace) -> dict:
    """The job's keyword arguments from the shared options.

    A cluster to join (--address, else RAY_ADDRESS) is checked here, as the command builds the
    job's call: one line before the job checks its model, prints its notes and loads torch
    (seconds on a busy machine). `run_job` checks again for library callers, before OUTDIR is
    touched, and `start_ray` as it joins: a GCS that is up answers in milliseconds.
    """
    from spatiotemporal.cluster import cluster_to_join

    cluster_to_join(args.address)
    return {
        "resume": args.resume,
        "retry_failed": args.retry_failed,
        "address": args.address,
        "num_cpus": args.num_cpus,
        "progress": not args.quiet,
        "stall_timeout_s": args.stall_timeout,
    }
