"""The reader must not leak: one reader kept open, as a long-running decoder keeps it, reads
random clips while its process's RSS (psutil) stays within a stated bound.

RSS is sampled between reads, after each read's output is dropped, so what is measured is memory
the reader keeps, not the clip it just returned. A warm-up comes first: allocator pools, decoder
buffers and frame threads settle in during the first reads and stay.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from spatiotemporal.io.video import VideoReader

CLIP, STRIDE = 16, 4


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def random_clips(count: int, num_frames: int, seed: int) -> list[list[int]]:
    """`count` clips of 16 frames 4 apart, each from a random start."""
    span = CLIP * STRIDE
    starts = np.random.default_rng(seed).integers(0, num_frames - span + 1, count)
    return [list(range(int(s), int(s) + span, STRIDE)) for s in starts]


def rss_growth(read: Callable[[list[int]], None], clips: list[list[int]], warmup: int) -> float:
    """Highest RSS after any read past the warm-up, minus RSS after the warm-up, in MiB."""
    baseline = peak = 0.0
    for n, indices in enumerate(clips):
        read(indices)
        if n == warmup - 1:
            baseline = peak = rss_mib()
        elif n >= warmup:
            peak = max(peak, rss_mib())
    return peak - baseline


def open_quietly(path: Path, **kwargs) -> VideoReader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cockatoo: "decoding with PyAV instead"
        return VideoReader(path, **kwargs)


# RSS may grow by at most this much over the 250 reads that follow a 50-read warm-up. Each read
# returns 44 MiB (16 frames of 1280x720 rgb24); keeping one decoded frame per read (2.6 MiB), or
# leaking as little as 0.26 MiB per read, crosses it. (500 reads took 2.4 minutes of `make test`
# once PyAV became the default reader.)
COCKATOO_BOUND_MIB = 64.0
COCKATOO_WARMUP, COCKATOO_READS = 50, 250


@pytest.mark.slow
def test_default_reader_rss_stays_within_64_mib_over_250_random_cockatoo_clips(video_dir):
    """250 random 16x4 clips of the 720p sample (after 50 warm-up reads) through one open default
    reader (PyAV): RSS grows by at most 64 MiB."""
    path = video_dir / "cockatoo.mp4"
    clips = random_clips(COCKATOO_WARMUP + COCKATOO_READS, 280, seed=2)
    with open_quietly(path) as reader:

        def read(indices: list[int]) -> None:
            assert reader.get_frames(indices).shape == (CLIP, 720, 1280, 3)

        growth = rss_growth(read, clips, COCKATOO_WARMUP)
    assert growth <= COCKATOO_BOUND_MIB, f"RSS grew {growth:.1f} MiB over {COCKATOO_READS} reads"


def in_fresh_interpreter(fn: Callable, *args):
    """`fn(*args)` in a new Python process: in the suite's own process, hundreds of earlier tests
    leave the heap holding freed pages, which absorb what a measured loop keeps (a 190 MiB leak
    once measured as 0 MiB of growth there) or add tens of MiB of noise."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _growth_keeping_every_clip(path: Path) -> float:
    kept: list[torch.Tensor] = []
    with VideoReader(path) as reader:
        return rss_growth(lambda indices: kept.append(reader.get_frames(indices)), random_clips(42, 310, seed=4), 2)


def test_the_rss_check_fails_on_a_leak(video_dir):
    """The measurement sees a leak: the same loop, keeping every clip it reads (4.7 MiB each, a
    cache that never evicts: 190 MiB over 40 reads), passes the 64 MiB bound. Measured in a fresh
    interpreter (`in_fresh_interpreter`); freed pages from the warm-up still absorb part of what is
    kept, so the margin is wide on purpose."""
    assert in_fresh_interpreter(_growth_keeping_every_clip, video_dir / "flipping_a_pancake.mkv") > COCKATOO_BOUND_MIB


# decord's leak shows while the caller is busy between reads: its decoder thread decodes ahead
# and keeps the frames (tens of MiB per pause on 426x240, hundreds on 720p), some of which the
# next read's seek gives back. Rewinding right after each read stops it. Bounded here: what the
# pauses add to RSS, all together, and the growth over the loop.
DECORD_PAUSE_S = 0.25
DECORD_PAUSES_BOUND_MIB = 16.0
DECORD_BOUND_MIB = 32.0


def _decord_reads_with_pauses(path: Path) -> tuple[str, float, float]:
    """(backend, RSS growth, RSS the pauses added) over 25 paused reads after 5 warm-up reads."""
    pauses: list[float] = []
    with VideoReader(path, backend="decord") as reader:

        def read_then_pause(indices: list[int]) -> None:
            assert reader.get_frames(indices).shape == (CLIP, 240, 426, 3)
            before = rss_mib()
            time.sleep(DECORD_PAUSE_S)
            pauses.append(rss_mib() - before)

        growth = rss_growth(read_then_pause, random_clips(30, 310, seed=5), 5)
        backend = reader.backend
    return backend, growth, sum(max(change, 0.0) for change in pauses)


def test_decord_reader_holds_nothing_between_reads(video_dir):
    """25 random 16x4 clips of the pancake sample through one open decord reader, each followed
    by a 0.25 s pause as a training step would take: the pauses add at most 16 MiB of RSS all together, and RSS grows by at most 32 MiB after a 5-read warm-up. Without
    the rewind after each read, one pause alone adds up to 70 MiB on an idle machine.

    Measured in a fresh interpreter (`in_fresh_interpreter`): in the suite's own process the heap
    earlier tests leave adds tens of MiB of noise to a 32 MiB bound."""
    backend, growth, added = in_fresh_interpreter(_decord_reads_with_pauses, video_dir / "flipping_a_pancake.mkv")
    assert backend == "decord"
    assert added <= DECORD_PAUSES_BOUND_MIB, f"the pauses added {added:.1f} MiB"
    assert growth <= DECORD_BOUND_MIB, f"RSS grew {growth:.1f} MiB over 25 reads"


def test_sequential_sweep_keeps_decord_in_place_then_rewinds(video_dir, monkeypatch):
    """Chunks of a sweep follow one another, so decord is not rewound between them (that would
    decode each chunk again from its keyframe); the last chunk, and any single read, rewinds it."""
    path = video_dir / "flipping_a_pancake.mkv"
    with VideoReader(path, backend="decord") as reader:
        decord_reader = reader._backend.reader
        seeks: list[int] = []
        original_seek = decord_reader.seek
        monkeypatch.setattr(decord_reader, "seek", lambda pos: (seeks.append(pos), original_seek(pos))[1])
        chunks = list(reader.iter_chunks(100))
        assert [len(c) for c in chunks] == [100, 100, 100, 10]
        assert seeks == [0]
        reader.get_frames([5, 9])
        assert seeks == [0, 0]
