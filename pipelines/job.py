"""The machinery every batch job shares: Ray session, resume, exactly-once accounting, shards,
progress and the end summary.

A job is a plan: a function from a Ray Dataset of `{id, path}` rows to a Dataset whose rows carry
`id`, `path`, `error` ("" on success) and the job's own result columns. `run_job` streams that
plan's output through the driver, which alone writes OUTDIR, so shards never collide and every
input lands exactly once in `results/` or `failures/`:

    OUTDIR/results/part-<run>-<k>.parquet      one row per finished input
    OUTDIR/failures/part-<run>-<k>.parquet     id, path, error
    OUTDIR/tokens/part-<run>-<k>.safetensors   tensors of jobs that make them (tokenize), named
                                               by each row's tensor_file and tensor_keys
    OUTDIR/summary.json                        the last run's counts and throughput

results/ and failures/ hold only Parquet, so either folder reads whole with any Parquet reader
(`pandas.read_parquet(OUTDIR / "results")`). Shards are written atomically (a hidden temp file,
which Parquet readers skip, then a rename), so a run killed mid-way leaves only whole shards
behind, and the next run resumes from them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.arguments import DEFAULT_STALL_TIMEOUT_S, stall_seconds
from pipelines.errors import one_line_error
from pipelines.inputs import InputItem, ManifestError
from spatiotemporal.cluster import ClusterJoinError, cluster_address, cluster_to_join, start_ray
from spatiotemporal.ray_console import quiet_ray_data

# A result column holding serialized safetensors bytes; the writer unpacks it into a shard file
# in PAYLOAD_DIR, beside results/ rather than in it.
PAYLOAD = "payload"
PAYLOAD_DIR = "tokens"
DEVICES = ("auto", "cpu", "cuda")
# Every block of the pending dataset costs the driver about a millisecond to build and another
# ten or so to schedule as a task (240,000 inputs in 60,000 blocks of 4: 74 s and 370 MiB before
# the first task). 2000 blocks still give a large cluster many per core to balance, while a small
# job keeps its own small blocks.
MAX_PENDING_BLOCKS = 2000


@dataclass
class JobSummary:
    job: str
    total: int
    ok: int
    failed: int
    skipped: int
    seconds: float
    output: str
    extra: dict[str, Any] = field(default_factory=dict)
    # Successful inputs per value of the result columns a job asked to count (`run_job(tally=...)`).
    tally: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Inputs finished (ok or failed) per second in this run."""
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        # Most common value first, ties by name: the same line for the same run, however rows arrived.
        counted = "".join(
            f"; {column}: " + ", ".join(
                f"{value} {count}" for value, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            )
            for column, counts in self.tally.items() if counts
        )
        return (
            f"{self.job}: {self.ok} ok, {self.failed} failed, {self.skipped} skipped "
            f"of {self.total} inputs in {self.seconds:.1f} s ({self.throughput:.2f} inputs/s){counted} -> {self.output}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": self.throughput}


