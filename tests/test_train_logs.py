"""The training log after a restart or a resume: metrics.jsonl and TensorBoard both hold each step
once, those up to the restored checkpoint's step from before and the rest from after."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spatiotemporal.train.logs import MetricsLog, read_metrics


def log_steps(run_dir, steps, resume_step=None, offset=0.0) -> None:
    log = MetricsLog(run_dir, resume_step=resume_step)
    for step in steps:
        log.write({"split": "train", "step": step, "loss": offset + step})
    log.close()


def tensorboard_losses(run_dir) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("train/loss")]


def test_a_resume_from_step_2_keeps_steps_1_and_2_and_takes_3_and_4_from_the_new_attempt(tmp_path):
    log_steps(tmp_path, [1, 2, 3])  # died after logging step 3, whose checkpoint it never finished
    log_steps(tmp_path, [3, 4], resume_step=2, offset=10.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    assert tensorboard_losses(tmp_path) == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_a_restart_with_no_checkpoint_logs_from_the_beginning_once(tmp_path):
    log_steps(tmp_path, [1, 2])
    log_steps(tmp_path, [1, 2, 3], offset=10.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 11.0), (2, 12.0), (3, 13.0)]
    assert tensorboard_losses(tmp_path) == [(1, 11.0), (2, 12.0), (3, 13.0)]


def test_a_resume_whose_metrics_file_is_gone_keeps_the_tensorboard_events_before_it(tmp_path):
    log_steps(tmp_path, [1, 2, 3])
    (tmp_path / "metrics.jsonl").unlink()
    log_steps(tmp_path, [3], resume_step=2, offset=10.0)
    assert tensorboard_losses(tmp_path) == [(1, 1.0), (2, 2.0), (3, 13.0)]
