"""Which decoder `auto` reads with: PyAV first (measured fastest on every file and access pattern,
benchmarks/bench_decode.py), the rest of AUTO_ORDER only for a file the ones before it refuse or
fail on; and where that choice is reported (the reader, `probe --json`, the batch jobs' rows and
summary line).

A failure of PyAV that is not the file's fault cannot be had from a real file (the probe that
opens every file is PyAV's own), so the tests below install one in the conversion step of the
reader's own PyAV backend (decord's check against PyAV still converts), the way
test_video_decode_faults.py slows decord's reads; everything else is the real decoders."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from spatiotemporal.io.errors import VideoDecodeError
from spatiotemporal.io.video import AUTO_ORDER, VideoReader
from test_video_reader import ffmpeg_frames

CLIP = list(range(100, 164, 4))  # a 16x4 clip crossing the pancake sample's keyframe at 150


def test_auto_tries_pyav_first_then_decord_then_torchcodec():
    assert AUTO_ORDER == ("pyav", "decord", "torchcodec")


def test_auto_reads_a_file_every_backend_takes_with_pyav_without_a_warning(video_dir):
    """decord and torchcodec both read the pancake sample, frame-exact; auto still takes PyAV."""
    path = video_dir / "flipping_a_pancake.mkv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with VideoReader(path) as reader:
            assert reader.backend == "pyav"
            assert torch.equal(reader.get_frames(CLIP), ffmpeg_frames(path, CLIP))


def _conversion_fails(frame):
    raise ValueError(f"Conversion from {frame.format.name!r} to 'rgb24' is not supported")


@pytest.fixture
def failing_pyav(monkeypatch):
    """The reader's PyAV backend raises in its rgb24 conversion, as for a pixel format swscale
    cannot convert."""
    opened = VideoReader._pyav

    def pyav_that_fails(reader):
        backend = opened(reader)
        backend._to_rgb = _conversion_fails
        return backend

    monkeypatch.setattr(VideoReader, "_pyav", pyav_that_fails)


def test_a_pyav_failure_mid_read_is_served_by_decord_frame_exact(video_dir, failing_pyav):
    path = video_dir / "flipping_a_pancake.mkv"
    with VideoReader(path) as reader:
        with pytest.warns(RuntimeWarning, match=r"pyav failed \(Conversion from 'yuv420p'.*decoding with decord instead"):
            frames = reader.get_frames(CLIP)
        assert reader.backend == "decord"
        assert torch.equal(frames, ffmpeg_frames(path, CLIP))
        assert torch.equal(reader.get_frames(CLIP[::-1]), ffmpeg_frames(path, CLIP[::-1]))  # decord from here on


def test_a_file_pyav_fails_on_and_decord_refuses_is_served_by_torchcodec(video_dir, failing_pyav):
    """cockatoo.mp4's later keyframes do not decode on their own, so decord refuses it outright;
    the next in line, torchcodec, decodes it forward from frame 0, frame-exact."""
    path = video_dir / "cockatoo.mp4"
    wanted = [150, 76, 77]
    with pytest.warns(RuntimeWarning) as caught:
        with VideoReader(path) as reader:
            frames = reader.get_frames(wanted)
            backend = reader.backend
    messages = [str(w.message) for w in caught]
    assert backend == "torchcodec"
    assert [m.split(" failed ")[0] for m in messages] == [f"{path}: pyav", f"{path}: decord"]
    assert "later keyframes do not decode on their own" in messages[1]
    assert torch.equal(frames, ffmpeg_frames(path, wanted))


def test_a_backend_asked_for_by_name_does_not_fall_back(video_dir, failing_pyav):
    path = video_dir / "flipping_a_pancake.mkv"
    with VideoReader(path, backend="pyav") as reader:
        with pytest.raises(VideoDecodeError, match=r"pyav: decoding failed \(Conversion from 'yuv420p'") as caught:
            reader.get_frames(CLIP)
    assert caught.value.path == str(path)


def test_a_file_every_backend_fails_on_is_one_error_naming_it(video_dir):
    """corrupted.mp4 breaks 28 frames in: every decoder stops there, so auto gives the file's
    error from PyAV rather than trying the others."""
    path = video_dir / "corrupted.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with VideoReader(path) as reader:
            with pytest.raises(VideoDecodeError, match="decoding failed") as caught:
                reader.get_frames(range(len(reader)))
    assert caught.value.path == str(path) and caught.value.decoded_frames == 28


def _segment(path: Path, size: str, frames: int) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10",
                    "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-f", "mpegts", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture
def resolution_change(tmp_path) -> Path:
    """Two MPEG-TS segments joined byte for byte (as `cat a.ts b.ts` does): 10 frames at 160x120,
    then 10 at 320x240. Every decoder reads it; none can make one (T, H, W, C) array of it."""
    joined = tmp_path / "resolution_change.ts"
    joined.write_bytes(_segment(tmp_path / "a.ts", "160x120", 10).read_bytes()
                       + _segment(tmp_path / "b.ts", "320x240", 10).read_bytes())
    return joined


SIZE_CHANGE = "frame size changes mid-stream: frame 10 is 320x240, the stream declares 160x120"


def test_a_frame_size_change_mid_stream_is_one_error_naming_the_frame_without_fallback(resolution_change):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no other backend is tried: the file is at fault
        with VideoReader(resolution_change) as reader:
            with pytest.raises(VideoDecodeError) as caught:
                reader.get_frames(range(len(reader)))
    assert caught.value.path == str(resolution_change)
    assert caught.value.reason == SIZE_CHANGE


def test_the_full_decode_check_finds_a_frame_size_change(resolution_change):
    from spatiotemporal.io.video import probe_by_reading, probe_video

    assert probe_video(resolution_change).num_frames == 20  # the header alone looks healthy
    with pytest.raises(VideoDecodeError) as caught:
        probe_by_reading(resolution_change, check_decode=True)
    assert caught.value.reason == SIZE_CHANGE


def test_when_every_auto_backend_fails_the_error_is_pyavs_naming_the_others(resolution_change, monkeypatch):
    """PyAV refuses the file (made to, as in test_video_reader.py), decord does not open it within
    a microsecond, torchcodec opens it and fails on the size change: the error a user reads is the
    first, PyAV's, naming the others, not torchcodec's C++ message."""

    def pyav_refuses(reader):
        raise RuntimeError("PyAV refused")

    monkeypatch.setattr(VideoReader, "_pyav", pyav_refuses)
    with pytest.warns(RuntimeWarning):
        with VideoReader(resolution_change, timeout_s=1e-6) as reader:
            with pytest.raises(VideoDecodeError) as caught:
                reader.get_frames(range(len(reader)))
    assert caught.value.reason == "pyav cannot be used on it: PyAV refused (decord, torchcodec also failed)"



def test_a_long_failure_message_gives_way_to_what_the_reason_says_after_it(video_dir, monkeypatch):
    """A library's long message is cut where the reason is made: the bracket closing it and the
    count of decoded frames after it stay whole, and the reason keeps to REASON_MAX_CHARS."""
    from spatiotemporal.io.errors import REASON_MAX_CHARS

    opened = VideoReader._pyav

    def fails_at_length(frame):
        raise ValueError("x" * 400)

    def pyav_that_fails(reader):
        backend = opened(reader)
        backend._to_rgb = fails_at_length
        return backend

    monkeypatch.setattr(VideoReader, "_pyav", pyav_that_fails)
    with VideoReader(video_dir / "flipping_a_pancake.mkv", backend="pyav") as reader:
        with pytest.raises(VideoDecodeError) as caught:
            reader.get_frames(CLIP)
    reason = caught.value.reason
    assert reason.startswith("pyav: decoding failed (xxx")
    assert reason.endswith("x...) (decoded 310 frames before the failure)")
    assert len(reason) == REASON_MAX_CHARS


def test_a_fallback_warning_prints_as_one_line_naming_the_file(video_dir, failing_pyav):
    path = video_dir / "flipping_a_pancake.mkv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VideoReader(path) as reader:
            reader.get_frames(CLIP)
    [warning] = caught
    printed = warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno, warning.line)
    assert printed.count("\n") == 1 and printed.endswith("\n")  # no source line of the library under it
    assert f"RuntimeWarning: {path}: pyav failed (Conversion from 'yuv420p'" in printed


def test_a_pyav_read_past_the_timeout_is_an_error_naming_it(video_dir):
    """cockatoo.mp4 takes about a second to decode through (720p 4:4:4); a millisecond allows a
    frame or two. PyAV's timeout is the file's failure, so auto does not move on to decord."""
    path = video_dir / "cockatoo.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with VideoReader(path, timeout_s=0.001) as reader:
            with pytest.raises(VideoDecodeError) as caught:
                reader.get_frames(range(0, len(reader), 4))
            assert reader.backend == "pyav"
    assert caught.value.path == str(path)
    assert caught.value.reason == "pyav: timed out after 0.001 s"


def test_a_read_within_the_timeout_is_untouched(video_dir):
    path = video_dir / "flipping_a_pancake.mkv"
    with VideoReader(path, backend="pyav", timeout_s=30) as reader:
        assert torch.equal(reader.get_frames(CLIP), ffmpeg_frames(path, CLIP))


def test_probe_json_names_the_backend_that_reads_each_file(video_dir, capsys):
    import json

    from spatiotemporal.cli import main

    assert main(["probe", "--json", "--quick", str(video_dir / "flipping_a_pancake.mkv")]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "pyav"


@pytest.mark.parametrize("quick", [True, False])
def test_probe_json_names_the_backend_that_served_its_read_from_one_probe_of_the_file(
        video_dir, capsys, failing_pyav, monkeypatch, quick):
    """Where PyAV opens the file but fails on reading it, the backend named is decord, which
    served the probe's own read; the file is probed (demuxed end to end) once, not again to ask."""
    from spatiotemporal.cli import main
    from spatiotemporal.io import video

    probes = []
    probe = video._probe
    monkeypatch.setattr(video, "_probe", lambda path: probes.append(path) or probe(path))
    path = str(video_dir / "flipping_a_pancake.mkv")
    with pytest.warns(RuntimeWarning, match="decoding with decord instead"):
        assert main(["probe", "--json", *(["--quick"] if quick else []), path]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["backend"], record["num_frames"]) == ("decord", 310)
    assert probes == [path]


