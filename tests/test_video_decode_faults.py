"""Faults met while decoding, as opposed to bad files: a decord call that runs past its timeout,
and an input that cannot seek. Each ends in frames from another decoder or in a VideoDecodeError
naming the file and the reason, never in a crash of the process or a raw ffmpeg error."""

from __future__ import annotations

import multiprocessing
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import decord
import numpy as np
import pytest
import torch

import video_fixtures as vf
from spatiotemporal.data.kinetics import ClassIndex, ClipSampling, KineticsDataset, VideoRecord
from spatiotemporal.data.transforms import ClipTransform
from spatiotemporal.io.errors import InputError, VideoDecodeError
from spatiotemporal.io.video import VideoReader, probe_video
from test_video_reader import ffmpeg_frames

# --------------------------------------------------------------------------------------------
# A decord read that runs past its timeout.
#
# Each check runs in a fresh process: the fault under test is a use-after-free in native code,
# which would take the whole test session down with it, and a slowed decord must not outlive
# its check. Opening a reader on the pancake sample takes ~50 ms once its per-file checks are
# cached and a read ~0.15 s, so a read held for SLOW_S always runs past TIMEOUT_S and opening
# never does.
# --------------------------------------------------------------------------------------------

TIMEOUT_S = 0.5
SLOW_S = 1.5
WANTED = [0, 50, 100, 150]
HELD_FRAMES = 90


