"""Joining a cluster started as the README says: `ray start --head` on one machine, `ray start
--address` on the others, token authentication on as Ray's default makes it (a token in
~/.ray/auth_token when the head starts). Our commands join it with `--address` when given the
token, and refuse in one line (exit 2, nothing written) when they cannot join it.

The cluster runs on loopback, its two nodes started as subprocesses in process groups of their
own, and is stopped by killing those groups: never `ray stop`, which stops every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
# Ray's own settings of the caller, which would otherwise decide how the commands connect.
RAY_CLIENT_SETTINGS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
REFUSAL_SECONDS = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(**settings: str) -> dict[str, str]:
    """This process's environment without Ray's connection settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in RAY_CLIENT_SETTINGS}
    env.setdefault("SPATIOTEMPORAL_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    return {**env, **settings}


@dataclass
class TokenCluster:
    address: str  # the head's GCS, host:port
    client_address: str  # its Ray Client server, ray://host:port
    token_path: Path

    def with_token(self) -> dict[str, str]:
        return client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))


def _ray_start(args: list[str], env: dict[str, str], groups: list[int]) -> None:
    # A session of its own: the node's daemons stay in this process group after `ray start` exits.
    start = subprocess.Popen([RAY, "start", *args, "--disable-usage-stats"], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    groups.append(start.pid)
    output, _ = start.communicate(timeout=180)
    assert start.returncode == 0, output[-3000:]


def _stop(groups: list[int]) -> None:
    for group in reversed(groups):
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for group in groups:
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory) -> TokenCluster:
    """Two nodes on loopback. The head is started without RAY_AUTH_MODE: it turns token
    authentication on by itself because `ray get-auth-token --generate` left a token in the
    (test's own) ~/.ray; the second node needs RAY_AUTH_MODE=token to join, as users' do."""
    home = tmp_path_factory.mktemp("home")
    env = {**client_env(), "HOME": str(home)}
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120)
    token_path = home / ".ray" / "auth_token"
    assert token_path.stat().st_size > 0
    # Short: the nodes' Unix sockets live under it, and their paths may not exceed 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")
    port, client_port = free_port(), free_port()
    groups: list[int] = []
    try:
        # CPU only (--num-gpus 0) on any machine: what `--device cuda` is refused on.
        _ray_start(["--head", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", temp_dir,
                    "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                    "--ray-client-server-port", str(client_port),
                    "--dashboard-agent-listen-port", str(free_port())], env, groups)
        _ray_start(["--address", f"127.0.0.1:{port}", "--num-cpus", "1", "--num-gpus", "0",
                    "--dashboard-agent-listen-port", str(free_port())], {**env, "RAY_AUTH_MODE": "token"}, groups)
        yield TokenCluster(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", token_path)
    finally:
        _stop(groups)
        shutil.rmtree(temp_dir, ignore_errors=True)


def spatiotemporal(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spatiotemporal.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def commands(address: str, out: Path, video_dir: Path, tiny_kinetics: Path) -> dict[str, list[str]]:
    """Each entry point that starts or joins Ray, writing to OUT, pointed at `address`."""
    return {
        "pipeline video-inference": ["pipeline", "video-inference", "--input", str(video_dir), "--output", str(out),
                                     "--model", "vivit_tiny", "--random-weights", "--views", "1x1", "--quiet",
                                     "--address", address],
        "pipeline tokenize": ["pipeline", "tokenize", "--input", str(video_dir), "--output", str(out),
                              "--quiet", "--address", address],
        "train": ["train", "configs/timesformer_tiny_synthetic_kinetics.yaml", f"output_dir={out}",
                  f"data.root={tiny_kinetics}", "--address", address],
        "prepare kinetics": ["prepare", "kinetics", str(video_dir), str(out), "--address", address],
        "prepare scannet": ["prepare", "scannet", str(tiny_kinetics), str(out), "--address", address],
    }


COMMANDS = ("pipeline video-inference", "pipeline tokenize", "train", "prepare kinetics", "prepare scannet")


def assert_refused_in_one_line(done: subprocess.CompletedProcess, seconds: float, out: Path, expected: str) -> None:
    said = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, said[-20:]
    # On stderr, as every command's `error:` lines; no Ray C++ retry lines, warnings or traceback.
    assert (done.stdout, done.stderr) == ("", f"error: {expected}\n")
    assert seconds < REFUSAL_SECONDS
    assert not out.exists()  # no results, no failures, no run directory


TOKEN_REQUIRED = ("the cluster requires token authentication; set RAY_AUTH_MODE=token and give the cluster's "
                  "token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
NOTHING_AT_PORT = "nothing answers there (is `ray start --head` running there, and is this its --port?)"
NOTHING_AT_CLIENT_PORT = ("nothing answers there (is `ray start --head` running there, and is this its "
                          "--ray-client-server-port?)")


@pytest.mark.slow
def test_a_pipeline_joined_with_the_token_runs_every_input(token_cluster, video_dir, tmp_path):
    out = tmp_path / "out"
    done = spatiotemporal(commands(token_cluster.address, out, video_dir, tmp_path)["pipeline video-inference"],
                          token_cluster.with_token())
    assert done.returncode == 1, done.stderr[-3000:]  # corrupted.mp4 cannot be decoded
    assert "3 ok, 1 failed, 0 skipped of 4 inputs" in done.stderr
    from pipelines.job import read_table

    assert sorted(read_table(out, "results")["id"]) == ["cockatoo.mp4", "flipping_a_pancake.mkv", "rotated_90.mov"]
    assert list(read_table(out, "failures")["id"]) == ["corrupted.mp4"]


@pytest.mark.slow
def test_training_joined_with_the_token_trains_and_evaluates(token_cluster, tiny_kinetics, tmp_path):
    args = ["train", "configs/timesformer_tiny_synthetic_kinetics.yaml", "name=joined", f"output_dir={tmp_path}",
            f"data.root={tiny_kinetics}", "schedule.epochs=1", "schedule.warmup_epochs=0", "train.eval_every=1",
            "model.kwargs={num_frames: 4, image_size: 32, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2}",
            "data.num_frames=4", "data.batch_size=4", "eval.views=1x1", "ray.num_workers=1",
            "--address", token_cluster.address]
    done = spatiotemporal(args, token_cluster.with_token())
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    from spatiotemporal.train.logs import read_metrics

    rows = read_metrics(tmp_path / "joined" / "metrics.jsonl")
    assert [row["split"] for row in rows][-1] == "val"
    assert (tmp_path / "joined" / "eval_kinetics.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_without_the_token_a_command_is_refused_in_one_line(command, token_cluster, video_dir, tiny_kinetics, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    done = spatiotemporal(commands(token_cluster.address, out, video_dir, tiny_kinetics)[command], client_env(),
                          timeout=120)
    assert_refused_in_one_line(
        done, time.monotonic() - start, out, f"cannot join the Ray cluster at {token_cluster.address}: {TOKEN_REQUIRED}"
    )


@pytest.mark.slow
def test_a_wrong_token_is_refused_in_one_line(token_cluster, video_dir, tiny_kinetics, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    env = client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-clusters-token")
    done = spatiotemporal(commands(token_cluster.address, out, video_dir, tiny_kinetics)["pipeline video-inference"], env,
                          timeout=120)
    assert_refused_in_one_line(
        done, time.monotonic() - start, out,
        f"cannot join the Ray cluster at {token_cluster.address}: the cluster refused the token from "
        "RAY_AUTH_TOKEN; give the token the cluster was started with",
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_port_where_no_cluster_listens_is_refused_in_one_line(command, video_dir, tiny_kinetics, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.monotonic()
    done = spatiotemporal(commands(address, out, video_dir, tiny_kinetics)[command], client_env(),
                          timeout=120)
    assert_refused_in_one_line(done, time.monotonic() - start, out, f"cannot join the Ray cluster at {address}: {NOTHING_AT_PORT}")


def test_a_cluster_on_other_versions_is_named_with_both_versions():
    import ray
    from ray._private.utils import compute_version_info

    from spatiotemporal.cluster import version_mismatch

    _, python = compute_version_info()
    assert version_mismatch({"ray_version": ray.__version__, "python_version": python}) is None
    assert version_mismatch({"ray_version": "2.9.3", "python_version": python}) == (
        f"the cluster runs Ray 2.9.3 on Python {python}, this process Ray {ray.__version__} on Python {python}; "
        "run both on the same versions"
    )


# The probe itself, in this process: it uses Ray's private gRPC helpers, so a Ray release that
# moves them fails here, in the fast suite, rather than only in the slow tests above.


def test_a_port_where_nothing_listens_is_refused_by_the_probe():
    from spatiotemporal.cluster import ClusterJoinError, check_cluster

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterJoinError) as refused:
        check_cluster(address)
    assert str(refused.value) == f"cannot join the Ray cluster at {address}: {NOTHING_AT_PORT}"


def test_a_host_name_that_does_not_resolve_is_named_as_such():
    from spatiotemporal.cluster import ClusterJoinError, check_cluster

    with pytest.raises(ClusterJoinError) as refused:
        check_cluster("ray-head.example.invalid:6379")  # .invalid never resolves (RFC 2606)
    assert str(refused.value) == (
        "cannot join the Ray cluster at ray-head.example.invalid:6379: cannot resolve ray-head.example.invalid "
        "(no such host name here)"
    )


def test_an_unreadable_token_file_is_named_once_in_a_short_line(tmp_path):
    address = "raycluster-kuberay-head-svc.ray-system.svc.cluster.local:6379"
    token_path = "/var/run/secrets/ray-cluster-credentials/production/kuberay/raycluster-kuberay/auth_token"
    probe = "from spatiotemporal.cluster import check_cluster; import sys; check_cluster(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", probe, address], cwd=ROOT, capture_output=True, text=True,
                          env=client_env(HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path),
                          timeout=120)
    error = done.stderr.strip().splitlines()[-1]
    line = (f"cannot join the Ray cluster at {address}: RAY_AUTH_TOKEN_PATH is set but file cannot be opened or "
            f"is empty: {token_path}")
    assert error == f"spatiotemporal.cluster.ClusterJoinError: {line}"
    assert len(line) <= 300  # Ray named the source: none of its advice, nor ours, follows


def test_local_means_a_private_ray_whether_given_or_in_ray_address(monkeypatch):
    from spatiotemporal.cluster import cluster_address, cluster_to_join

    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(None) is None
    assert cluster_address("local") is None
    assert cluster_to_join("local") is None  # nothing to check, nothing to join
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address("local") is None  # given wins over RAY_ADDRESS
    assert cluster_address(None) == "10.0.0.1:6379"


def test_a_training_config_names_its_cluster_before_it_is_loaded(tmp_path):
    from spatiotemporal.train.config import merged_config

    config = tmp_path / "run.yaml"
    config.write_text("model: {name: timesformer_tiny}\nray: {address: 'head:6379'}\n")
    assert merged_config(str(config), [])["ray"]["address"] == "head:6379"
    assert merged_config(str(config), ["ray.address=other:6379"])["ray"]["address"] == "other:6379"
    # A config that cannot be read names no cluster: `train` says what is wrong with it, as load_config would.
    with pytest.raises(FileNotFoundError, match="no such config file"):
        merged_config(str(tmp_path / "missing.yaml"), [])


def test_a_cluster_checked_earlier_in_the_process_is_asked_again(monkeypatch):
    # A run that checked the cluster and was then refused for another reason (a bad --model) never
    # joined it; the next run in the process must ask again, not meet Ray's 20 s of retries.
    from spatiotemporal import cluster

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(cluster, "check_cluster", lambda address: None)  # it answered then
    assert cluster.cluster_to_join(address) == address
    monkeypatch.undo()  # and is gone now
    start = time.monotonic()
    with pytest.raises(cluster.ClusterJoinError) as refused:
        cluster.cluster_to_join(address)
    assert str(refused.value) == f"cannot join the Ray cluster at {address}: {NOTHING_AT_PORT}"
    assert time.monotonic() - start < REFUSAL_SECONDS


def test_the_cli_reports_a_cluster_it_cannot_join_in_one_line_on_stderr(tmp_path, capsys, monkeypatch):
    from spatiotemporal.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    assert main(["prepare", "scannet", str(tmp_path), str(out), "--address", address]) == 2
    assert capsys.readouterr() == ("", f"error: cannot join the Ray cluster at {address}: {NOTHING_AT_PORT}\n")
    assert not out.exists()


@pytest.mark.slow
def test_local_in_ray_address_runs_the_job_on_a_private_ray(video_dir, tmp_path):
    out = tmp_path / "out"
    done = spatiotemporal(["pipeline", "tokenize", "--input", str(video_dir), "--output", str(out), "--quiet",
                           "--num-cpus", "1"], client_env(RAY_ADDRESS="local"))
    assert done.returncode == 1, done.stderr[-3000:]  # corrupted.mp4 cannot be decoded
    assert "3 ok, 1 failed, 0 skipped of 4 inputs" in done.stderr


@pytest.mark.slow
def test_a_ray_client_address_where_nothing_listens_is_refused_in_one_line(video_dir, tiny_kinetics, tmp_path):
    address = f"ray://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.monotonic()
    done = spatiotemporal(commands(address, out, video_dir, tiny_kinetics)["pipeline tokenize"], client_env(),
                          timeout=120)
    assert_refused_in_one_line(done, time.monotonic() - start, out,
                               f"cannot join the Ray cluster at {address}: {NOTHING_AT_CLIENT_PORT}")


@pytest.mark.slow
def test_a_ray_client_address_without_the_token_is_refused_in_one_line(token_cluster, video_dir, tiny_kinetics,
                                                                        tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    done = spatiotemporal(commands(token_cluster.client_address, out, video_dir, tiny_kinetics)["pipeline tokenize"],
                          client_env(), timeout=120)
    assert_refused_in_one_line(done, time.monotonic() - start, out,
                               f"cannot join the Ray cluster at {token_cluster.client_address}: {TOKEN_REQUIRED}")


@pytest.mark.slow
def test_auto_with_a_token_file_here_is_refused_in_one_line(video_dir, tiny_kinetics, tmp_path):
    # A token file in ~/.ray turns token authentication on for `auto`, as ray.init does; Ray's
    # notice that it did so would be a second line. RAY_ADDRESS is where `auto` looks first.
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-of-this-machine\n")
    gcs = f"127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.monotonic()
    done = spatiotemporal(commands("auto", out, video_dir, tiny_kinetics)["pipeline tokenize"],
                          client_env(HOME=str(home), RAY_ADDRESS=gcs), timeout=120)
    from ray._private.services import canonicalize_bootstrap_address_or_die

    found = canonicalize_bootstrap_address_or_die(gcs)  # as Ray names loopback: this node's address
    assert_refused_in_one_line(done, time.monotonic() - start, out,
                               f"cannot join the Ray cluster at auto ({found}): {NOTHING_AT_PORT}")


@pytest.mark.slow
def test_a_training_config_naming_a_cluster_that_is_not_there_is_refused_first(tmp_path):
    import yaml

    address = f"127.0.0.1:{free_port()}"
    settings = yaml.safe_load((ROOT / "configs" / "timesformer_tiny_synthetic_kinetics.yaml").read_text())
    settings["ray"] = {**settings.get("ray", {}), "address": address}
    config = tmp_path / "joined.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "runs"
    start = time.monotonic()
    # The cluster is asked before the config is loaded (torch), so before its data root is looked at.
    done = spatiotemporal(["train", str(config), f"output_dir={out}", f"data.root={tmp_path / 'no-data'}"],
                          client_env(), timeout=120)
    assert_refused_in_one_line(done, time.monotonic() - start, out,
                               f"cannot join the Ray cluster at {address}: {NOTHING_AT_PORT}")


@pytest.mark.slow
def test_cuda_on_a_cpu_only_cluster_is_refused_alike_by_address_or_ray_address(token_cluster, video_dir, tmp_path):
    said = {}
    for given in ("--address", "RAY_ADDRESS"):
        out = tmp_path / given
        args = commands(token_cluster.address, out, video_dir, tmp_path)["pipeline video-inference"] + ["--device", "cuda"]
        env = token_cluster.with_token()
        if given == "RAY_ADDRESS":
            args = args[: args.index("--address")] + args[args.index("--address") + 2:]
            env["RAY_ADDRESS"] = token_cluster.address
        done = spatiotemporal(args, env, timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        said[given] = done.stderr.strip().splitlines()[-1]
    assert said["RAY_ADDRESS"] == said["--address"] == (
        f"error: --device cuda: no CUDA device is available (the Ray cluster at {token_cluster.address} has no GPU)"
    )
