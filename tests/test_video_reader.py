"""The video reader: metadata, frame-exact random access, rotation, resizing, VFR timestamps,
identical frames from every backend, decord's known faults contained.

The reference for pixels is the ffmpeg command-line tool (`-pix_fmt rgb24`, autorotation on),
an independent decoder build from any of our three backends.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import video_fixtures as vf
from spatiotemporal.io.errors import VideoDecodeError
from spatiotemporal.io.resize import resize, resize_short_side
from spatiotemporal.io.video import VideoReader, probe_video, read_video

BACKENDS = ("decord", "pyav", "torchcodec")


def ffmpeg_frames(path: Path, indices=None) -> torch.Tensor:
    """Frames decoded by the ffmpeg CLI, streamed so only the wanted ones are kept."""
    meta = probe_video(path)
    frame_bytes = meta.width * meta.height * 3
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    kept: dict[int, np.ndarray] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL) as process:
        index = 0
        while wanted is None or index <= wanted[-1]:
            buffer = process.stdout.read(frame_bytes)
            if len(buffer) < frame_bytes:
                break
            if wanted is None or index in wanted:
                kept[index] = np.frombuffer(buffer, np.uint8).reshape(meta.height, meta.width, 3)
            index += 1
        process.kill()
    order = range(index) if indices is None else indices
    return torch.from_numpy(np.stack([kept[int(i)] for i in order]))


def random_clips(count: int, num_frames: int, clip: int, stride: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    span = clip * stride
    return [list(range(s, s + span, stride)) for s in rng.integers(0, num_frames - span + 1, count)]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Small videos in other codecs and containers, made once for the module."""
    out = tmp_path_factory.mktemp("videos")
    videos = {
        "h264_mp4": vf.h264_mp4(out / "h264.mp4"),
        "vp9_webm": vf.vp9_webm(out / "vp9.webm"),
        "mpeg4_avi": vf.mpeg4_avi(out / "mpeg4.avi"),
        "vfr_mp4": vf.variable_rate_mp4(out / "vfr.mp4"),
    }
    if "libx265" in vf.encoders():
        videos["hevc_mkv"] = vf.hevc_mkv(out / "hevc.mkv")
    for degrees in (90, 180, 270):
        videos[f"rotated_{degrees}"] = vf.with_rotation(videos["h264_mp4"], out / f"rot{degrees}.mp4", degrees)
    return videos


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def test_cockatoo_metadata_matches_its_header(video_dir):
    meta = probe_video(video_dir / "cockatoo.mp4")
    assert (meta.num_frames, meta.fps, meta.duration) == (280, 20.0, 14.0)
    assert (meta.width, meta.height, meta.rotation, meta.codec) == (1280, 720, 0, "h264")
    assert meta.has_audio and not meta.variable_frame_rate and not meta.frame_count_derived


def test_mkv_without_a_frame_count_gets_one_derived(video_dir):
    meta = probe_video(video_dir / "flipping_a_pancake.mkv")
    assert meta.frame_count_derived
    assert meta.num_frames == 310  # ffprobe -count_packets agrees
    assert meta.fps == 30.0 and meta.duration == pytest.approx(10.333)
    assert (meta.width, meta.height, meta.codec, meta.has_audio) == (426, 240, "h264", True)
    # The mkv clock counts milliseconds (33, 33, 34 ms): jitter of a tick is not a variable rate.
    assert not meta.variable_frame_rate


def test_rotated_mov_is_described_as_displayed(video_dir):
    meta = probe_video(video_dir / "rotated_90.mov")
    assert (meta.width, meta.height, meta.rotation, meta.num_frames) == (320, 568, 90, 3)


@pytest.mark.parametrize("name, codec", [("vp9_webm", "vp9"), ("mpeg4_avi", "mpeg4"), ("hevc_mkv", "hevc")])
def test_generated_codecs_are_described(generated, name, codec):
    if name not in generated:
        pytest.skip("ffmpeg here has no libx265 encoder")
    meta = probe_video(generated[name])
    assert (meta.codec, meta.num_frames, meta.fps, meta.width, meta.height) == (codec, 24, 12.0, 128, 96)
    assert meta.duration == pytest.approx(2.0)
    assert meta.frame_count_derived == (name != "mpeg4_avi")  # webm and mkv headers carry no count


