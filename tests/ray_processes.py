"""Tests' helpers for fault tests on a Ray cluster of this machine: its worker processes, found by
their titles, and waiting for a condition with a deadline."""

from __future__ import annotations

import time
from pathlib import Path

import psutil


def worker_processes(marker: str) -> list[psutil.Process]:
    """Ray workers of this test's own cluster (its raylets are our children) whose process
    title names `marker`; other people's Ray processes on the machine are never touched."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if cmdline.startswith("ray::") and marker in cmdline:
            found.append(proc)
    return found


def wait_until(condition, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Polls `condition` until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())


def forget_as_current(cluster) -> None:
    """Ray records the newest cluster in /tmp/ray/ray_current_cluster, and a bare ray.init()
    anywhere else on a shared machine would then try to attach to this test's cluster."""
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and current.read_text().strip() == cluster.address:
        current.unlink()
