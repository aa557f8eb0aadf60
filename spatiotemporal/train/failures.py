"""When training workers fail: restarts, the record of each failure, and the one line that ends a run.

Ray Train restarts the worker group from the run's latest checkpoint up to `train.max_failures`
times (`FailureConfig`), for a worker's exception, a killed worker process or a lost node alike;
preemptions it counts apart (without limit by default), and workers it could not start in time
(a lost node and no room elsewhere) as the controller's failures. Its own record of each decision
is an INFO line with a traceback, which `fit` keeps out of the console. Ours: the controller
appends one row per decision to `failures.jsonl` in the run directory (the reason of each rank in
one line, the full tracebacks in `failures.log`), `fit`'s process prints one line for each row,
and a run Ray Train gives up on stops with a `TrainingStopped` whose message is one line naming
the reason.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from pathlib import Path

from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import ErroredState, ShuttingDownState
from ray.train.v2._internal.execution.failure_handling.default import (
    RETRYABLE_CONTROLLER_ERRORS,
    _is_preemption_failure,
)

FAILURES_FILE = "failures.jsonl"
TRACEBACKS_FILE = "failures.log"
ATTEMPTS_FILE = "attempts.jsonl"  # rank 0: the step each start of the workers continued from

# A cluster that `fit` joins has other people's nodes, which get preempted, drained or lost; a run
# there restarts by default. A local cluster is this machine: a failure there is most often the
# run's own (a bug, memory), which a restart would only repeat, so it stops at once by default.
MAX_FAILURES_ON_A_JOINED_CLUSTER = 3
MAX_FAILURES_ON_A_LOCAL_CLUSTER = 0


class TrainingStopped(RuntimeError):
    """A run that failed with no restarts left; its message is one line naming the reason."""


def max_failures(configured: int | None, joined: bool) -> int:
    """`train.max_failures`, or its default for the kind of cluster (-1: restart without limit).
    `joined`: a cluster joined by address, or one of several nodes."""
    if configured is not None:
        if configured < -1:
            raise ValueError(f"train.max_failures={configured}: give a count of restarts, or -1 for no limit")
        return configured
    return MAX_FAILURES_ON_A_JOINED_CLUSTER if joined else MAX_FAILURES_ON_A_LOCAL_CLUSTER


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def worker_reason(error: BaseException) -> str:
    """One line for what a worker failed of: the training function's exception as `Type: message`
    (Ray Train hands the controller the exception itself, unwrapped from its traceback); a dead
    worker process or node as the first sentence of Ray's error (\"The actor died unexpectedly ...\")."""
    # A task or actor call the worker waited on failed: Ray's message is its coloured call line;
    # the exception it raised is the reason.
    cause = getattr(error, "cause", None)
    if type(error).__name__.startswith("RayTaskError") and isinstance(cause, BaseException):
        return worker_reason(cause)
    # A worker that stopped answering: Ray Train's health check holds why (the actor's death).
    failure = getattr(error, "health_check_failure", None)
    if isinstance(failure, BaseException):
        if type(failure).__name__ == "ActorUnavailableError":  # its node's raylet is gone, or going
            return _unreachable(str(error), str(failure))
        return worker_reason(failure)
    text = str(error)
    death = _actor_death(text)
    if death is not None:
        return death
    return f"{type(error).__name__}: {_first_line(text)}".rstrip(": ")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NATIVE_SOURCE = re.compile(r"^\[[^\]]*\.(?:cc|cpp|cu|h|hpp):\d+\] ?")  # gloo's "[.../pair.cc:545] "


def _clean(reason: str) -> str:
    """A reason without terminal colours, and a native library's message (gloo's, behind a C++
    source location) to its first sentence: the rest is generic advice."""
    name, sep, message = _ANSI.sub("", reason).partition(": ")
    if _NATIVE_SOURCE.match(message):
        message = _NATIVE_SOURCE.sub("", message).split(". ")[0]
    return f"{name}{sep}{message}"


