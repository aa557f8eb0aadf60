"""What Ray prints on the console of the process that drives it (`train`, `demo`, the pipelines).

Our commands draw one progress bar per stage and print their own summaries. Ray's INFO lines
("Started a local Ray instance", Ray Train's start-up and per-report lines) would interleave with
them and say nothing a user acts on; they stay in the Ray session's log files, and Ray's warnings
and errors still reach the console.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _drop_auth_default_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


@contextlib.contextmanager
def without_auth_default_notice() -> Iterator[None]:
    """A Ray the job starts for itself gets token authentication by default, and says so on every
    start: a notice about the safe default, not something the user of a job has to act on. Ray's
    warning that a cluster runs *without* authentication still shows."""
    auth_logger = logging.getLogger(_AUTH_LOGGER)
    auth_logger.addFilter(_drop_auth_default_notice)
    try:
        yield
    finally:
        auth_logger.removeFilter(_drop_auth_default_notice)


@contextlib.contextmanager
def quiet_ray_console() -> Iterator[None]:
    """While it lasts, the `ray` logger's console handlers show warnings and errors only (and not
    the token-authentication default notice); their levels are restored afterwards."""
    import ray  # noqa: F401 - importing Ray gives the `ray` logger its console handler

    handlers = [h for h in logging.getLogger("ray").handlers if isinstance(h, logging.StreamHandler)]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        with without_auth_default_notice():
            yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


def quiet_ray_data() -> None:
    """For this process's Ray Data executions: the jobs and the training feed draw their own
    progress bar, and Ray Data's per-operator bars and logs would bury it."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    data_logger = logging.getLogger("ray.data")
    data_logger.setLevel(logging.WARNING)
    # Its console errors are full stack traces of what we report in one line (a failed plan
    # becomes JobAborted, a failed feed the worker's error); they stay in the session's ray-data.log.
    for handler in data_logger.handlers:
        if type(handler).__name__ != "SessionFileHandler" and isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)
