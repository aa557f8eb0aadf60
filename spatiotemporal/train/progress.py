"""The training progress bar, drawn by the process that called `fit`.

Ray forwards what its workers print line by line, each prefixed with the worker's name and pid,
so a bar drawn in a worker reaches the console as a new line per update. Rank 0 instead records
where it is in `progress.json` of the run directory, and the caller's process draws one bar from it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

PROGRESS_FILE = "progress.json"


def write_progress(run_dir: Path, step: int, total_steps: int, **postfix: str) -> None:
    """Rank 0: the step reached of `total_steps`, and what the bar shows beside it (loss, phase)."""
    path = Path(run_dir) / PROGRESS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, "total_steps": total_steps, "postfix": postfix}))
    os.replace(tmp, path)  # the follower never reads half a file


def read_progress(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


class FollowProgress:
    """`with FollowProgress(run_dir, "train name"): trainer.fit()` draws rank 0's progress as one
    tqdm bar on stderr, polling `progress.json` every `interval` seconds, and prints one line above
    it for each failure of the workers that the controller records (see failures.py)."""

    def __init__(self, run_dir: Path, desc: str, interval: float = 0.5):
        self.run_dir, self.desc, self.interval = Path(run_dir), desc, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)
        self._bar = None
        self._failures_shown = 0

    def _update(self) -> None:
        from tqdm import tqdm

        from spatiotemporal.train.failures import failure_line, read_failures

        for row in read_failures(self.run_dir)[self._failures_shown :]:
            tqdm.write(failure_line(row), file=sys.stderr)  # above the bar, which tqdm draws on stderr
            self._failures_shown += 1
        state = read_progress(self.run_dir)
        if state is None:
            return
        if self._bar is None:
            self._bar = tqdm(total=state["total_steps"], initial=state["step"], desc=self.desc, unit="step", dynamic_ncols=True)
        self._bar.total = state["total_steps"]
        # After a restart the workers start again from the latest checkpoint, behind the bar.
        self._bar.n = state["step"]
        self._bar.set_postfix(state["postfix"], refresh=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def __enter__(self) -> FollowProgress:
        (self.run_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a previous run's position
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self._bar is not None:
            self._bar.close()