def _unreachable(check: str, failure: str) -> str:
    """A worker the health check could not reach: which one (the check's worker info) and the
    connection's last error ("Connection reset by peer"), not the actor id and the RPC codes."""
    pid, ip = re.search(r"\bpid=(\d+)", check), re.search(r"\bnode_ip='([^']*)'", check)
    where = " ".join(part for part in (pid and f"pid {pid.group(1)}", ip and f"on {ip.group(1)}") if part)
    rpc = re.search(r"RPC error: (.*?)(?: rpc_code: \d+|\. The task|$)", failure)
    detail = rpc.group(1).rsplit(":", 1)[-1].strip() if rpc else "unavailable"
    return f"RayTrainWorker {where} unreachable (its process or node is gone: {detail})".replace("  ", " ")


def _actor_death(text: str) -> str | None:
    """Ray's account of a dead actor in one line: which process, on which node, and why ("its
    worker process has died", "its node has died"), with the exit detail's first sentence."""
    because = next((line.strip() for line in text.splitlines() if line.startswith("The actor is dead because")), None)
    if because is None:
        return None
    fields = {}
    for line in text.splitlines():
        if line.startswith("\t"):
            key, _, value = line.strip().partition(": ")
            fields[key] = value
    cause, _, rest = because.removeprefix("The actor is dead because ").partition(". ")
    detail = rest.partition("Worker exit detail: ")[2].split(". ")[0].strip()
    where = " ".join(part for part in (f"pid {fields.get('pid', '?')}", f"on {fields['ip']}" if "ip" in fields else "") if part)
    return f"{fields.get('class_name', 'the worker')} {where} died: {cause}" + (f" ({detail})" if detail else "")


# A reason longer than this is cut: Ray's messages for an unreachable actor run to several clauses.
MAX_REASON_CHARS = 200


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3].rstrip() + "..."


def ranks_and_reasons(worker_errors: dict[int, BaseException]) -> str:
    """`rank 0: X; ranks 1,2: Y`, ranks with the same reason together."""
    by_reason: dict[str, list[int]] = {}
    for rank, error in sorted(worker_errors.items()):
        by_reason.setdefault(_short(_clean(worker_reason(error))), []).append(rank)
    parts = []
    for reason, ranks in by_reason.items():
        label = "rank" if len(ranks) == 1 else "ranks"
        parts.append(f"{label} {','.join(map(str, ranks))}: {reason}")
    return "; ".join(parts)


def failure_reason(error: BaseException) -> str:
    """One line for a failure Ray Train decided on: each rank's reason (`WorkerGroupError`), or the
    controller's own (workers it could not start in time)."""
    worker_errors = getattr(error, "worker_failures", None)
    if worker_errors:
        return ranks_and_reasons(worker_errors)
    cause = getattr(error, "controller_failure", None) or error
    reason = _clean(f"{type(cause).__name__}: {_first_line(str(cause)).split('. ')[0]}".rstrip(": "))
    if isinstance(cause.__cause__, BaseException):  # a worker that failed to start: why it did
        reason += f" ({worker_reason(cause.__cause__)})"
    reason = _short(reason)
    if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
        reason += " (the cluster has no room for ray.num_workers x ray.resources_per_worker)"
    return reason


def _tracebacks(error: BaseException) -> str:
    worker_errors = getattr(error, "worker_failures", None)
    if not worker_errors:
        cause = getattr(error, "controller_failure", None) or error
        return "".join(traceback.format_exception(cause)).rstrip()
    # A worker's own traceback is in its exception's notes (see train_loop_per_worker).
    return "\n".join(
        f"rank {rank}:\n{''.join(traceback.format_exception_only(e)).rstrip()}" for rank, e in sorted(worker_errors.items())
    )