def in_child(check: Callable[..., Any], *args: Any) -> Any:
    """`check(*args)` in a freshly spawned interpreter; its result or its exception comes back,
    and a crash of that process fails the test instead of ending the session."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(check, *args).result(timeout=120)


def _decord_reader(path: str, backend: str) -> VideoReader:
    VideoReader(path).close()  # caches the per-file checks, so the timed open below is quick
    reader = VideoReader(path, backend=backend, timeout_s=TIMEOUT_S)
    assert reader.backend == "decord"
    return reader


class SlowGetBatch:
    """Installed as decord's get_batch: runs the real one, but slowly, so the read outlives the
    timeout and then runs on whatever the reader has done to the native decoder meanwhile.

    hold_native: first one long decode inside decord's C++, still running when the timeout
    fires; otherwise wait SLOW_S first, then decode once. Records what each call ended in.
    """

    def __init__(self, hold_native: bool = False) -> None:
        self.hold_native = hold_native
        self.outcomes: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self._real = decord.VideoReader.get_batch
        decord.VideoReader.get_batch = lambda reader, indices: self(reader, indices)

    def __call__(self, reader: decord.VideoReader, indices):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            batch = self._decode(reader, indices)
            self.outcomes.append("frames")
            return batch
        except BaseException as error:
            self.outcomes.append(f"{type(error).__name__}: {error}")
            raise
        finally:
            with self._lock:
                self.running -= 1

    def _decode(self, reader: decord.VideoReader, indices):
        if not self.hold_native:
            time.sleep(SLOW_S)
            return self._real(reader, indices)
        # One long native call that spans the timeout: decord seeks back to the keyframe for
        # every frame asked in reverse, ~1.5 s for these 90 frames here.
        self._real(reader, list(range(HELD_FRAMES - 1, -1, -1)))
        return self._real(reader, indices)

    def wait(self, calls: int) -> None:
        _wait_until(lambda: len(self.outcomes) >= calls, SLOW_S * calls + 5)


def _wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _pyav_refuses(reader: VideoReader):
    raise RuntimeError("PyAV refused")


def _fall_back_while_decord_decodes(path: str) -> tuple[str, int, np.ndarray, list[str]]:
    # In this child only: "auto"'s first choice refuses the file, so decord serves it.
    VideoReader._pyav = _pyav_refuses
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "pyav failed ...; decoding with decord instead"
        reader = _decord_reader(path, "auto")
    slow = SlowGetBatch(hold_native=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = reader.get_frames(WANTED)
    backend = reader.backend
    reader.close()
    slow.wait(1)
    time.sleep(0.2)  # the abandoned call's last native steps (its rewind) run after it reports
    return backend, len(caught), frames.numpy(), slow.outcomes


def test_auto_reader_survives_a_read_that_times_out_and_serves_it_with_the_next_backend(video_dir):
    """The abandoned decord call is still inside decord's native decoder when the reader falls
    back to the next backend (torchcodec) and is closed; freeing the decoder under it used to kill the process (SIGSEGV or
    SIGABRT), or, when it survived, failed the abandoned call."""
    path = video_dir / "flipping_a_pancake.mkv"
    backend, warned, frames, abandoned = in_child(_fall_back_while_decord_decodes, str(path))
    assert (backend, warned) == ("torchcodec", 1)
    assert abandoned == ["frames"], "the abandoned decord call did not finish cleanly"
    assert torch.equal(torch.from_numpy(frames), ffmpeg_frames(path, WANTED))


def _close_while_a_read_is_abandoned(path: str) -> tuple[bool, list[str], bool]:
    reader = _decord_reader(path, "decord")
    native = reader._backend.reader
    slow = SlowGetBatch()
    try:
        reader.get_frames(WANTED)
    except VideoDecodeError as error:
        assert "timed out" in str(error), error
    reader.close()
    alive_at_close = native._handle is not None
    slow.wait(1)
    return alive_at_close, slow.outcomes, _wait_until(lambda: native._handle is None)


def test_a_read_abandoned_on_timeout_finishes_on_a_live_decoder_which_is_then_freed(video_dir):
    """Closing the reader while the abandoned read still runs hands the decoder to that read: it
    returns real frames, and only then is the native decoder freed (not leaked)."""
    path = video_dir / "flipping_a_pancake.mkv"
    alive_at_close, outcomes, freed = in_child(_close_while_a_read_is_abandoned, str(path))
    assert alive_at_close, "the decoder was freed while a read was still running on it"
    assert outcomes == ["frames"]
    assert freed, "the decoder was never freed after the read returned"


def _timeout_error(path: str) -> VideoDecodeError:
    reader = _decord_reader(path, "decord")
    slow = SlowGetBatch()
    try:
        reader.get_frames(WANTED)
    except VideoDecodeError as error:
        caught = error
    else:
        raise AssertionError("a read past the timeout did not fail")
    slow.wait(1)
    reader.close()
    return caught


def test_decord_read_timeout_error_names_the_file_and_the_timeout_without_decoding_it_all(video_dir):
    """A timeout says nothing about how far the file decodes, so the error does not spend a full
    decode of the file on a frame count."""
    path = video_dir / "flipping_a_pancake.mkv"
    error = in_child(_timeout_error, str(path))
    assert error.path == str(path) and str(path) in str(error)
    assert f"decord: timed out (decord did not answer within {TIMEOUT_S:g} s)" in error.reason
    assert error.decoded_frames is None and "decoded" not in error.reason


def _read_twice_after_a_timeout(path: str) -> tuple[list[str], int]:
    reader = _decord_reader(path, "decord")
    slow = SlowGetBatch()
    reasons = []
    for _ in range(2):
        try:
            reader.get_frames(WANTED)
        except VideoDecodeError as error:
            assert error.path == path
            reasons.append(error.reason)
    slow.wait(len(slow.outcomes) + slow.running)
    reader.close()
    return reasons, slow.most_at_once


def test_no_second_decord_read_starts_while_a_timed_out_one_is_still_running(video_dir):
    """decord's decoder is not safe to share between threads: a read after a timeout is refused
    while the abandoned one still holds the decoder."""
    path = video_dir / "flipping_a_pancake.mkv"
    reasons, most_at_once = in_child(_read_twice_after_a_timeout, str(path))
    assert len(reasons) == 2 and "timed out" in reasons[0]
    assert "still running" in reasons[1]
    assert most_at_once == 1


# --------------------------------------------------------------------------------------------
# An input that cannot seek: a raw H.264 elementary stream (no container, no timestamps)
# --------------------------------------------------------------------------------------------

RAW_FRAMES = 24


@pytest.fixture(scope="module")
def raw_h264(tmp_path_factory) -> Path:
    # Keyframes every 8 frames with B-frames: more than one place to seek to, and reordering.
    out = tmp_path_factory.mktemp("raw") / "clip.h264"
    return vf.testsrc(out, codec="libx264", frames=RAW_FRAMES, extra=("-g", "8", "-bf", "2"))


def test_raw_h264_cannot_seek(raw_h264):
    """The premise of the tests below: ffmpeg refuses to seek in this input."""
    import av

    with av.open(str(raw_h264)) as container:
        with pytest.raises(av.error.FFmpegError):
            container.seek(0)


def test_raw_h264_is_probed(raw_h264):
    metadata = probe_video(raw_h264)
    assert (metadata.num_frames, metadata.width, metadata.height) == (RAW_FRAMES, 128, 96)
    assert metadata.codec == "h264"
    # The rate its SPS declares (12 fps), not the raw demuxer's default of 25; no timestamps,
    # so the duration is frames over rate.
    assert (metadata.fps, metadata.duration) == (12.0, RAW_FRAMES / 12.0)


def test_raw_h264_decodes_like_ffmpeg_with_pyav(raw_h264):
    wanted = [0, 9, 3, 23, 9]
    with VideoReader(raw_h264, backend="pyav") as reader:
        assert torch.equal(reader.get_frames(wanted), ffmpeg_frames(raw_h264, wanted))
        assert torch.equal(reader.read_all(), ffmpeg_frames(raw_h264))


def test_auto_reader_serves_raw_h264_with_pyav(raw_h264):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyAV is auto's first choice: nothing to fall back from
        reader = VideoReader(raw_h264)
    with reader:
        assert reader.backend == "pyav"
        assert torch.equal(reader.get_frames([4, 20]), ffmpeg_frames(raw_h264, [4, 20]))


def test_decord_on_raw_h264_is_refused_naming_the_file_and_the_reason(raw_h264):
    with pytest.raises(VideoDecodeError, match="container cannot seek") as caught:
        VideoReader(raw_h264, backend="decord")
    assert isinstance(caught.value, InputError)
    assert caught.value.path == str(raw_h264)


def test_kinetics_training_reads_a_raw_h264_clip(raw_h264):
    dataset = KineticsDataset(
        [VideoRecord("raw", str(raw_h264), "a")],
        ClassIndex(("a",)),
        mode="train",
        clip=ClipSampling(8, 2),
        transform=ClipTransform(crop_size=64, train_short_side=(80, 96)),
        seed=0,
        skip_broken=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # decord's refusal, then PyAV
        sample = dataset[0]
    assert sample["error"] == "" and sample["key"] == "raw"
    assert tuple(sample["video"].shape) == (3, 8, 64, 64)
    assert np.isfinite(sample["video"].numpy()).all()
