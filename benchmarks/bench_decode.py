"""Decode throughput: our reader (each backend) against pytorchvideo's EncodedVideo (pyav and
decord decoders) and the ffmpeg CLI decoding to nowhere, the limit for the frames decoded.

Two workloads, as a training loader and an inference sweep see them:
- random 16x4 clips: open the file, take 16 frames 4 apart from a random start, close. EncodedVideo
  decodes the 64-frame window and subsamples 16, its usual use;
- full sequential decode, in 32-frame steps (EncodedVideo: 32-frame windows).
Files: the shared samples, a Kinetics-like 320p H.264 clip, and two made to test `auto`'s choice:
a long-GOP 1080p H.264 file (one keyframe in 10 s, so a random clip decodes up to 300 frames)
and an HEVC file (x265's defaults: open GOPs). The last table says, per file, which backend
`auto` took and how its clips/s compare with the fastest backend's (target: within 5%). Another
gives MViTv2's decode-time resize (swscale area, inside the conversion) beside a full-size decode
followed by the torch resize, on the same clips.
Ratios: clips/s over EncodedVideo(pyav)'s (target >= 2); our time over ffmpeg's time for the
frames that had to be decoded, i.e. from the keyframe before each clip to its end (target <= 1.5).
The same ratio is given in CPU time (all threads; ffmpeg's as a child process), which a shared
machine disturbs far less than wall time: the load moves between two timed runs.
ffmpeg -f null does not convert to RGB, which every reader must do for the frames it returns; the
notes give that conversion's share, from ffmpeg's own rgb24 conversion.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TITLE = "Video decode: clips/s and frames/s against pytorchvideo and ffmpeg"

CLIP, STRIDE, CHUNK = 16, 4, 32
OURS = ("auto", "decord", "pyav", "torchcodec")


def _shared_video_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SPATIOTEMPORAL_SHARED_DATA", root.parent / "shared" / "data")) / "video"


def _generated(directory: Path, name: str, size: str, seconds: int, codec: list[str]) -> Path:
    """`seconds` of ffmpeg's testsrc2 at 30 fps, encoded with `codec` into `directory / name`."""
    out = directory / name
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30", "-t", str(seconds),
         *codec, "-pix_fmt", "yuv420p", str(out)],
        check=True, stdin=subprocess.DEVNULL,
    )
    return out


def _generated_320p(directory: Path) -> Path:
    """10 s of 568x320 h264, keyframe every 2 s: a Kinetics clip after re-encoding."""
    return _generated(directory, "generated_320p_10s.mp4", "568x320", 10,
                      ["-c:v", "libx264", "-preset", "veryfast", "-g", "60"])


def _generated_long_gop_1080p(directory: Path) -> Path:
    """12 s of 1920x1080 h264 with keyframes at 0 and 10 s only (no scene-cut keyframes)."""
    return _generated(directory, "generated_1080p_gop300_12s.mp4", "1920x1080", 12,
                      ["-c:v", "libx264", "-preset", "veryfast", "-g", "300", "-keyint_min", "300",
                       "-sc_threshold", "0"])


def _generated_hevc(directory: Path) -> Path:
    """10 s of 1280x720 HEVC with x265's defaults (open GOPs, keyframe interval up to 250)."""
    return _generated(directory, "generated_hevc_720p_10s.mp4", "1280x720", 10,
                      ["-c:v", "libx265", "-preset", "veryfast", "-x265-params", "log-level=error",
                       "-tag:v", "hvc1"])


@dataclass(frozen=True)
class _Timing:
    wall: float  # seconds, the best of the repeats
    cpu: float  # CPU seconds of every thread and waited-for child, the least of the repeats

    def ratio(self, other: _Timing) -> _Timing:
        return _Timing(self.wall / other.wall, self.cpu / other.cpu)

    def scaled(self, factor: float) -> _Timing:
        return _Timing(self.wall * factor, self.cpu * factor)


NAN = _Timing(float("nan"), float("nan"))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(work: Callable[[], object], repeats: int) -> _Timing:
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = _cpu_seconds(), time.perf_counter()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_seconds() - cpu)
    return _Timing(min(walls), min(cpus))