# ---------------------------------------------------------------------------------------------
# Pixels: every backend against ffmpeg
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_pancake_every_frame_matches_ffmpeg(video_dir, backend):
    path = video_dir / "flipping_a_pancake.mkv"
    frames = read_video(path, backend=backend)
    assert frames.dtype == torch.uint8 and frames.shape == (310, 240, 426, 3)
    assert torch.equal(frames, ffmpeg_frames(path))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pancake_random_clips_match_ffmpeg(video_dir, backend):
    path = video_dir / "flipping_a_pancake.mkv"
    clips = random_clips(6, 310, clip=16, stride=4, seed=0)
    reference = ffmpeg_frames(path)
    with VideoReader(path, backend=backend) as reader:
        assert reader.backend == backend
        for indices in clips:
            assert torch.equal(reader.get_frames(indices), reference[indices])


@pytest.mark.parametrize("backend", ("pyav", "torchcodec"))
def test_cockatoo_random_clips_match_ffmpeg(video_dir, backend):
    path = video_dir / "cockatoo.mp4"
    clips = random_clips(2, 280, clip=16, stride=4, seed=1)
    reference = ffmpeg_frames(path, sorted({i for clip in clips for i in clip}))
    position = {i: n for n, i in enumerate(sorted({i for clip in clips for i in clip}))}
    with VideoReader(path, backend=backend) as reader:
        for indices in clips:
            assert torch.equal(reader.get_frames(indices), reference[[position[i] for i in indices]])


def test_x264_stream_needing_the_encoder_sei_decodes_right_after_seeks(video_dir):
    """cockatoo.mp4 is High 4:4:4 from x264 core 142. ffmpeg applies its workaround for that
    build's 4:4:4 bug only after reading x264's SEI in packet 0, so any decoder that seeks straight
    to the IDR frames at 76 or 145 returns garbage, silently. PyAV is told the build and seeks;
    torchcodec is only allowed to decode forward from frame 0; decord, which can be told neither,
    is refused. "auto" reads it with PyAV, its first choice, without a fallback."""
    path = video_dir / "cockatoo.mp4"
    with pytest.raises(VideoDecodeError, match="later keyframes do not decode on their own") as caught:
        VideoReader(path, backend="decord")
    assert caught.value.path == str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = VideoReader(path)
    assert reader.backend == "pyav"
    indices = [150, 76, 77]
    assert torch.equal(reader.get_frames(indices), ffmpeg_frames(path, indices))