class RecordFailures(ControllerCallback):
    """Runs in Ray Train's controller: one row in `failures.jsonl` per failure Ray Train decided on
    (the controller moving to restart, reschedule, or stop with the error), its tracebacks in
    `failures.log`. Each row says what Ray Train counts the failure against: `workers` (their
    errors, deaths and lost nodes: `train.max_failures`), `preemption` (without limit), or
    `start` (workers it could not start: as many tries as `train.max_failures`), or `controller`
    (any other failure of the controller: never retried).

    Ray Train's callback for users (`UserCallback.after_exception`) is called on every poll that
    finds an error, with no decision: several times for one preemption, never for a start that
    timed out. Controller callbacks, which `RunConfig(callbacks=...)` accepts beside it, see the
    decisions."""

    def __init__(self, run_dir: str, max_failures: int):
        self.run_dir, self.max_failures = Path(run_dir), max_failures
        self.counts: dict[str, int] = {}
        self._recorded: list[BaseException] = []

    def after_controller_state_update(self, previous_state, current_state) -> None:
        state = current_state.next_state if isinstance(current_state, ShuttingDownState) else current_state
        error = getattr(state, "training_failed_error", None)
        if error is None or any(error is seen for seen in self._recorded):  # stopping: ShuttingDown, then Errored
            return
        self._recorded.append(error)
        try:
            self._record(error, restarting=not isinstance(state, ErroredState))
        except Exception:  # noqa: BLE001 - an error raised here would turn Ray Train's restart into a stop
            pass

    def _record(self, error: BaseException, restarting: bool) -> None:
        if hasattr(error, "controller_failure"):
            # Ray Train retries only the controller's failures to start the workers.
            start = isinstance(error.controller_failure, RETRYABLE_CONTROLLER_ERRORS)
            kind, limit = ("start", self.max_failures) if start else ("controller", 0)
        elif _is_preemption_failure(error):
            kind, limit = "preemption", -1
        else:
            kind, limit = "workers", self.max_failures
        self.counts[kind] = self.counts.get(kind, 0) + 1
        try:
            reason = failure_reason(error)
        except Exception:  # noqa: BLE001 - a message that cannot be read still leaves a row
            reason = type(error).__name__
        row = {
            "failure": len(self._recorded), "kind": kind, "count": self.counts[kind], "limit": limit,
            "restarting": restarting, "time": time.time(), "reason": reason,
        }  # fmt: skip
        with (self.run_dir / TRACEBACKS_FILE).open("a", encoding="utf-8", errors="replace") as log:
            log.write(f"failure {row['failure']} ({kind}) at {time.strftime('%Y-%m-%d %H:%M:%S')}\n{_tracebacks(error)}\n")
        with (self.run_dir / FAILURES_FILE).open("a", encoding="utf-8") as rows:
            rows.write(json.dumps(row) + "\n")


def record_attempt(run_dir: Path, step: int, checkpoint: str | None) -> None:
    """Rank 0, as the workers start: the step they continue from and the checkpoint it came from
    (None: the run's beginning), so what each restart cost can be read afterwards."""
    with (Path(run_dir) / ATTEMPTS_FILE).open("a") as rows:
        rows.write(json.dumps({"step": step, "checkpoint": checkpoint, "time": time.time()}) + "\n")


def read_failures(run_dir: Path, name: str = FAILURES_FILE) -> list[dict]:
    """The rows of failures.jsonl (or of attempts.jsonl) written so far."""
    try:
        text = (Path(run_dir) / name).read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # the controller is writing it
            break
    return rows


def failure_line(row: dict) -> str:
    """What the console says for a row of failures.jsonl."""
    what = {"workers": "training workers failed", "preemption": "training workers were preempted",
            "start": "training workers could not start", "controller": "Ray Train's controller failed"}[row["kind"]]  # fmt: skip
    if row["kind"] == "controller":
        return f"{what}: {row['reason']}; no restarts for it"
    limit = "no limit" if row["limit"] == -1 else f"train.max_failures={row['limit']}"
    if row["kind"] == "start":
        then = "trying again" if row["restarting"] else "no tries left"
    else:
        then = "restarting from the latest checkpoint, if any" if row["restarting"] else "no restarts left"
    return f"{what} ({row['count']}, {limit}): {row['reason']}; {then}"


def stopped(error: Exception, run_dir: Path, name: str) -> TrainingStopped:
    """The one-line error for a run Ray Train gave up on (`ray.train.TrainingFailedError`)."""
    restarts = sum(1 for row in read_failures(run_dir) if row["restarting"])
    after = f" after {restarts} restart{'s' if restarts != 1 else ''}" if restarts else ""
    log = f" (tracebacks: {run_dir / TRACEBACKS_FILE})" if (run_dir / TRACEBACKS_FILE).exists() else ""
    try:
        reason = failure_reason(error)
    except Exception:  # noqa: BLE001 - the run stopped either way; say with what
        reason = type(error).__name__
    return TrainingStopped(f"training {name} stopped{after}: {reason}{log}")