def _ffmpeg(path: Path, repeats: int, rgb: bool = False) -> _Timing:
    """The ffmpeg CLI decoding the whole video to nowhere; `rgb` adds its rgb24 conversion."""
    convert = ["-pix_fmt", "rgb24"] if rgb else []
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", *convert, "-f", "null", "-"]
    return _timed(lambda: subprocess.run(command, check=True, stdin=subprocess.DEVNULL), repeats)


def _conversion_note(path: Path, repeats: int, decode: _Timing, frames: int, kept: int, must_decode: int) -> str:
    """What converting the returned frames to rgb24 adds to the decode limit, in CPU time."""
    per_frame = max(_ffmpeg(path, repeats, rgb=True).cpu - decode.cpu, 0.0) / frames
    share = kept * per_frame / (must_decode * decode.cpu / frames)
    return (
        f"{path.name}: rgb24 conversion costs ffmpeg {per_frame * 1e3:.1f} ms of CPU a frame, "
        f"{per_frame * frames / decode.cpu:.2f}x a decode; converting the {kept} frames the clips "
        f"return adds {share:.2f} to the clip limit (so a reader is at best ~{1 + share:.2f} of it)"
    )


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


def _read_clips(path: Path, backend: str, starts: list[int], used: set[str], **reader_options) -> None:
    """One clip at each start, each from a reader opened afresh; the backends that served them
    go into `used`. `reader_options` go to the reader (a short side and geometry to resize to)."""
    from spatiotemporal.io.video import VideoReader

    for start in starts:
        with VideoReader(path, backend=backend, **reader_options) as reader:
            reader.get_frames(range(start, start + CLIP * STRIDE, STRIDE))
            used.add(reader.backend)


def _ours_clips(path: Path, backend: str, starts: list[int], repeats: int, **reader_options) -> tuple[_Timing, str]:
    """Time for the clips (each opening the file afresh), and the backends that served them;
    `reader_options` go to the reader (a short side and geometry to resize to)."""
    from spatiotemporal.io.errors import VideoDecodeError

    used: set[str] = set()

    def clips(chosen: list[int]) -> None:
        _read_clips(path, backend, chosen, used, **reader_options)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            clips(starts[:1])  # warm-up: per-file checks are cached per process
            return _timed(lambda: clips(starts), repeats), "/".join(sorted(used))
        except VideoDecodeError as error:
            return NAN, f"refused: {error.reason[:60]}"


