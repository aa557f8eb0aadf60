"""`spatiotemporal train` answers config mistakes with a clear message before starting Ray."""

from __future__ import annotations

import subprocess
import sys


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spatiotemporal.cli", "train", *args], capture_output=True, text=True, timeout=120)


def test_a_missing_config_file_is_named(tmp_path):
    done = _train(str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "nope.yaml: no such config file" in done.stdout


def test_a_misspelt_override_is_rejected(tmp_path):
    done = _train("configs/timesformer_tiny_synthetic_kinetics.yaml", "optim.lrr=0.1")
    assert done.returncode == 2 and "unknown key 'lrr'" in done.stdout


def test_every_shipped_config_loads():
    from pathlib import Path

    from spatiotemporal.train.config import load_config

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        assert load_config(path)["model"]["name"], path