class OutputStore:
    """OUTDIR's tables: what is already done, and atomic appends of new shards."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.results_dir = self.root / "results"
        self.failures_dir = self.root / "failures"
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self._counter = 0

    def index(self, table: str) -> dict[str, str | None]:
        """id -> path of every row in `table` (path None in shards written without one)."""
        import pyarrow.parquet as pq

        directory = self.root / table
        if not directory.is_dir():
            return {}
        out: dict[str, str | None] = {}
        for shard in sorted(directory.glob("*.parquet")):
            columns = [c for c in ("id", "path") if c in pq.read_schema(shard).names]
            data = pq.read_table(shard, columns=columns).to_pydict()
            out.update(zip(data["id"], data.get("path", [None] * len(data["id"]))))
        return out

    def drop(self, table: str, ids: set[str]) -> int:
        """Remove the rows of `ids` from `table` (inputs about to be redone, so each input stays
        listed once); returns how many rows went."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        directory = self.root / table
        if not ids or not directory.is_dir():
            return 0
        dropped = 0
        for shard in sorted(directory.glob("*.parquet")):
            data = pq.read_table(shard)
            keep = data.filter(pc.invert(pc.is_in(data.column("id"), value_set=_pa_strings(ids))))
            if keep.num_rows == data.num_rows:
                continue
            dropped += data.num_rows - keep.num_rows
            if keep.num_rows:
                # Tensors of the dropped rows stay in their safetensors file, unreferenced.
                _write_parquet_atomic(keep, shard)
            else:
                shard.unlink()
                for tensor_file in _tensor_files(data):
                    (self.root / tensor_file).unlink(missing_ok=True)
        return dropped

    def write(self, table: str, rows: dict[str, list]) -> Path:
        import pyarrow as pa

        directory = self.root / table
        directory.mkdir(parents=True, exist_ok=True)
        self._counter += 1
        stem = directory / f"part-{self.run_id}-{self._counter:05d}"
        payloads = rows.pop(PAYLOAD, None)
        if payloads is not None:
            # Payload tensors go to one safetensors file per shard, written before the rows that
            # name it (by its path relative to OUTDIR), so no row ever names a missing file.
            from safetensors.numpy import load, save_file

            tensors: dict[str, np.ndarray] = {}
            keys: list[list[str]] = []
            for row_id, blob in zip(rows["id"], payloads):
                named = load(blob)
                keys.append(sorted(f"{row_id}/{name}" for name in named))
                tensors.update({f"{row_id}/{name}": array for name, array in named.items()})
            target = self.root / PAYLOAD_DIR / f"{stem.name}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, target)
            rows["tensor_file"] = [target.relative_to(self.root).as_posix()] * len(keys)
            rows["tensor_keys"] = keys
        path = stem.with_suffix(".parquet")
        _write_parquet_atomic(pa.table(rows), path)
        return path


def _tensor_files(table) -> set[str]:
    """The payload files a results shard's rows name (paths relative to OUTDIR)."""
    if "tensor_file" not in table.column_names:
        return set()
    return {_tensor_path(name) for name in table.column("tensor_file").to_pylist() if name}


def _tensor_path(tensor_file: str) -> str:
    """A row's tensor_file relative to OUTDIR. Shards written before tokens/ existed named a file
    beside them in results/ by its bare name."""
    return tensor_file if "/" in tensor_file else f"results/{tensor_file}"


def tensor_path(output_dir: str | os.PathLike, tensor_file: str) -> Path:
    """Where the safetensors file a results row names (its `tensor_file`) is."""
    return Path(output_dir) / _tensor_path(tensor_file)


def _pa_strings(values: set[str]):
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def _write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    # Hidden (leading dot): a temp file left by a killed run is skipped by readers of the folder.
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class _ShardBuffer:
    """Rows waiting to be written; flushed every `shard_rows` so the driver's memory stays bounded."""

    def __init__(self, store: OutputStore, table: str, shard_rows: int):
        self.store, self.table, self.shard_rows = store, table, shard_rows
        self.rows: dict[str, list] = {}
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            self.rows.setdefault(key, []).append(value)
        self.count += 1
        if self.count >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if self.count:
            self.store.write(self.table, self.rows)
        self.rows, self.count = {}, 0