def _ours_interleaved(path: Path, starts: list[int], rounds: int) -> dict[str, tuple[list[_Timing], str]]:
    """Each backend of OURS timed on the same clips, taking turns within every round (auto, pyav,
    decord, torchcodec, then the next round in reverse order), so load that drifts over a run
    falls on all of them alike: per backend, its time in each round and the backends that served."""
    from spatiotemporal.io.errors import VideoDecodeError

    used: dict[str, set[str]] = {backend: set() for backend in OURS}
    refused: dict[str, str] = {}

    def clips(backend: str, chosen: list[int]) -> None:
        _read_clips(path, backend, chosen, used[backend])

    timings: dict[str, list[_Timing]] = {backend: [] for backend in OURS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for backend in OURS:
            try:
                clips(backend, starts[:1])  # warm-up: per-file checks are cached per process
            except VideoDecodeError as error:
                refused[backend] = f"refused: {error.reason[:60]}"
        for round_ in range(rounds):
            for backend in OURS if round_ % 2 == 0 else OURS[::-1]:
                if backend not in refused:
                    timings[backend].append(_timed(lambda: clips(backend, starts), 1))  # noqa: B023
    return {
        backend: ([NAN] * rounds, refused[backend]) if backend in refused
        else (timings[backend], "/".join(sorted(used[backend])))
        for backend in OURS
    }


def _best(timings: list[_Timing]) -> _Timing:
    return _Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


def _clip_plan(meta) -> tuple[int, int]:
    """Clips per cell and rounds, fewer for the files whose clips cost seconds each (1080p, HEVC),
    so that the whole section runs in a few minutes on two cores."""
    if meta.width * meta.height >= 1920 * 1080 or meta.codec == "hevc":
        return 3, 2
    return 10, 3


def _ours_sequential(path: Path, backend: str, **reader_options) -> float:
    from spatiotemporal.io.errors import VideoDecodeError
    from spatiotemporal.io.video import VideoReader

    begin = time.perf_counter()
    count = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with VideoReader(path, backend=backend, **reader_options) as reader:
                for chunk in reader.iter_chunks(CHUNK):
                    count += len(chunk)
    except VideoDecodeError:
        return float("nan")
    return count / (time.perf_counter() - begin)


def _encoded_video(path: Path, decoder: str):
    from pytorchvideo.data.encoded_video import EncodedVideo

    return EncodedVideo.from_path(str(path), decode_audio=False, decoder=decoder)


def _pytorchvideo_clips(path: Path, decoder: str, starts: list[int], fps: float, repeats: int) -> _Timing:
    def clips() -> None:
        for start in starts:
            video = _encoded_video(path, decoder)
            clip = video.get_clip(start / fps, (start + CLIP * STRIDE) / fps)["video"]
            clip[:, ::STRIDE][:, :CLIP]  # the 16 frames kept, as UniformTemporalSubsample would
            video.close()

    return _timed(clips, repeats)


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


def _resize_rows(path: Path, label: str, starts: list[int], repeats: int) -> list[str]:
    """The decode-time resize (MViTv2's test frames) beside a full-size decode and the torch resize."""
    rows, reference = [], None
    for geometry, name in (("slowfast", "full-size decode, then torch bilinear"),
                           ("slowfast_decoder", "in the decoder (swscale area)")):
        options = {"short_side": 256, "geometry": geometry}
        timing, _ = _ours_clips(path, "pyav", starts, repeats, **options)
        full = _ours_sequential(path, "pyav", **options)
        reference = reference or timing
        rows.append(f"| {label} | {name} | {_fmt(len(starts) / timing.wall)} | {_fmt(full, 0)} | "
                    f"{_fmt(reference.wall / timing.wall, 2)} |")
        print("  " + rows[-1], flush=True)
    return rows


def _auto_choice(video: str, took: str, per_round: dict[str, list[_Timing]], clips: int) -> str:
    """One row of the auto table: what auto took, the fastest named backend (best round), and
    auto's speed over that backend's as the median of the rounds' ratios: each ratio compares two
    timings of the same round, taken one right after the other."""
    best = {name: clips / _best(timings).wall for name, timings in per_round.items()}
    named = {name: rate for name, rate in best.items() if name != "auto" and rate == rate}
    fastest = max(named, key=named.get)
    ratios = [theirs.wall / ours.wall for ours, theirs in zip(per_round["auto"], per_round[fastest])]
    return (
        f"| {video} | {took} | {_fmt(best['auto'])} | {fastest} | {_fmt(named[fastest])} | "
        f"{_fmt(float(np.median(ratios)), 2)} | {clips} x {len(ratios)} |"
    )


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def run(args) -> str:
    from spatiotemporal.io.video import probe_video

    quick = getattr(args, "quick", False)

    rows = [
        "| video | reader | clips/s (16x4) | x EncodedVideo(pyav) | time / ffmpeg time | CPU / ffmpeg CPU "
        "| full decode frames/s | x ffmpeg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes, conversions, choices, resizes, plans = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        videos = [
            _shared_video_dir() / "flipping_a_pancake.mkv",
            _shared_video_dir() / "cockatoo.mp4",
            _generated_320p(Path(tmp)),
            _generated_long_gop_1080p(Path(tmp)),
            _generated_hevc(Path(tmp)),
        ]
        for path in videos:
            meta = probe_video(path)
            clips, repeats = (2, 1) if quick else _clip_plan(meta)
            plans.append(f"{path.name}: {clips} clips, {repeats} rounds")
            starts = _clip_starts(meta.num_frames, clips)
            ffmpeg = _ffmpeg(path, repeats)
            ffmpeg_fps = meta.num_frames / ffmpeg.wall
            must_decode = _frames_to_decode(path, starts)
            ffmpeg_clips = ffmpeg.scaled(must_decode / meta.num_frames)
            label = f"{path.name} ({meta.width}x{meta.height}, {meta.num_frames} frames, {clips} clips)"
            print(f"  {label}: ffmpeg {ffmpeg_fps:.0f} frames/s", flush=True)

            results = []
            for decoder in ("pyav", "decord"):
                timing = _pytorchvideo_clips(path, decoder, starts, meta.fps, repeats)
                full = _pytorchvideo_sequential(path, decoder, meta.num_frames, meta.fps)
                results.append((f"EncodedVideo({decoder})", timing, full))
            reference = results[0][1]
            interleaved = _ours_interleaved(path, starts, max(repeats, 2))  # a median needs rounds
            for backend in OURS:
                per_round, used = interleaved[backend]
                timing = _best(per_round)
                full = _ours_sequential(path, backend)
                name = f"ours {backend}" + (f" -> {used}" if used and used != backend else "")
                if used.startswith("refused"):
                    name, notes = f"ours {backend}", notes + [f"{path.name}, {backend}: {used}"]
                results.append((name, timing, full))
            for name, timing, full in results:
                against_ffmpeg = timing.ratio(ffmpeg_clips)
                rows.append(
                    f"| {label} | {name} | {_fmt(clips / timing.wall)} | {_fmt(reference.wall / timing.wall, 2)} | "
                    f"{_fmt(against_ffmpeg.wall, 2)} | {_fmt(against_ffmpeg.cpu, 2)} | {_fmt(full, 0)} | "
                    f"{_fmt(full / ffmpeg_fps, 2)} |"
                )
                print("  " + rows[-1], flush=True)
            rows.append(f"| {label} | ffmpeg -f null (limit) | | | 1.00 | 1.00 | {ffmpeg_fps:.0f} | 1.00 |")
            choices.append(_auto_choice(path.name, interleaved["auto"][1],
                                        {backend: interleaved[backend][0] for backend in OURS}, clips))
            resizes += _resize_rows(path, label, starts, repeats)
            conversions.append(_conversion_note(path, repeats, ffmpeg, meta.num_frames, clips * CLIP, must_decode))
            print(f"  {conversions[-1]}", flush=True)
    load = os.getloadavg()
    text = "\n".join(rows)
    text += (
        "\n\nWhich backend `auto` took, against the fastest backend named (random 16x4 clips; target: "
        "auto within 5%, i.e. auto / fastest >= 0.95). Our backends take turns within each round "
        "(auto, decord, pyav, torchcodec, then back), and auto / fastest is the median over the rounds of "
        "the ratio of their times in the same round:\n\n"
        "| video | auto took | auto clips/s | fastest backend | its clips/s | auto / fastest | clips x rounds |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(choices)
    )
    text += (
        f"\n\nClips per cell and rounds, per file ({'; '.join(plans)}): fewer for the files whose clips "
        f"cost seconds each. Each clip opens the file afresh (ours after one warm-up clip, as our "
        f"per-file seek checks are cached per process); clips and ffmpeg: best of the rounds "
        f"(wall), least of them (CPU). "

        f"'time / ffmpeg time' compares a reader's time for the clips with ffmpeg's for the frames a "
        f"decoder must go through (from the seek point before each clip to its end). "
        f"Load average during the run: {load[0]:.1f} (the machine was shared; absolute numbers are "
        f"noisy, ratios less so)."
    )
    text += (
        "\n\nThe limit leaves out RGB conversion, which ffmpeg -f null skips and every reader must "
        "do for the frames it returns (full decode: all of them). " + "; ".join(conversions) + "."
    )
    text += (
        "\n\nMViTv2's test frames at a short side of 256, resized while decoding (one swscale area "
        "call from the decoded frame, as torchvision's reader does for SlowFast; "
        "`VideoReader(short_side=256, geometry=\"slowfast_decoder\")`) against decoding full size "
        "and resizing in torch after (`geometry=\"slowfast\"`), both with PyAV, same frames, same "
        "run:\n\n"
        "| video | resize | clips/s (16x4) | full decode frames/s | clips/s x torch-after |\n"
        "|---|---|---|---|---|\n" + "\n".join(resizes)
    )
    if notes:
        text += "\n\nRefusals: " + "; ".join(notes) + "."
    return text
