"""Broken training videos: each is replaced by another (the dataset's `skip_broken`), its error
riding in the sample, and listed once in the run's skipped_videos.txt, whichever rank, feed or
restart of the run met it."""

from __future__ import annotations

import warnings
from pathlib import Path

SKIPPED_FILE = "skipped_videos.txt"


class SkippedVideos:
    """The broken videos one rank met in its batches (`error`: a line per video, `path: reason`),
    each once, held until the next checkpoint gathers them to rank 0."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.pending: list[str] = []

    def add(self, batch: dict) -> list[str]:
        """Notes `batch`'s broken videos; returns those not met before."""
        new = []
        for error in batch.get("error", ()):
            for line in filter(None, error.split("\n")):
                if line not in self.seen:
                    self.seen.add(line)
                    new.append(line)
        self.pending += new
        return new

    def take(self) -> list[str]:
        taken, self.pending = self.pending, []
        return taken


def warn_skipped(lines: list[str]) -> None:
    """Warns in the training worker, as the dataset itself warns where the DataLoader decodes
    (Ray Data's decode tasks keep quiet: their output would come prefixed by Ray)."""
    for line in lines:
        warnings.warn(f"skipping {line}", RuntimeWarning, stacklevel=2)


def record_skipped(run_dir: Path, lines: list[str]) -> None:
    """Appends to the run's list the lines it does not hold yet (a resumed run meets again the
    videos of the steps it repeats)."""
    path = Path(run_dir) / SKIPPED_FILE
    listed = set(path.read_text().splitlines()) if path.is_file() else set()
    new = [line for line in dict.fromkeys(lines) if line not in listed]
    if new:
        with path.open("a") as listing:
            listing.write("".join(f"{line}\n" for line in new))


def read_skipped(run_dir: Path) -> list[str]:
    path = Path(run_dir) / SKIPPED_FILE
    return path.read_text().splitlines() if path.is_file() else []
