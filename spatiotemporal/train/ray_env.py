"""The runtime environment `fit` gives the Ray cluster it starts or joins.

Ray Train V2 runs a controller and a few helper actors beside the training workers. Their defaults
suit a cloud cluster; on a 2-core machine they spend CPU that the training needs and fill the
output with a warning a second. Each setting below says which default it changes and why.
"""

from __future__ import annotations

import logging
import os

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


def silence_placement_group_cleaner() -> None:
    """Ray worker setup hook: keeps the cleaner's errors, drops its once-a-second warning."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def train_runtime_env(local_without_dashboard: bool) -> dict:
    """The `runtime_env` for `ray.init`. Values the caller set in the environment win.

    `local_without_dashboard`: the cluster is a local one that `fit` starts itself without the
    dashboard; the preemption watcher is then off and the cleaner's warning silenced. A cluster
    joined by address keeps Ray's defaults for both: it may have cloud nodes and a dashboard.
    """
    env_vars = {HEALTH_CHECK_INTERVAL: os.environ.get(HEALTH_CHECK_INTERVAL, DEFAULT_HEALTH_CHECK_INTERVAL_S)}
    env: dict = {"env_vars": env_vars}
    if local_without_dashboard:
        env_vars[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
        env["worker_process_setup_hook"] = f"{__name__}.{silence_placement_group_cleaner.__name__}"
    return env