def test_the_summary_line_counts_backends_most_common_first_then_by_name():
    from pipelines.job import JobSummary

    summary = JobSummary(job="video_inference", total=5, ok=5, failed=0, skipped=0, seconds=1.0, output="out",
                         tally={"backend": {"torchcodec": 1, "pyav": 3, "decord": 1}})
    assert summary.line() == ("video_inference: 5 ok, 0 failed, 0 skipped of 5 inputs in 1.0 s (5.00 inputs/s); "
                              "backend: pyav 3, decord 1, torchcodec 1 -> out")



def _make_video(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-t", "1.6",
                    "-pix_fmt", "yuv420p", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def test_video_inference_rows_and_summary_name_the_backend(ray_cluster, tmp_path, capsys):
    from pipelines import video_inference
    from pipelines.job import read_table

    inputs = tmp_path / "in"
    inputs.mkdir()
    _make_video(inputs / "a.mp4")
    _make_video(inputs / "b.mp4")
    summary = video_inference.run(inputs, tmp_path / "out", model="vivit_tiny", random_weights=True, views="1x1",
                                  batch_size=2, precision="fp32", progress=False)
    results = read_table(tmp_path / "out")
    assert sorted(results["backend"]) == ["pyav", "pyav"]
    assert summary.tally == {"backend": {"pyav": 2}}
    assert f"; backend: pyav 2 -> {tmp_path / 'out'}" in capsys.readouterr().err