def test_cockatoo_default_reader_stays_frame_exact_from_one_open_reader(video_dir):
    """One open default reader (PyAV with frame threads, one swscale context for every frame)
    serves 16x4 clips that seek back, go on without seeking (3 then 70), and cross keyframes 76
    and 145. Every clip is ffmpeg's frames, in the order read and again in reverse."""
    path = video_dir / "cockatoo.mp4"
    clips = [list(range(start, start + 64, 4)) for start in (150, 3, 70, 90, 200, 140)]
    wanted = sorted({i for clip in clips for i in clip})
    reference = ffmpeg_frames(path, wanted)
    position = {i: n for n, i in enumerate(wanted)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reader = VideoReader(path)
    with reader:
        for indices in clips + clips[::-1]:
            assert torch.equal(reader.get_frames(indices), reference[[position[i] for i in indices]])


@pytest.mark.parametrize("name", ["vp9_webm", "mpeg4_avi", "hevc_mkv", "h264_mp4"])
@pytest.mark.parametrize("backend", ("auto",) + BACKENDS)
def test_generated_codecs_decode_like_ffmpeg(generated, name, backend):
    if name not in generated:
        pytest.skip("ffmpeg here has no libx265 encoder")
    path = generated[name]
    reference = ffmpeg_frames(path)
    if backend == "decord" and name == "hevc_mkv":
        # decord also lands on wrong pixels after seeks in x265's open-GOP stream.
        with pytest.raises(VideoDecodeError, match="wrong pixels after seeking"):
            VideoReader(path, backend=backend)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reader = VideoReader(path, backend=backend)
    with reader:
        assert torch.equal(reader.get_frames(range(len(reader))), reference)
        backwards = [23, 17, 9, 8, 0, 15]  # crosses keyframes 8 and 16 in both directions
        assert torch.equal(reader.get_frames(backwards), reference[backwards])


def test_frames_come_in_the_order_asked_with_repeats(video_dir):
    path = video_dir / "flipping_a_pancake.mkv"
    with VideoReader(path) as reader:
        frames = reader.get_frames([200, 3, 200, 50])
        singles = torch.cat([reader.get_frames([i]) for i in (200, 3, 200, 50)])
    assert torch.equal(frames, singles)
    assert not torch.equal(frames[0], frames[1])


def test_out_of_range_index_is_refused(video_dir):
    with VideoReader(video_dir / "flipping_a_pancake.mkv") as reader:
        with pytest.raises(IndexError, match=r"frame 310 is out of range \[0, 310\)"):
            reader.get_frames([0, 310])


# ---------------------------------------------------------------------------------------------
# Rotation and resizing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_mov_comes_out_portrait_like_ffmpeg(video_dir, backend):
    path = video_dir / "rotated_90.mov"
    frames = read_video(path, backend=backend)
    assert frames.shape == (3, 568, 320, 3)  # 320 wide, 568 high
    assert torch.equal(frames, ffmpeg_frames(path))


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_rotation_matches_ffmpeg_autorotate(generated, degrees, backend):
    path = generated[f"rotated_{degrees}"]
    assert probe_video(path).rotation == degrees
    frames = read_video(path, backend=backend)
    assert frames.shape[1:3] == ((128, 96) if degrees in (90, 270) else (96, 128))
    assert torch.equal(frames, ffmpeg_frames(path))


def test_short_side_resize_is_evaluations_bilinear_without_antialiasing(video_dir):
    """The reader resizes as SlowFast's test code does (and as `ClipTransform.test` does): uint8
    to float in [0, 1], bilinear without antialiasing, rounded back; the long side floored."""
    path = video_dir / "flipping_a_pancake.mkv"
    full = read_video(path)[:40]
    small = read_video(path, short_side=112)[:40]
    assert small.shape == (40, 112, 198, 3)  # 426 / 240 * 112 = 198.8, floored
    expected = F.interpolate(
        full.permute(0, 3, 1, 2).float() / 255, size=(112, 198), mode="bilinear", align_corners=False, antialias=False
    )
    expected = expected.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(small, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_is_one_shared_step_so_backends_stay_identical(video_dir, backend):
    path = video_dir / "rotated_90.mov"
    frames = read_video(path, backend=backend, short_side=160)
    assert frames.shape == (3, 284, 160, 3)  # rotation first, then the short side (width) is 160
    assert torch.equal(frames, resize_short_side(ffmpeg_frames(path), 160))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(30, 40), (240, 426)])  # outputs under and over torch's 128-pixel switch
