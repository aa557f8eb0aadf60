"""The runtime environment `fit` gives the Ray cluster it starts or joins.

Ray Train V2 runs a controller and a few helper actors beside the training workers. Their defaults
suit a cloud cluster; on a 2-core machine they spend CPU that the training needs and fill the
output with a warning a second. Each setting below says which default it changes and why.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Each `ray.train.report` waits for the controller's next health check of the workers: 2 s by
# default, which a run that reports every epoch pays every epoch.
HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
DEFAULT_HEALTH_CHECK_INTERVAL_S = "0.2"

# The preemption watcher polls for nodes that a cloud provider is draining. A local cluster is
# this machine alone, so it would only wake an actor every 5 s for the whole run.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"

# The placement-group cleaner asks the State API every second whether the controller still
# lives. The State API is served by the dashboard, which a local cluster started without it (and
# a core install of Ray, which has no dashboard) lacks, so every ask fails and logs a warning.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"

# The controller registers the workers' resources with Ray's autoscaling coordinator, an actor it
# asks with a 5 s deadline: on a busy machine its first answer (the actor's start) takes longer,
# and the controller logs a warning with a traceback that says it is "safe to ignore". A local
# cluster has no autoscaler to tell.
AUTOSCALING_CLIENT_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"

# Loggers whose INFO lines reach the console through a worker's root logger, which Ray Train's
# log level (`fit` sets WARNING) does not govern: matplotlib says "generated new fontManager" the
# first time a worker plots on a machine, and Ray Train's report context logs "Reporting training
# result" for every report through a logger that it names by its file's path, not `ray.train.*`.
QUIET_WORKER_LOGGERS = ("matplotlib",)
QUIET_WORKER_LOGGER_MODULES = ("ray.train.v2._internal.execution.context",)
# Ray Train logs, through loggers it configures after this hook runs, two messages that our one
# line per failure replaces (failures.py): "Error in training function" and the traceback, from
# every failing worker, and the controller's "Graceful shutdown of backend failed. This is
# expected if one of the workers has crashed". The same tracebacks reach the run's failures.log.
# Filters, not levels: Ray Train's `logging.config.dictConfig` resets the levels of the `ray.train`
# loggers' children (the autoscaling client's included, in the controller) but keeps their
# filters. A filter drops only its messages: the same loggers also warn of ranks that never reach
# `ray.train.report`, the one hint of a rank that hangs.
FAILURE_MESSAGES = {
    "ray.train.v2._internal.util": "Error in training function",
    "ray.train.v2._internal.callbacks.backend_setup": "Graceful shutdown of backend failed",
}


def _drop_failure_message(record: logging.LogRecord) -> bool:
    prefix = FAILURE_MESSAGES.get(record.name)
    return prefix is None or not str(record.msg).startswith(prefix)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _add_filter(name: str, keep) -> None:
    logger = logging.getLogger(name)
    if keep not in logger.filters:
        logger.addFilter(keep)


def module_file(module: str) -> str | None:
    """The file `module` (a dotted name) loads from, found in its top-level package's folder without
    importing anything: `importlib.util.find_spec(module)` imports every parent package, which for
    Ray Train's context module is all of Ray Train, 0.7 s of each worker's start."""
    import importlib.util

    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations or not rest:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *rest[:-1], f"{rest[-1]}.py")
    return str(path) if path.is_file() else None


def quiet_worker_logs() -> None:
    """Ray worker setup hook: libraries' INFO lines, Ray Train's tracebacks of a failure (the run
    records them) and the cleaner's and autoscaling client's warnings stay out of the console."""
    names = [*QUIET_WORKER_LOGGERS]
    names += [path for path in map(module_file, QUIET_WORKER_LOGGER_MODULES) if path is not None]
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in FAILURE_MESSAGES:
        _add_filter(name, _drop_failure_message)
    # Their errors stay; their warnings repeat every second wherever the State API is missing,
    # on a joined cluster too (one started with `ray start` from a core install has no dashboard).
    for name in (PLACEMENT_GROUP_CLEANER_LOGGER, AUTOSCALING_CLIENT_LOGGER):
        _add_filter(name, _errors_only)


def quiet_local_cluster_logs() -> None:
    """Ray worker setup hook for a local cluster: as `quiet_worker_logs`, and names the cluster.

    The cleaner asks the State API without an address, which Ray resolves like `auto`: with another
    Ray instance running on the machine (another job, a test run) that raises "Found multiple active
    Ray instances", which the cleaner does not catch, and its thread dies printing the traceback.
    RAY_ADDRESS names this cluster for the State API in the worker processes of this cluster."""
    import ray

    quiet_worker_logs()
    if ray.is_initialized():  # always, in a worker
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def train_runtime_env(local_without_dashboard: bool) -> dict:
    """The `runtime_env` for `ray.init`. Values the caller set in the environment win.

    `local_without_dashboard`: the cluster is a local one that `fit` starts itself without the
    dashboard; the preemption watcher is then off. A cluster joined by address keeps it: it may
    have cloud nodes that get preempted. On both, the cleaner's and the autoscaling client's
    warnings are silenced (`quiet_worker_logs`).
    """
    env_vars = {HEALTH_CHECK_INTERVAL: os.environ.get(HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_INTERVAL_S)}
    env: dict = {"env_vars": env_vars, "worker_process_setup_hook": f"{__name__}.{quiet_worker_logs.__name__}"}
    if local_without_dashboard:
        env_vars[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
        env["worker_process_setup_hook"] = f"{__name__}.{quiet_local_cluster_logs.__name__}"
    return env
