"""Decode throughput: our reader (each backend) against pytorchvideo's EncodedVideo (pyav and
decord decoders) and the ffmpeg CLI decoding to nowhere, the limit for the frames decoded.

Two workloads, as a training loader and an inference sweep see them:
- random 16x4 clips: open the file, take 16 frames 4 apart from a random start, close. EncodedVideo
  decodes the 64-frame window and subsamples 16, its usual use;
- full sequential decode, in 32-frame steps (EncodedVideo: 32-frame windows).
Ratios: clips/s over EncodedVideo(pyav)'s (target >= 2); our time over ffmpeg's time for the
frames that had to be decoded, i.e. from the keyframe before each clip to its end (target <= 1.5).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TITLE = "Video decode: clips/s and frames/s against pytorchvideo and ffmpeg"

CLIP, STRIDE, CHUNK = 16, 4, 32
OURS = ("auto", "decord", "pyav", "torchcodec")


def _shared_video_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", root.parent / "shared" / "data")) / "video"


def _generated_320p(directory: Path) -> Path:
    """10 s of 568x320 h264 at 30 fps, keyframe every 2 s: a Kinetics clip after re-encoding."""
    out = directory / "generated_320p_10s.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=568x320:rate=30", "-t", "10",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p", str(out)],
        check=True, stdin=subprocess.DEVNULL,
    )
    return out


def _ffmpeg_fps(path: Path, frames: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "null", "-"],
                       check=True, stdin=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return frames / best


def _clip_starts(num_frames: int, count: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(s) for s in rng.integers(0, num_frames - CLIP * STRIDE + 1, count)]


def _frames_to_decode(path: Path, starts: list[int]) -> int:
    """Frames a decoder must go through for these clips: from the seek point before each clip
    (the last keyframe that decodes on its own) to the clip's last frame."""
    from spatiotemporal.io.video import VideoReader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        reader = VideoReader(path, backend="pyav")
    index, seek_points = reader._index, reader._backend.seek_points
    total = 0
    for start in starts:
        last = start + (CLIP - 1) * STRIDE
        point = seek_points[max(np.searchsorted(seek_points, index.pts[start], side="right") - 1, 0)]
        total += last - int(np.searchsorted(index.pts, point)) + 1
    reader.close()
    return total


def _ours_clips(path: Path, backend: str, starts: list[int]) -> tuple[float, str]:
    from spatiotemporal.io.errors import VideoDecodeError
    from spatiotemporal.io.video import VideoReader

    used = set()
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in starts:
            try:
                with VideoReader(path, backend=backend) as reader:
                    reader.get_frames(range(start, start + CLIP * STRIDE, STRIDE))
                    used.add(reader.backend)
            except VideoDecodeError as error:
                return float("nan"), f"refused: {error.reason[:60]}"
    return len(starts) / (time.perf_counter() - begin), "/".join(sorted(used))


def _ours_sequential(path: Path, backend: str) -> float:
    from spatiotemporal.io.errors import VideoDecodeError
    from spatiotemporal.io.video import VideoReader

    begin = time.perf_counter()
    count = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with VideoReader(path, backend=backend) as reader:
                for chunk in reader.iter_chunks(CHUNK):
                    count += len(chunk)
    except VideoDecodeError:
        return float("nan")
    return count / (time.perf_counter() - begin)


def _encoded_video(path: Path, decoder: str):
    from pytorchvideo.data.encoded_video import EncodedVideo

    return EncodedVideo.from_path(str(path), decode_audio=False, decoder=decoder)


def _pytorchvideo_clips(path: Path, decoder: str, starts: list[int], fps: float) -> float:
    begin = time.perf_counter()
    for start in starts:
        video = _encoded_video(path, decoder)
        clip = video.get_clip(start / fps, (start + CLIP * STRIDE) / fps)["video"]
        clip[:, ::STRIDE][:, :CLIP]  # the 16 frames kept, as UniformTemporalSubsample would
        video.close()
    return len(starts) / (time.perf_counter() - begin)


def _pytorchvideo_sequential(path: Path, decoder: str, num_frames: int, fps: float) -> float:
    begin = time.perf_counter()
    video = _encoded_video(path, decoder)
    count = 0
    for start in range(0, num_frames, CHUNK):
        clip = video.get_clip(start / fps, min(start + CHUNK, num_frames) / fps)
        if clip["video"] is not None:
            count += clip["video"].shape[1]
    video.close()
    return count / (time.perf_counter() - begin)


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def run(args) -> str:
    from spatiotemporal.io.video import probe_video

    quick = getattr(args, "quick", False)
    clips = 4 if quick else 10
    repeats = 1 if quick else 3
    rows = [
        "| video | reader | clips/s (16x4) | x EncodedVideo(pyav) | time / ffmpeg time | full decode frames/s | x ffmpeg |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = [
            _shared_video_dir() / "flipping_a_pancake.mkv",
            _shared_video_dir() / "cockatoo.mp4",
            _generated_320p(Path(tmp)),
        ]
        for path in videos:
            meta = probe_video(path)
            starts = _clip_starts(meta.num_frames, clips)
            ffmpeg_fps = _ffmpeg_fps(path, meta.num_frames, repeats)
            must_decode = _frames_to_decode(path, starts)
            ffmpeg_clip_time = must_decode / ffmpeg_fps
            label = f"{path.name} ({meta.width}x{meta.height}, {meta.num_frames} frames)"
            print(f"  {label}: ffmpeg {ffmpeg_fps:.0f} frames/s", flush=True)

            reference_rate = None
            results = []
            for decoder in ("pyav", "decord"):
                rate = _pytorchvideo_clips(path, decoder, starts, meta.fps)
                full = _pytorchvideo_sequential(path, decoder, meta.num_frames, meta.fps)
                reference_rate = rate if decoder == "pyav" else reference_rate
                results.append((f"EncodedVideo({decoder})", rate, full))
            for backend in OURS:
                _ours_clips(path, backend, starts[:1])  # per-file checks are cached per process
                rate, used = _ours_clips(path, backend, starts)
                full = _ours_sequential(path, backend)
                name = f"ours {backend}" + (f" -> {used}" if used and used != backend else "")
                if used.startswith("refused"):
                    name, notes = f"ours {backend}", notes + [f"{path.name}, {backend}: {used}"]
                results.append((name, rate, full))
            for name, rate, full in results:
                clip_time = clips / rate if rate == rate else float("nan")
                rows.append(
                    f"| {label} | {name} | {_fmt(rate)} | {_fmt(rate / reference_rate, 2)} | "
                    f"{_fmt(clip_time / ffmpeg_clip_time, 2)} | {_fmt(full, 0)} | {_fmt(full / ffmpeg_fps, 2)} |"
                )
                print("  " + rows[-1], flush=True)
            rows.append(f"| {label} | ffmpeg -f null (limit) | | | 1.00 | {ffmpeg_fps:.0f} | 1.00 |")
    load = os.getloadavg()
    text = "\n".join(rows)
    text += (
        f"\n\n{clips} clips per cell, each opening the file afresh (after one warm-up open, as our "
        f"per-file seek checks are cached per process); ffmpeg: best of {repeats}. "
        f"'time / ffmpeg time' compares a reader's time for the clips with ffmpeg's for the frames a "
        f"decoder must go through (from the seek point before each clip to its end). "
        f"Load average during the run: {load[0]:.1f} (the machine was shared; absolute numbers are "
        f"noisy, ratios less so)."
    )
    if notes:
        text += "\n\nRefusals: " + "; ".join(notes) + "."
    return text
