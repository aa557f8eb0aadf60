"""The runtime environment `fit` gives Ray: a local cluster runs without Train V2's cloud-only
helpers and without the placement-group cleaner's warning a second; a joined cluster keeps Ray's
defaults for those; on both, libraries' INFO lines stay out of the forwarded output; whatever
the caller set in the environment wins."""

from __future__ import annotations

import logging

import pytest

from spatiotemporal.train.config import load_config
from spatiotemporal.train.loop import fit
from spatiotemporal.train.ray_env import (
    AUTOSCALING_CLIENT_LOGGER,
    HEALTH_CHECK_INTERVAL,
    PLACEMENT_GROUP_CLEANER_LOGGER,
    PREEMPTION_WATCHER,
    quiet_worker_logs,
    train_runtime_env,
)

CLEANER_WARNING = "Failed to query Ray Train Controller actor state"


@pytest.fixture
def clean_environment(monkeypatch):
    monkeypatch.delenv(HEALTH_CHECK_INTERVAL, raising=False)
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    return monkeypatch


def test_a_local_cluster_runs_without_the_preemption_watcher_and_with_the_quieting_hook(clean_environment):
    env = train_runtime_env(local_without_dashboard=True)
    assert env["env_vars"] == {HEALTH_CHECK_INTERVAL: "0.2", PREEMPTION_WATCHER: "0"}
    assert env["worker_process_setup_hook"] == "spatiotemporal.train.ray_env.quiet_local_cluster_logs"


def test_a_joined_cluster_keeps_rays_defaults_but_the_health_check_interval(clean_environment):
    assert train_runtime_env(local_without_dashboard=False) == {
        "env_vars": {HEALTH_CHECK_INTERVAL: "0.2"},
        "worker_process_setup_hook": "spatiotemporal.train.ray_env.quiet_worker_logs",
    }


def test_values_the_caller_set_win(clean_environment):
    clean_environment.setenv(HEALTH_CHECK_INTERVAL, "1.5")
    clean_environment.setenv(PREEMPTION_WATCHER, "1")
    env = train_runtime_env(local_without_dashboard=True)
    assert env["env_vars"] == {HEALTH_CHECK_INTERVAL: "1.5", PREEMPTION_WATCHER: "1"}


def test_the_hook_silences_the_loggers_that_rays_cleaner_and_autoscaling_client_warn_through():
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.execution.controller import placement_group_cleaner
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client

    warning_only = [placement_group_cleaner.logger, autoscaling_coordinator_client.logger]
    loggers = [*warning_only, context.logger]
    before = [logger.level for logger in loggers]
    try:
        quiet_worker_logs()  # on a joined cluster as on a local one
        # The names still match Ray's modules.
        assert [logger.name for logger in warning_only] == [PLACEMENT_GROUP_CLEANER_LOGGER, AUTOSCALING_CLIENT_LOGGER]
        for logger in warning_only:
            assert not logger.filter(logger.makeRecord(logger.name, logging.WARNING, "f", 1, "busy", (), None))
            assert logger.filter(logger.makeRecord(logger.name, logging.ERROR, "f", 1, "broken", (), None))
        # "Reporting training result", logged through a logger Ray names by its file's path.
        assert not context.logger.isEnabledFor(logging.INFO) and context.logger.isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)
            logger.filters.clear()


def test_the_hook_drops_ray_trains_failure_tracebacks_but_keeps_the_same_loggers_other_warnings():
    from ray.train.v2._internal import util
    from ray.train.v2._internal.callbacks import backend_setup

    try:
        quiet_worker_logs()
        for logger, dropped in ((util.logger, "Error in training function:\nTraceback ..."),
                                (backend_setup.logger, "Graceful shutdown of backend failed. This is expected ...")):  # fmt: skip
            assert not logger.filter(logger.makeRecord(logger.name, logging.ERROR, "f", 1, dropped, (), None))
        hint = "`ray.train.report` has not been called by all 2 workers in the group."
        assert util.logger.filter(util.logger.makeRecord(util.logger.name, logging.WARNING, "f", 1, hint, (), None))
    finally:
        util.logger.filters.clear()
        backend_setup.logger.filters.clear()


def test_a_run_on_a_local_cluster_prints_no_cleaner_warnings(tiny_kinetics, tmp_path, capfd):
    import ray

    assert not ray.is_initialized()  # so that fit starts its own local cluster
    config = load_config(
        data={"model": {"name": "timesformer_tiny"}},
        overrides=[
            "name=quiet", f"output_dir={tmp_path}", f"data.root={tiny_kinetics}",
            "model.kwargs={num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 2, num_heads: 2}",
            "data.num_frames=4", "data.frame_stride=2", "data.crop_size=32", "data.short_side=32",
            "data.batch_size=2", "eval.views=1x1", "schedule.epochs=2",
        ],
    )  # fmt: skip
    final = fit(config)
    out, err = capfd.readouterr()
    assert "top1" in final
    assert "train quiet: 100%" in err  # the run's progress bar, drawn from the workers' progress
    assert CLEANER_WARNING not in out + err
