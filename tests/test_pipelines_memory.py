"""Streaming: a job's memory does not grow with the number of inputs (100 vs 1000)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from pipelines import tokenize  # noqa: E402
from pipelines.job import read_table  # noqa: E402

# Peak memory of the whole job (driver + every Ray process) may grow by at most this much when the
# input count grows tenfold. Buffering all rows or results of the bigger run would cost far more:
# 900 extra clips of tokens plus their decode state.
BOUND_MB = 150


class PeakMemory:
    """Peak summed RSS of this process and its children (the local Ray it started), sampled."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    yield
    ray.shutdown()


def manifest(tmp_path: Path, clip: Path, count: int) -> Path:
    path = tmp_path / f"manifest_{count}.csv"
    path.write_text("id,path\n" + "".join(f"clip{i:05d},{clip}\n" for i in range(count)))
    return path


@pytest.mark.slow
def test_memory_stays_flat_from_100_to_1000_inputs(ray_cluster, tmp_path):
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=10",
                    "-t", "0.4", "-pix_fmt", "yuv420p", str(clip)], check=True)
    kwargs = dict(frames=2, stride=1, size=16, tubelet=(1, 16, 16), shard_rows=64, progress=False)
    # Warm-up: start the worker processes, so both measured runs see the same set.
    tokenize.run(manifest(tmp_path, clip, 20), tmp_path / "warm", **kwargs)
    peaks = {}
    for count in (100, 1000):
        with PeakMemory() as memory:
            summary = tokenize.run(manifest(tmp_path, clip, count), tmp_path / f"out{count}", **kwargs)
        assert (summary.ok, summary.failed) == (count, 0)
        assert len(read_table(tmp_path / f"out{count}")) == count
        peaks[count] = memory.peak / 2**20
    growth = peaks[1000] - peaks[100]
    print(f"peak memory: {peaks[100]:.0f} MiB for 100 inputs, {peaks[1000]:.0f} MiB for 1000 (+{growth:.0f} MiB)")
    assert growth < BOUND_MB
