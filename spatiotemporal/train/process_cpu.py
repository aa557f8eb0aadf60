"""CPU seconds a block of work costs across every process it starts.

A Ray job's work runs in processes that are not this one's waitable children (GCS, raylet,
workers, actors), so `RUSAGE_CHILDREN` never sees them. `ProcessTreeCPU` instead polls the whole
process tree in a background thread and keeps each process's last reading; a process that exits
between two polls loses at most one interval (0.2 s by default) of its time.
"""

from __future__ import annotations

import threading
import time

import psutil


class ProcessTreeCPU:
    """`with ProcessTreeCPU() as cpu: ...` then `cpu.seconds` (user + system, this process and all
    descendants), `cpu.own` (this process alone), `cpu.descendants` and `cpu.wall`."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._me = psutil.Process()
        self._last: dict[tuple[int, float], float] = {}  # (pid, start time): pids are reused
        self._stop = threading.Event()

    def _poll(self) -> None:
        for proc in self._me.children(recursive=True):
            try:
                times = proc.cpu_times()
                self._last[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.Error:  # exited between listing and reading
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> ProcessTreeCPU:
        self._poll()
        self._before = dict(self._last)
        own = self._me.cpu_times()
        self._own_before = own.user + own.system
        self._wall_before = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        own = self._me.cpu_times()
        self.own = own.user + own.system - self._own_before
        self.descendants = sum(t - self._before.get(key, 0.0) for key, t in self._last.items())
        self.seconds = self.own + self.descendants
        self.wall = time.perf_counter() - self._wall_before
