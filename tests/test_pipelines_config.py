"""Jobs as YAML: a key the job does not take is one error line naming the file, the key and the
keys it does take; the stall timeout is a setting (file key, override or --stall-timeout), > 0."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pipelines.config import load_config, run_config  # noqa: E402
from pipelines.inputs import list_inputs  # noqa: E402
from pipelines.job import read_table, run_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv/bin/spatiotemporal")
TOKENIZE_KEYS = ("address, frames, input, num_cpus, output, progress, resume, retry_failed, shard_rows, "
                 "size, stall_timeout_s, stride, timeout_s, tubelet, voxel_size")
# Ray's workers cannot import this test module: its plans travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "pipeline", *args], capture_output=True, text=True, timeout=120)


# -- unknown keys ------------------------------------------------------------------------------


def test_a_mistyped_key_in_the_file_names_the_file_the_key_and_the_accepted_keys(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: tokenize\nframez: 8\n")
    with pytest.raises(ValueError) as caught:
        load_config(config, ["input=/x", "output=/y"])
    assert str(caught.value) == f"{config}: unknown key 'framez' for job tokenize; accepted keys: {TOKENIZE_KEYS}"


def test_a_mistyped_override_says_it_came_from_the_command_line(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: video_inference\nmodel: vivit_tiny\n")
    with pytest.raises(ValueError, match=r"job\.yaml: unknown key 'wokers' \(given as wokers=2\) for job "
                                         r"video_inference; accepted keys: address, backend, batch_size, checkpoint, "):
        load_config(config, ["wokers=2"])


def test_the_cli_reports_an_unknown_key_in_one_line_with_exit_code_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: tokenize\nframes: 8\n")
    run = cli("run", str(config), f"input={tmp_path}", f"output={tmp_path / 'out'}", "strid=2")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"error: {config}: unknown key 'strid' (given as strid=2) for job tokenize; accepted keys: {TOKENIZE_KEYS}"
    ]
    assert not (tmp_path / "out").exists()


def test_the_shipped_configs_hold_only_keys_their_jobs_take():
    configs = sorted((ROOT / "configs" / "pipelines").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"video_inference", "point_inference", "tokenize"}
    for config in configs:
        load_config(config, ["input=/x", "output=/y"])


# -- stall timeout -----------------------------------------------------------------------------


def _never(batch: dict) -> dict:
    return batch


def plan_needing_a_missing_resource(dataset):
    """A plan the cluster can never schedule, as when the nodes holding its resource are gone."""
    return dataset.map_batches(_never, batch_format="numpy", resources={"node_that_left": 1})


def test_a_job_that_stalls_stops_after_the_configured_timeout_and_records_the_rest(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    start = time.perf_counter()
    # No ray_cluster fixture: the job starts (and so shuts down) its own Ray, which also ends
    # the stuck plan.
    summary = run_job("t", list_inputs(tmp_path, (".mp4",)), tmp_path / "out", plan_needing_a_missing_resource,
                      num_cpus=1, progress=False, stall_timeout_s=3)
    # Ray's start included: well short of the driver's own backstop (60 s after the timeout), so
    # Ray Data's guard stopped the execution, and its tasks, itself.
    assert time.perf_counter() - start < 60
    assert (summary.ok, summary.failed) == (0, 1)
    assert read_table(tmp_path / "out", "failures")["error"].tolist() == [
        "not finished: the job made no progress for 3 s (cluster stalled; see --stall-timeout)"
    ]
    # Nothing of the stalled execution lives on: an executor left running would find its Ray gone
    # and start a new one (it did, 2-3 s after the job returned).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert not ray.is_initialized()
        time.sleep(0.5)


@pytest.mark.parametrize("value", [0, -5, float("nan")])
def test_a_stall_timeout_that_is_not_positive_is_refused_before_anything_runs(tmp_path, value):
    (tmp_path / "a.mp4").write_bytes(b"x")
    config = tmp_path / "job.yaml"
    config.write_text(f"job: tokenize\nstall_timeout_s: {value}\n")
    with pytest.raises(ValueError, match=r"^stall_timeout_s must be a number of seconds > 0, got "):
        run_config(config, [f"input={tmp_path}", f"output={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", ["video_inference", "point_inference", "tokenize"])
def test_every_job_takes_the_stall_timeout_as_a_config_key(tmp_path, job):
    config = tmp_path / "job.yaml"
    config.write_text(f"job: {job}\nstall_timeout_s: 60\n")
    assert load_config(config, ["stall_timeout_s=120"])[1] == {"stall_timeout_s": 120}


@pytest.mark.parametrize("command", ["video-inference", "point-inference", "tokenize"])
def test_the_cli_documents_and_validates_stall_timeout(tmp_path, command):
    help_text = " ".join(cli(command, "--help").stdout.split())
    assert "--stall-timeout SECONDS" in help_text and "(default 900;" in help_text
    model = [] if command == "tokenize" else ["--model", "vivit_tiny"]
    run = cli(command, "--input", str(tmp_path), "--output", str(tmp_path / "out"), *model, "--stall-timeout", "0")
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].endswith(
        "error: argument --stall-timeout: must be a number of seconds > 0, got '0'"
    )
    assert not (tmp_path / "out").exists()


def test_the_cli_passes_stall_timeout_to_the_job():
    from pipelines.arguments import job_kwargs
    from spatiotemporal.cli import build_parser

    argv = ["pipeline", "tokenize", "--input", "x", "--output", "y"]
    assert job_kwargs(build_parser(argv).parse_args(argv))["stall_timeout_s"] == 900.0
    argv += ["--stall-timeout", "42.5"]
    assert job_kwargs(build_parser(argv).parse_args(argv))["stall_timeout_s"] == 42.5


def test_a_config_that_is_not_yaml_is_one_error_line(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("job: tokenize\nframes: [4\n")
    run = cli("run", str(config))
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"error: {config}: not valid YAML: while parsing a flow sequence")
    run = cli("run", str(ROOT / "configs/pipelines/tokenize.yaml"), "frames=[4")
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: override 'frames=[4': the value is not valid YAML: ")


def test_the_cli_default_is_the_jobs_default():
    from pipelines import arguments, job

    assert arguments.DEFAULT_STALL_TIMEOUT_S == job.DEFAULT_STALL_TIMEOUT_S == 900.0