def test_resizing_frames_a_few_at_a_time_changes_no_pixel(size, threads):
    """The reader resizes a batch a few frames at a time, the transforms a whole clip at once, and
    torch's kernel would round some planes differently by how many it gets: `resize` hides that."""
    frames = torch.randint(0, 256, (21, *size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        in_groups = resize_short_side(frames, size[0] // 2)  # 16 frames, then 5
        at_once = rearrange(resize(rearrange(frames, "t h w c -> c t h w"), (size[0] // 2, size[1] // 2)), "c t h w -> t h w c")
        one_by_one = torch.cat([resize_short_side(frame[None], size[0] // 2) for frame in frames])
    finally:
        torch.set_num_threads(previous)
    assert in_groups.shape == (21, size[0] // 2, size[1] // 2, 3)
    assert torch.equal(in_groups, at_once) and torch.equal(in_groups, one_by_one)


# ---------------------------------------------------------------------------------------------
# Timestamps and variable frame rate
# ---------------------------------------------------------------------------------------------


def test_constant_rate_timestamps_are_index_over_fps(video_dir):
    with VideoReader(video_dir / "cockatoo.mp4", backend="pyav") as reader:
        np.testing.assert_allclose(reader.frame_timestamps(), np.arange(280) / 20.0, atol=1e-9)


def test_variable_rate_video_exposes_its_real_timestamps(generated):
    path = generated["vfr_mp4"]
    meta = probe_video(path)
    assert meta.variable_frame_rate and meta.num_frames == 30
    with VideoReader(path) as reader:
        expected = np.concatenate([np.arange(20) / 10.0, 2.0 + np.arange(10) / 2.0])
        np.testing.assert_allclose(reader.frame_timestamps(), expected, atol=1e-9)
        # Index 25 is the frame shown at 4.5 s, whatever backend serves it.
        assert torch.equal(reader.get_frames([25]), ffmpeg_frames(path, [25]))



def index_coded_clip(out: Path, frames: int = 24, fps: int = 12) -> Path:
    """A clip whose frame i is flat grey at luma 16 + 8 i, so a decoded frame tells its own index
    (`coded_index`). Keyframes every 8 frames with B-frames; the container is `out`'s suffix, and
    a `.h264` suffix makes a raw elementary stream: no container, no timestamps."""
    source = f"nullsrc=size=64x48:rate={fps},format=yuv420p,geq=lum='16+8*N':cb=128:cr=128"
    subprocess.run(
        [vf.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", str(frames),
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "8", "-bf", "2", str(out)],
        check=True, stdin=subprocess.DEVNULL,
    )
    return out


def coded_index(frames: torch.Tensor) -> list[int]:
    """The index each frame of `index_coded_clip` shows: rgb24 grey is (luma - 16) * 255 / 219."""
    grey = frames.float().mean(dim=(1, 2, 3))
    return [int(i) for i in torch.round(grey * 219 / 255 / 8)]


@pytest.mark.parametrize("suffix", [".mp4", ".h264"])
def test_target_fps_sampling_picks_the_frames_shown_at_those_times(tmp_path, suffix):
    """12 fps resampled to 4 fps takes every third frame, whether the times come from the
    container's timestamps (mp4) or, for a raw stream that has none, from the stream's rate."""
    from spatiotemporal.data.sampling import uniform_clips_at_fps

    path = index_coded_clip(tmp_path / f"clip{suffix}", frames=24, fps=12)
    with VideoReader(path, backend="pyav") as reader:
        assert (reader.metadata.fps, reader.metadata.duration) == (12.0, 2.0)
        np.testing.assert_allclose(reader.frame_timestamps(), np.arange(24) / 12.0, atol=1e-9)
        clips = uniform_clips_at_fps(reader.frame_timestamps(), num_frames=4, stride=1, target_fps=4.0, num_clips=2)
        shown = coded_index(reader.get_frames(clips.reshape(-1)))
    assert shown == [0, 3, 6, 9, 12, 15, 18, 21]  # two 1 s clips, at 0 s and at 1 s

# ---------------------------------------------------------------------------------------------
# decord's faults: hangs (its leak, and memory over many reads: test_video_memory.py)
# ---------------------------------------------------------------------------------------------


def test_decord_timeout_under_auto_falls_back_to_the_next_backend(video_dir, monkeypatch):
    """decord serves "auto" only after PyAV refused the file (here made to refuse); when decord
    then does not answer in time, torchcodec, next in line, serves the same frames."""
    path = video_dir / "flipping_a_pancake.mkv"

    def pyav_refuses(reader):
        raise RuntimeError("PyAV refused")

    monkeypatch.setattr(VideoReader, "_pyav", pyav_refuses)
    with pytest.warns(RuntimeWarning, match=r"decord failed \(decord did not answer within.*decoding with torchcodec instead"):
        reader = VideoReader(path, timeout_s=1e-6)
    assert reader.backend == "torchcodec"
    assert torch.equal(reader.get_frames([0, 100]), ffmpeg_frames(path, [0, 100]))


def test_decord_timeout_without_fallback_is_an_error(video_dir):
    path = video_dir / "flipping_a_pancake.mkv"
    with pytest.raises(VideoDecodeError, match="did not answer within") as caught:
        VideoReader(path, backend="decord", timeout_s=1e-6)
    assert caught.value.path == str(path)


def test_a_one_thread_worker_decodes_on_one_thread(video_dir):
    """Ray actors and DataLoader workers run torch on one thread each; their decoders must not
    start a thread per core on top (N workers x N threads on N cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with VideoReader(video_dir / "flipping_a_pancake.mkv", backend="pyav") as reader:
            assert reader._backend.stream.thread_count == 1
            assert torch.equal(reader.get_frames([0, 100]), ffmpeg_frames(video_dir / "flipping_a_pancake.mkv")[[0, 100]])
    finally:
        torch.set_num_threads(previous)