def _to_python(value: Any) -> Any:
    """Arrow-friendly cells: arrays become lists, numpy scalars become Python scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the caller's Ray if it is up, join `address` (else RAY_ADDRESS) if given, else start a
    small local one (`spatiotemporal.cluster.start_ray`).

    Only a Ray started here is shut down here, so jobs compose inside tests and notebooks.
    """
    import ray

    with _quiet_task_retries():
        started = start_ray(
            address,
            local={
                "num_cpus": num_cpus or os.cpu_count(),
                # A fixed store keeps a job on a shared box from claiming 30% of its memory.
                "object_store_memory": int(os.environ.get("SPATIOTEMPORAL_OBJECT_STORE_BYTES", 1 << 30)),
            },
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        if started:
            ray.shutdown()


# The core worker that owns a task (the driver, for every task and actor a job starts) publishes
# each failed attempt that will be retried, with the worker's whole traceback, and Ray's error
# listener prints it to the driver's stdout whatever log_to_driver says: about 145 lines when an
# inference actor cannot be built. The job reports what finally failed itself, in one line; the
# attempts stay in the session's logs. Read when a process first connects to Ray.
_RETRY_ERRORS_SETTING = "RAY_enable_output_error_log_if_still_retry"


@contextlib.contextmanager
def _quiet_task_retries() -> Iterator[None]:
    """For the Ray this job starts or joins (a user's own setting wins); the process's environment
    is left as it was."""
    if _RETRY_ERRORS_SETTING in os.environ:
        yield
        return
    os.environ[_RETRY_ERRORS_SETTING] = "0"
    try:
        yield
    finally:
        os.environ.pop(_RETRY_ERRORS_SETTING, None)


def pending_block_rows(count: int, rows_per_block: int) -> int:
    """Inputs per block: the job's `rows_per_block` (small, so a lost task redoes little work),
    grown just enough that `count` inputs make at most MAX_PENDING_BLOCKS blocks."""
    return max(rows_per_block, -(-count // MAX_PENDING_BLOCKS))


def pending_dataset(items: list[InputItem], rows_per_block: int):
    """The inputs still to do as a Ray Dataset of {id, path}, in blocks of `pending_block_rows`.

    Plans give their batch functions an explicit batch size, so a bigger block is more batches
    in one task, never a bigger batch.
    """
    import ray

    rows = [{"id": item.id, "path": item.path} for item in items]
    blocks = max(1, -(-len(rows) // pending_block_rows(len(rows), rows_per_block)))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def actor_pool(dataset, workers: int):
    """Ray Data's fixed pool of `workers` actors, or of one per block of `dataset` where it has
    fewer: an actor no block reaches would only start a process and load a model for nothing."""
    import ray

    return ray.data.ActorPoolStrategy(size=max(1, min(workers, dataset.num_blocks())))


def check_device(device: str, address: str | None) -> None:
    """Refuse `cuda` where there is none, before anything runs (it would otherwise run on CPUs).

    Where the job will start its own Ray, this machine's CUDA devices are what the job gets; a Ray
    already running in this process is asked for its GPUs. A cluster the job joins (`address`,
    else RAY_ADDRESS: `cluster_address`) can only be asked once joined: each job's plan does that
    (`usable_gpus`) before anything is recorded.
    """
    import ray

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device != "cuda":
        return
    if ray.is_initialized():
        usable_gpus("cuda", ray.cluster_resources())
    elif cluster_address(address) is None:
        import torch

        if not torch.cuda.is_available():
            raise NoDeviceError("--device cuda: no CUDA device is available")


class NoDeviceError(ValueError):
    """The job was asked for a device the machine or cluster does not have."""


def usable_gpus(device: str, cluster: dict, address: str | None = None) -> float:
    """The GPUs a job on `cluster` (`ray.cluster_resources()`) may use: none for `cpu`; `cuda`
    where there are none is refused, never run on CPUs. The refusal names the cluster joined
    (`address`, else RAY_ADDRESS), however it was given."""
    gpus = cluster.get("GPU", 0) if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus < 1:
        joined = cluster_address(address)
        where = f"the Ray cluster at {joined}" if joined else "the Ray cluster"
        raise NoDeviceError(f"--device cuda: no CUDA device is available ({where} has no GPU)")
    return gpus


class JobAborted(RuntimeError):
    """The plan itself failed (a model that cannot be built, a bug in a batch function): the job
    stopped, and the inputs it had not finished are in the failures table with this reason."""


class _NothingRecorded(Exception):
    """Carries (as its cause) an error raised before a run recorded anything, past the handler that
    records a failing plan's inputs as failures."""


class OutputConflictError(ManifestError):
    """OUTDIR already holds an input id for a different file than this run lists under that id."""


# Beside the tables: what made OUTDIR's rows (the job, and its identity: model, checkpoint and its
# SHA-256, published weights, views, ...), so that a resume never mixes two models' rows.
JOB_FILE = "job.json"
# Kept in job.json for the reader, not compared: a checkpoint is the same model wherever it lies
# (its SHA-256 is compared), so moving the file does not refuse a resume.
_INFORMATIVE = frozenset({"checkpoint"})


class JobIdentityError(ValueError):
    """OUTDIR's rows were made by another job, model, checkpoint or setting than this run's: resuming
    would mix the two in one table. Raised before Ray starts, with nothing recorded."""


def _identity_record(name: str, identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """The job's identity as job.json holds it (tuples read back as lists, so compare as lists)."""
    return None if identity is None else json.loads(json.dumps({"job": name, **identity}))


def _check_identity(store: OutputStore, record: dict[str, Any] | None, resume: bool) -> bool:
    """Whether OUTDIR's earlier rows were made otherwise than `record` says this run makes its rows.

    Resuming into rows made otherwise is refused (JobIdentityError, one line naming what differs).
    An OUTDIR without job.json (a new one, or one from before job.json existed) resumes as before.
    """
    path = store.root / JOB_FILE
    if record is None or not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        if not resume:
            return True
        raise JobIdentityError(
            f"{path}: cannot read what made the rows in {store.root} ({one_line_error(err)}); "
            "use --no-resume to redo them, or another --output"
        ) from None
    differs = [key for key in sorted(set(recorded) | set(record))
               if key not in _INFORMATIVE and recorded.get(key) != record.get(key)]
    if differs and resume:
        what = "; ".join(f"{key} {_shown(recorded.get(key))} there, {_shown(record.get(key))} now" for key in differs)
        raise JobIdentityError(
            f"{store.root} holds rows made otherwise ({what}): "
            "use --no-resume to redo them with this run's, or another --output"
        )
    return bool(differs)


def _shown(value: Any) -> str:
    """A value of job.json in the one-line refusal: a SHA-256 by its first 12 digits, null as none."""
    if value is None:
        return "none"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return json.dumps(value)


def _write_identity(store: OutputStore, record: dict[str, Any]) -> None:
    path = store.root / JOB_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


@dataclass
class _Todo:
    """What this run does, after what OUTDIR already holds."""

    items: list[InputItem]  # to send through the plan
    unlisted: list[tuple[InputItem, str]]  # inputs that fail before the plan, with the reason
    skipped: int
    # Earlier rows of the inputs this run redoes (--no-resume, --retry-failed), per table: removed
    # only once the run is under way, so a run refused at its start leaves OUTDIR as it was.
    redo: dict[str, set[str]]

    def remove_redone(self, store: OutputStore) -> int:
        return sum(store.drop(table, ids) for table, ids in self.redo.items() if ids)


def run_job(
    name: str,
    items: list[InputItem],
    output_dir: str | os.PathLike,
    plan: Callable[[Any], Any],
    *,
    resume: bool = True,
    retry_failed: bool = False,
    rows_per_block: int = 4,
    shard_rows: int = 256,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    tally: tuple[str, ...] = (),
    identity: dict[str, Any] | None = None,
) -> JobSummary:
    """Run `plan` over `items`, skipping what OUTDIR already holds, and write results/failures.

    Resuming skips an input only when OUTDIR holds its id for the same path; the same id for
    another path raises OutputConflictError before anything runs. `resume=False` redoes every
    listed input and removes their earlier rows from results/ and failures/ once the plan is built
    (rows of inputs not listed stay). `retry_failed` redoes the listed inputs that failed before.

    `on_row` sees every successful row before it is buffered (jobs use it for side outputs such
    as submission files); `tally` names result columns whose values the summary line counts over
    them (video jobs: which decoder read each input). If the plan makes no progress for `stall_timeout_s` (a cluster that lost
    the resources the plan needs), the job stops and records what is left as failures rather than
    hang. If the plan raises, what is left is recorded as failures, summary.json is written, and
    JobAborted (one line) is raised. A plan that raises NoDeviceError (`usable_gpus`: a cluster
    without the GPU it was asked for) changes nothing in OUTDIR: its inputs stay as they were.

    `identity` (JSON values) says what makes the job's rows what they are: model, checkpoint and its
    SHA-256, weights, views... It is written to OUTDIR/job.json (with the job's name) once the run
    is under way. Resuming an OUTDIR whose job.json differs raises JobIdentityError before Ray
    starts, with nothing recorded; `resume=False` there redoes the listed inputs and removes every
    earlier row, listed or not, so that all rows in OUTDIR are made one way. An OUTDIR without
    job.json (from before it existed) resumes as it is and gets one; `identity` None records none.
    """
    from tqdm import tqdm

    stall_timeout_s = stall_seconds(stall_timeout_s)
    # A cluster the job cannot join is the user's to fix: refused before OUTDIR is touched, so
    # that no input is recorded as failed for it (`start_ray` checks it again as it joins).
    cluster_to_join(address)
    store = OutputStore(output_dir)
    # Rows made by another model are the user's to sort out: refused here, before Ray starts.
    record = _identity_record(name, identity)
    made_otherwise = _check_identity(store, record, resume)
    store.root.mkdir(parents=True, exist_ok=True)
    plan_todo = _plan_todo(store, items, resume, retry_failed)
    if made_otherwise:  # --no-resume over rows made otherwise: none of them may stay
        plan_todo.redo = {table: plan_todo.redo.get(table, set()) | store.index(table).keys()
                          for table in ("results", "failures")}
    todo = plan_todo.items
    expected = {item.id for item in todo}
    seen: set[str] = set()
    results = _ShardBuffer(store, "results", shard_rows)
    failures = _ShardBuffer(store, "failures", shard_rows)
    ok = failed = replaced = 0
    counts: dict[str, dict[str, int]] = {column: {} for column in tally}
    stalled = False
    aborted: str | None = None
    started = False
    # Where the time went before the first result: starting Ray (when the job starts its own) and
    # then the plan's workers (processes, imports, models). `seconds` includes both.
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(todo) + len(plan_todo.unlisted), desc=name, unit="input", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def under_way() -> None:
        """The run records from here on: earlier rows of what it redoes go, unlisted inputs fail.
        OUTDIR failing to give up those rows is the user's error to see, with nothing recorded."""
        nonlocal started, replaced, failed
        try:
            replaced = plan_todo.remove_redone(store)
            if record is not None:
                _write_identity(store, record)
        except Exception as err:  # noqa: BLE001 - re-raised as it was, past the plan's handler
            raise _NothingRecorded() from err
        started = True
        if replaced and made_otherwise:
            bar.write(f"{name}: removed all {replaced} earlier rows, made otherwise than this run's (see {JOB_FILE})",
                      file=sys.stderr)
        elif replaced:
            bar.write(f"{name}: removed {replaced} earlier rows of the inputs this run redoes", file=sys.stderr)
        for item, reason in plan_todo.unlisted:
            failures.add({"id": item.id, "path": item.path, "error": reason})
            failed += 1
            bar.update(1)

    try:
        if todo:
            try:
                with ray_session(address, num_cpus):
                    timings["ray_start_s"] = time.perf_counter() - start
                    quiet_ray_data()
                    dataset = plan(pending_dataset(todo, rows_per_block))
                    under_way()
                    # Ray Data's own no-progress guard stops a stalled execution, its tasks and
                    # actors with it, and raises ExecutionTimeoutError; left at its default
                    # (30 min) it would also cut short a job given a longer stall timeout.
                    dataset.context.execution_no_progress_timeout_s = stall_timeout_s
                    stream = _OutputStream(dataset, stall_timeout_s + _STALL_GRACE_S)
                    for batch in stream:
                        timings.setdefault("first_output_s", time.perf_counter() - start)
                        for row in _rows(batch):
                            row_id = str(row["id"])
                            # A retried task may resend rows that already arrived; keep the first.
                            if row_id in seen or row_id not in expected:
                                continue
                            seen.add(row_id)
                            error = str(row.pop("error", "") or "")
                            if error:
                                failures.add({"id": row_id, "path": str(row["path"]), "error": error})
                                failed += 1
                            else:
                                row = {k: _to_python(v) for k, v in row.items()}
                                if on_row is not None:
                                    on_row(row)
                                for column, seen_values in counts.items():
                                    value = str(row.get(column))
                                    seen_values[value] = seen_values.get(value, 0) + 1
                                results.add(row)
                                ok += 1
                            bar.update(1)
                            bar.set_postfix(ok=ok, failed=failed, refresh=False)
                    stalled = stream.stalled
            except (NoDeviceError, ClusterJoinError):
                # Nothing ran: the inputs are not recorded, so they stay pending for a run on a
                # cluster that has the device, or one the job can join.
                raise
            except _NothingRecorded as err:
                raise err.__cause__ from None
            except Exception as err:  # noqa: BLE001 - recorded below, then re-raised as JobAborted
                if _is_stall(err):
                    stalled = True
                else:
                    aborted = one_line_error(err)
        if not started:  # nothing to plan, or a plan that failed: still accounted for below
            under_way()
        # Inputs the plan never returned are failures, never silence; a later run retries them
        # with --retry-failed.
        if aborted is not None:
            reason = f"job aborted: {aborted}"
        elif stalled:
            reason = (f"not finished: the job made no progress for {stall_timeout_s:g} s "
                      "(cluster stalled; see --stall-timeout)")
        else:
            reason = "no output produced by the job"
        for item in todo:
            if item.id not in seen:
                failures.add({"id": item.id, "path": item.path, "error": reason})
                failed += 1
    finally:
        results.flush()
        failures.flush()
        bar.close()
    extra: dict[str, Any] = {k: round(v, 3) for k, v in timings.items()}
    if replaced:
        extra["replaced_rows"] = replaced
    if aborted is not None:
        extra["aborted"] = aborted
    summary = JobSummary(
        job=name,
        total=len(items),
        ok=ok,
        failed=failed,
        skipped=plan_todo.skipped,
        seconds=time.perf_counter() - start,
        output=str(store.root),
        extra=extra,
        tally=counts,
    )
    (store.root / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    # The summary prints even without a progress bar: it is the job's one-line receipt.
    print(summary.line(), file=sys.stderr, flush=True)
    if aborted is not None:
        raise JobAborted(f"{name} aborted: {aborted}")
    return summary


def _plan_todo(store: OutputStore, items: list[InputItem], resume: bool, retry_failed: bool) -> _Todo:
    items, unlisted = _split_unencodable(items)
    listed = items + [item for item, _ in unlisted]
    ids = {item.id for item in listed}
    if not resume:
        return _Todo(items, unlisted, skipped=0, redo={"results": ids, "failures": ids})
    done, failed_before = store.index("results"), store.index("failures")
    _check_same_paths(store, listed, done, "results")
    _check_same_paths(store, listed, failed_before, "failures")
    retry: set[str] = set()
    if retry_failed:
        # Only this run's inputs: failures of inputs not listed now must stay on record.
        retry = ids & failed_before.keys()
        failed_before = {k: v for k, v in failed_before.items() if k not in retry}

    def pending(item: InputItem) -> bool:
        return item.id not in done and item.id not in failed_before

    todo = [item for item in items if pending(item)]
    unlisted = [(item, reason) for item, reason in unlisted if pending(item)]
    return _Todo(todo, unlisted, skipped=len(listed) - len(todo) - len(unlisted), redo={"failures": retry})


def _check_same_paths(store: OutputStore, items: list[InputItem], recorded: dict[str, str | None], table: str) -> None:
    """An id in OUTDIR names one file: refuse (as a manifest listing one id twice is refused)
    rather than skip a different file because its id is already done."""
    for item in items:
        if item.id not in recorded:
            continue
        path = recorded[item.id]
        if path is None or path == item.path or os.path.realpath(path) == item.path:
            continue
        raise OutputConflictError(
            f"input id {item.id!r} is {item.path}, but {store.root / table} already holds that id for {path}; "
            "give the input another id (a manifest id column), use another --output, or --no-resume to redo it"
        )


def _split_unencodable(items: list[InputItem]) -> tuple[list[InputItem], list[tuple[InputItem, str]]]:
    """Inputs whose id or path is not valid UTF-8 (file names in another encoding, which Python
    carries as lone surrogates) cannot travel through Arrow: each becomes a failure with a
    printable id and path (the bad bytes as \\xNN) instead of aborting the job."""
    good, bad = [], []
    for item in items:
        if _encodable(item.id) and _encodable(item.path):
            good.append(item)
        else:
            bad.append((InputItem(id=_printable(item.id), path=_printable(item.path)), "file name is not valid UTF-8"))
    return good, bad


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def model_identity(model: str, checkpoint: str | None, weights: str | None, random_weights: bool) -> dict[str, Any]:
    """The part of an inference job's `identity` (see run_job) that says which model made its rows:
    a checkpoint by its resolved path and its SHA-256 (a model retrained into the same file is
    another model), published weights by their entry's full name, however they were spelt ("k400"
    with the model, or "mvitv2_s.k400": one entry, one identity)."""
    from spatiotemporal.weights import get_entry
    from spatiotemporal.weights.download import sha256_of

    return {
        "model": model,
        "checkpoint": os.path.realpath(checkpoint) if checkpoint else None,
        "checkpoint_sha256": sha256_of(checkpoint) if checkpoint else None,
        "weights": get_entry(weights, model).name if weights else None,
        "random_weights": bool(random_weights),
    }


def check_model(model: str, checkpoint: str | None, family: str) -> None:
    """Fail on the driver, before Ray starts, for what can be checked without building the
    model: a model name that is not registered or of the wrong family, a checkpoint that is
    not a readable file. (A model that fails in its workers aborts the job with JobAborted.)"""
    from spatiotemporal.models.registry import get_spec, list_models

    try:
        spec = get_spec(model)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if spec.family != family:
        raise ValueError(f"{model} is a {spec.family} model; this job needs one of: {', '.join(list_models(family))}")
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ValueError(f"{checkpoint}: no such checkpoint file")
        if not os.access(checkpoint, os.R_OK):
            raise ValueError(f"{checkpoint}: checkpoint is not readable")


# Ray Data stops a stalled execution itself (see run_job); the driver's own deadline comes this
# much later and only guards against an execution that stopped without a word.
_STALL_GRACE_S = 60.0


def _is_stall(err: BaseException) -> bool:
    from ray.data.exceptions import ExecutionTimeoutError

    current: BaseException | None = err
    while current is not None:
        if isinstance(current, ExecutionTimeoutError):
            return True
        current = current.__cause__
    return False


class _OutputStream:
    """The dataset's output batches, ending early (with `stalled` set) if none arrives for
    `stall_timeout_s`.

    Ray Data's iterator blocks without a deadline, so it runs in a thread that hands batches
    over a small queue (small, so the driver still pulls no faster than it writes).
    """

    def __init__(self, dataset, stall_timeout_s: float):
        self.dataset, self.stall_timeout_s, self.stalled = dataset, stall_timeout_s, False

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        import queue
        import threading

        handoff: queue.Queue = queue.Queue(maxsize=2)
        done = object()

        def pump() -> None:
            try:
                for batch in self.dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    handoff.put(batch)
                handoff.put(done)
            except BaseException as err:  # noqa: BLE001 - re-raised in the driver's thread
                handoff.put(err)

        threading.Thread(target=pump, name="job-output", daemon=True).start()
        while True:
            try:
                item = handoff.get(timeout=self.stall_timeout_s)
            except queue.Empty:
                self.stalled = True
                return
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    columns = list(batch)
    if not columns:
        return
    for i in range(len(batch[columns[0]])):
        yield {column: batch[column][i] for column in columns}


def failure_reason(err: BaseException) -> str:
    """One line for the failures table (the row names the file): see `reason_line`."""
    from spatiotemporal.io.errors import reason_line

    return reason_line(err)


def read_table(output_dir: str | os.PathLike, table: str = "results"):
    """A job's results or failures as one pandas DataFrame (empty when none were written)."""
    import pandas as pd

    directory = Path(output_dir) / table
    shards = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not shards:
        return pd.DataFrame(columns=["id", "path"] + (["error"] if table == "failures" else []))
    return pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
