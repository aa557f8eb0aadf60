"""The machinery every batch job shares: Ray session, resume, exactly-once accounting, shards,
progress and the end summary.

A job is a plan: a function from a Ray Dataset of `{id, path}` rows to a Dataset whose rows carry
`id`, `path`, `error` ("" on success) and the job's own result columns. `run_job` streams that
plan's output through the driver, which alone writes OUTDIR, so shards never collide and every
input lands exactly once in `results/` or `failures/`:

    OUTDIR/results/part-<run>-<k>.parquet    one row per finished input (+ .safetensors payloads)
    OUTDIR/failures/part-<run>-<k>.parquet   id, path, error
    OUTDIR/summary.json                      the last run's counts and throughput

Shards are written atomically (temp file, then rename), so a run killed mid-way leaves only
whole shards behind, and the next run resumes from them.
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

from pipelines.inputs import InputItem

# A result column holding serialized safetensors bytes; the writer unpacks it into a shard file.
PAYLOAD = "payload"


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

    @property
    def throughput(self) -> float:
        """Inputs finished (ok or failed) per second in this run."""
        return (self.ok + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.job}: {self.ok} ok, {self.failed} failed, {self.skipped} skipped "
            f"of {self.total} inputs in {self.seconds:.1f} s ({self.throughput:.2f} inputs/s) -> {self.output}"
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

    def ids(self, table: str) -> set[str]:
        import pyarrow.parquet as pq

        directory = self.root / table
        if not directory.is_dir():
            return set()
        out: set[str] = set()
        for shard in sorted(directory.glob("*.parquet")):
            out.update(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
        return out

    def drop_failures(self, ids: set[str]) -> None:
        """Forget failures that are about to be retried, so each input stays listed once."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        for shard in sorted(self.failures_dir.glob("*.parquet")):
            table = pq.read_table(shard)
            keep = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=_pa_strings(ids))))
            if keep.num_rows == table.num_rows:
                continue
            if keep.num_rows:
                _write_parquet_atomic(keep, shard)
            else:
                shard.unlink()

    def write(self, table: str, rows: dict[str, list]) -> Path:
        import pyarrow as pa

        directory = self.root / table
        directory.mkdir(parents=True, exist_ok=True)
        self._counter += 1
        stem = directory / f"part-{self.run_id}-{self._counter:05d}"
        payloads = rows.pop(PAYLOAD, None)
        if payloads is not None:
            # Payload tensors go to a safetensors file next to the Parquet rows that index them.
            from safetensors.numpy import load, save_file

            tensors: dict[str, np.ndarray] = {}
            keys: list[list[str]] = []
            for row_id, blob in zip(rows["id"], payloads):
                named = load(blob)
                keys.append(sorted(f"{row_id}/{name}" for name in named))
                tensors.update({f"{row_id}/{name}": array for name, array in named.items()})
            tmp = stem.with_suffix(".safetensors.tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, stem.with_suffix(".safetensors"))
            rows["tensor_file"] = [stem.with_suffix(".safetensors").name] * len(keys)
            rows["tensor_keys"] = keys
        path = stem.with_suffix(".parquet")
        _write_parquet_atomic(pa.table(rows), path)
        return path


def _pa_strings(values: set[str]):
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def _write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".parquet.tmp")
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
    """Use the caller's Ray if it is up, join `address` if given, else start a small local one.

    Only a Ray started here is shut down here, so jobs compose inside tests and notebooks.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            # "local" starts a fresh instance; without it Ray would attach to whatever cluster
            # another process on this machine started last.
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            # A fixed store keeps a job on a shared box from claiming 30% of its memory.
            object_store_memory=int(os.environ.get("SPATIOTEMPORAL_OBJECT_STORE_BYTES", 1 << 30)),
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()


def pending_dataset(items: list[InputItem], rows_per_block: int):
    """The inputs still to do, in blocks small enough that one lost task redoes little work."""
    import ray

    rows = [{"id": item.id, "path": item.path} for item in items]
    blocks = max(1, -(-len(rows) // rows_per_block))
    return ray.data.from_items(rows, override_num_blocks=blocks)


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
    stall_timeout_s: float = 900.0,
) -> JobSummary:
    """Run `plan` over `items`, skipping what OUTDIR already holds, and write results/failures.

    `on_row` sees every successful row before it is buffered (jobs use it for side outputs such
    as submission files). If no output arrives for `stall_timeout_s` (a cluster that lost the
    resources the plan needs), the job stops and records what is left as failures rather than
    hang.
    """
    from tqdm import tqdm

    store = OutputStore(output_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    done = store.ids("results") if resume else set()
    failed_before = store.ids("failures") if resume else set()
    if retry_failed:
        store.drop_failures(failed_before)
        failed_before = set()
    todo = [item for item in items if item.id not in done and item.id not in failed_before]
    skipped = len(items) - len(todo)
    expected = {item.id for item in todo}
    seen: set[str] = set()
    results = _ShardBuffer(store, "results", shard_rows)
    failures = _ShardBuffer(store, "failures", shard_rows)
    ok = failed = 0
    stalled = False
    # Where the time went before the first result: starting Ray (when the job starts its own) and
    # then the plan's workers (processes, imports, models). `seconds` includes both.
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc=name, unit="input", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        if todo:
            with ray_session(address, num_cpus):
                timings["ray_start_s"] = time.perf_counter() - start
                _quiet_ray_data()
                dataset = plan(pending_dataset(todo, rows_per_block))
                stream = _OutputStream(dataset, stall_timeout_s)
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
                            results.add(row)
                            ok += 1
                        bar.update(1)
                        bar.set_postfix(ok=ok, failed=failed, refresh=False)
                stalled = stream.stalled
        # Inputs the plan never returned are failures, never silence; a later run retries them
        # with --retry-failed.
        reason = (
            f"not finished: the job made no progress for {stall_timeout_s:g} s (cluster stalled)"
            if todo and stalled else "no output produced by the job"
        )
        for item in todo:
            if item.id not in seen:
                failures.add({"id": item.id, "path": item.path, "error": reason})
                failed += 1
    finally:
        results.flush()
        failures.flush()
        bar.close()
    summary = JobSummary(
        job=name,
        total=len(items),
        ok=ok,
        failed=failed,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        output=str(store.root),
        extra={k: round(v, 3) for k, v in timings.items()},
    )
    (store.root / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    # The summary prints even without a progress bar: it is the job's one-line receipt.
    print(summary.line(), file=sys.stderr, flush=True)
    return summary


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


def _quiet_ray_data() -> None:
    """The job draws its own progress bar; Ray Data's per-operator bars and logs would bury it."""
    import logging

    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    columns = list(batch)
    if not columns:
        return
    for i in range(len(batch[columns[0]])):
        yield {column: batch[column][i] for column in columns}


def failure_reason(err: BaseException) -> str:
    """One line for the failures table: input errors already name the file and the reason."""
    from spatiotemporal.io.errors import InputError

    if isinstance(err, InputError):
        return err.reason
    return f"{type(err).__name__}: {err}".splitlines()[0]


def read_table(output_dir: str | os.PathLike, table: str = "results"):
    """A job's results or failures as one pandas DataFrame (empty when none were written)."""
    import pandas as pd

    directory = Path(output_dir) / table
    shards = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not shards:
        return pd.DataFrame(columns=["id", "path"] + (["error"] if table == "failures" else []))
    return pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
