"""One video reader over three decoders (PyAV, decord, torchcodec) that all return the same frames.

Frames come out as uint8 tensors shaped (T, H, W, C), in display orientation (rotation metadata
applied) and optionally resized so the short side has a given length.

Why the work is split the way it is:
- Frame indices mean "the i-th frame in presentation order", taken from one demux pass over the
  container (`_scan_packets`). Every backend is checked against that count, so an index selects the
  same picture whichever decoder serves it.
- Colour conversion is left to each decoder's plain rgb24 path (swscale without resizing), which
  is bit-identical across the three libraries. Resizing is not: each library carries a different
  swscale build and flags. So resizing happens once, here, in torch, after decode, by `io.resize`:
  the library's only resize, which the video transforms call too, so frames resized at decode
  (to cache them small) equal what the test transform makes of full-size frames. The one
  exception copies a loader whose decoder resizes (SlowFast's torchvision one, geometry
  "slowfast_decoder"): PyAV's swscale call converts and resizes in one pass, always with PyAV.
- Raw elementary streams carry no timestamps; their frames are timed by the rate the bitstream
  declares (frame i at i / fps), never by packet ordinals.
- decord and torchcodec rotate by themselves; PyAV does not, so its frames are rotated here.
- A keyframe is only a safe place to start decoding if it decodes on its own. That is checked
  once per file (one keyframe decoded after a seek); where it fails, decoders that cannot be
  fixed read forward from the first keyframe instead, and decord (which always seeks) is refused.
  The case met in practice is old x264 streams whose bug workaround ffmpeg enables only after
  reading x264's SEI in the first packet (`_decoder_options`).
- decord leaks memory across `get_batch` calls unless the reader is rewound (`seek(0)`) right
  after each, and it can hang on some files, so every decord call runs under a per-file timeout
  in a daemon thread; on timeout or error the reader falls back to the next backend (backend
  "auto") or raises. PyAV reads keep the same timeout by checking the clock between frames.

  A call abandoned on timeout keeps running, so its native decoder is freed only once it returns.
- Some inputs cannot seek at all (raw elementary streams such as .h264): reading from the start
  opens the file again instead of seeking to 0, and decord (which always seeks) is refused.
- PyAV converts only the frames it keeps, through one swscale context per reader, straight into
  the output batch; rgb24 conversion still costs a large share of a read on 4:4:4 streams.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypeVar

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from spatiotemporal.io.errors import REASON_MAX_CHARS, VideoDecodeError, one_line
from spatiotemporal.io.resize import Geometry, check_geometry, resize_short_side, resizes_in_decoder, short_side_size

BACKENDS = ("auto", "decord", "pyav", "torchcodec")


def check_backend(backend: str) -> None:
    """Raise ValueError unless `backend` is one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


# The order "auto" tries the decoders in: a later one serves only a file that every one before it
# refused, failed on or hung on. Measured, not habit (benchmarks/bench_decode.py; BENCHMARKS.md,
# decode sections): PyAV is the fastest on random 16x4 clips of every file there, on AMD EPYC and
# Intel Xeon, and on single-frame seeks and sequential sweeps; decord refuses the HEVC and the
# old-x264 files outright. The one pattern where decord led (16 frames spread over a 10 s GOP at
# 1080p, 1.1-1.3x, on a loaded machine) is a read, not a file, and too noisy to found a per-file
# rule on. PyAV is also the decoder the probe itself uses and the one that can be told the x264
# build (`_decoder_options`), so it reads every file the others read. decord comes next: faster
# than torchcodec on random clips.
AUTO_ORDER = ("pyav", "decord", "torchcodec")

# Frames per step in whole-video reads: bounds the full-resolution copies alive at once.
_CHUNK = 32

T = TypeVar("T")


@dataclass(frozen=True)
class VideoMetadata:
    """What a video is, as a viewer would see it."""

    path: str
    num_frames: int
    fps: float  # average frame rate
    variable_frame_rate: bool
    duration: float  # seconds, of the video stream
    width: int  # as displayed, i.e. after rotation
    height: int
    rotation: int  # clockwise degrees applied for display: 0, 90, 180 or 270
    codec: str
    has_audio: bool
    frame_count_derived: bool  # True when the container declared no frame count

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class StreamTiming:
    """What a video stream's header declares about its timing, as ffmpeg reports it: what a loader
    that places clips by the declared duration, such as SlowFast's torchvision one, places them with."""

    duration_ticks: int | None  # the stream's declared duration in `time_base` units; None: none declared
    time_base: Fraction
    guessed_rate: Fraction | None  # ffmpeg's `av_guess_frame_rate`, what torchvision's probe reports


@dataclass(frozen=True)
class _FrameIndex:
    """Presentation timestamps of every frame, and of the keyframes, from one demux pass."""

    pts: np.ndarray  # int64, sorted, in stream time_base units
    keyframe_pts: np.ndarray  # int64, sorted: the container's keyframes
    time_base: Fraction
    has_all_pts: bool  # False when some packets carry no timestamp (then decode by order)
    timestamped: bool  # False when packets lack timestamps (raw elementary streams): ordinals stand in
    packet_durations: np.ndarray  # int64, per frame in presentation order
    x264_build: int | None  # from the encoder's SEI in the first packet, when x264 wrote it
    timing: StreamTiming  # the stream header's, read when the probe opened the file

    def seek_points(self, seekable: bool) -> np.ndarray:
        """Where decoding may start: every keyframe, or only the first when the later ones do
        not decode on their own (then every read decodes forward from the start)."""
        return self.keyframe_pts if seekable else self.keyframe_pts[:1]


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file does not exist")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")


def _open_container(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as error:
        reason = _mp4_structure_problem(path) or "not a readable media container"
        raise VideoDecodeError(path, f"{reason} ({_ffmpeg_reason(error)})")


def _mp4_structure_problem(path: str) -> str | None:
    """Why an MP4/MOV that ffmpeg refuses is broken, from its top-level boxes; None if not MP4.

    ffmpeg only says "invalid data" for a download cut short; the box sizes tell how it was cut.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return None
        position, kinds = 0, []
        while position + 8 <= size:
            f.seek(position)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if length == 1:
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:
                length = size - position
            if length < 8:
                return f"malformed MP4: box '{kind}' at byte {position} has size {length}"
            if position + length > size:
                return (
                    f"truncated MP4: box '{kind}' at byte {position} needs {length} bytes, "
                    f"the file ends after {size - position}"
                )
            kinds.append(kind)
            position += length
    if "moov" not in kinds:
        return "MP4 without its 'moov' index box (cut short or never finalised)"
    return None


def _ffmpeg_reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        detail = "audio only" if kinds == ["audio"] else ", ".join(kinds)
        raise VideoDecodeError(path, f"no video stream ({detail})")
    return container.streams.video[0]


def _scan_packets(
    container: av.container.InputContainer, stream, path: str, timing: StreamTiming
) -> tuple[_FrameIndex, int]:
    """Demux (no decoding) the video stream: timestamps, keyframes, and the end of the last frame."""
    pts: list[int] = []
    durations: list[int] = []
    keys: list[int] = []
    end = None
    missing_pts = False
    x264_build = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at end of stream
                continue
            if not pts and stream.codec_context.name == "h264":
                found = re.search(rb"x264 - core (\d+)", bytes(packet))
                x264_build = int(found.group(1)) if found else None
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                missing_pts = True
                stamp = len(pts)
            pts.append(stamp)
            durations.append(int(packet.duration or 0))
            if packet.is_keyframe:
                keys.append(stamp)
            if packet.duration:
                end = max(end or stamp, stamp + packet.duration)
    except av.error.FFmpegError as error:
        raise VideoDecodeError(
            path,
            f"container data is unreadable after {len(pts)} packets ({_ffmpeg_reason(error)})",
            decoded_frames=_count_decodable(path),
        )
    stamps = np.asarray(pts, dtype=np.int64)
    ranking = np.argsort(stamps, kind="stable")
    order = stamps[ranking]
    index = _FrameIndex(
        pts=order,
        keyframe_pts=np.sort(np.asarray(keys or order[:1], dtype=np.int64)),
        time_base=stream.time_base or Fraction(1, 1),
        has_all_pts=not missing_pts and len(np.unique(order)) == len(order),
        timestamped=not missing_pts,
        packet_durations=np.asarray(durations, dtype=np.int64)[ranking],
        x264_build=x264_build,
        timing=timing,
    )
    return index, (end if end is not None else (int(order[-1]) if len(order) else 0))


def _scan_packets_from_start(path: str, timing: StreamTiming) -> tuple[_FrameIndex, int]:
    # A fresh container rather than seek(0): raw elementary streams (.h264) refuse to seek.
    container = _open_container(path)
    try:
        return _scan_packets(container, _video_stream(container, path), path, timing)
    finally:
        container.close()


def _seek(container: av.container.InputContainer, path: str, offset: int, **options: Any) -> None:
    """container.seek, with ffmpeg's refusal as a VideoDecodeError naming the file."""
    try:
        container.seek(offset, **options)
    except av.error.FFmpegError as error:
        # EPERM is how ffmpeg says the input cannot seek at all (raw elementary streams).
        cannot = isinstance(error, av.error.PermissionError)
        reason = "the container does not support seeking" if cannot else "seeking failed"
        raise VideoDecodeError(path, f"{reason} ({_ffmpeg_reason(error)})")


def _count_decodable(path: str) -> int:
    """How many frames decode, in order, before the first error (single-threaded, deterministic)."""
    count = 0
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"
            for _ in container.decode(stream):
                count += 1
    except (av.error.FFmpegError, IndexError):
        pass
    return count


def _is_variable_rate(index: _FrameIndex) -> bool:
    if len(index.pts) < 3:
        return False
    steps = np.diff(index.pts)
    typical = float(np.median(steps))
    # Containers with coarse clocks (mkv counts milliseconds) jitter by a tick: 33, 33, 34 ms is
    # still 30 fps. Anything beyond two ticks and 5% of a frame is a real change of rate.
    tolerance = max(2.0, 0.05 * typical)
    return bool(np.abs(steps - typical).max() > tolerance)


def _probe(path: str) -> tuple[VideoMetadata, _FrameIndex]:
    path = os.fspath(path)
    _check_file(path)
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        declared = int(stream.frames or 0)
        codec = stream.codec_context.name
        has_audio = bool(container.streams.audio)
        stored_w, stored_h = stream.codec_context.width, stream.codec_context.height
        container_duration = container.duration / av.time_base if container.duration else None
        stream_duration = float(stream.duration * stream.time_base) if stream.duration else None
        timing = StreamTiming(int(stream.duration) if stream.duration else None, stream.time_base,
                              stream.guessed_rate or None)
        average_rate = stream.average_rate
        first = _first_frame(container, stream, path)
        declared_rate = stream.codec_context.framerate  # from the bitstream, once a frame decoded
        rotation = int(round(-(first.rotation or 0))) % 360
        try:
            container.seek(0)
        except av.error.FFmpegError:
            scan = None  # cannot seek (a raw elementary stream): scanned from a fresh open below
        else:
            scan = _scan_packets(container, stream, path, timing)
    finally:
        container.close()
    index, end_pts = scan if scan is not None else _scan_packets_from_start(path, timing)
    count = len(index.pts)
    if count == 0:
        raise VideoDecodeError(path, "video stream holds no frames", decoded_frames=0)
    if declared and count < declared:
        raise VideoDecodeError(
            path,
            f"truncated: the container declares {declared} frames but holds data for {count}",
            decoded_frames=_count_decodable(path),
        )
    if not index.timestamped:
        # Ordinals stand in for the missing timestamps, so neither they nor the end they imply
        # measure time: the frame rate does.
        fps = _untimed_frame_rate(declared_rate, index, average_rate)
        stream_duration = count / fps if fps == fps else (container_duration or 0.0)
    else:
        if stream_duration is None:
            start = int(index.pts[0])
            stream_duration = (end_pts - start) * float(index.time_base) if end_pts > start else None
        if average_rate:
            fps = float(average_rate)
        elif stream_duration:
            fps = count / stream_duration
        else:
            fps = float("nan")
        if stream_duration is None:
            stream_duration = count / fps if fps == fps else (container_duration or 0.0)
    width, height = (stored_h, stored_w) if rotation in (90, 270) else (stored_w, stored_h)
    metadata = VideoMetadata(
        path=path,
        num_frames=count,
        fps=fps,
        variable_frame_rate=_is_variable_rate(index),
        duration=float(stream_duration),
        width=width,
        height=height,
        rotation=rotation,
        codec=codec,
        has_audio=has_audio,
        frame_count_derived=declared == 0,
    )
    return metadata, index


def _untimed_frame_rate(declared: Fraction | None, index: _FrameIndex, average_rate: Fraction | None) -> float:
    """Frames per second of a stream whose packets carry no timestamps (a raw elementary stream).

    The rate the bitstream declares (H.264's VUI timing, MPEG-4's VOL) comes first, then the
    packet durations ffmpeg's parser derives from the same headers; the demuxer's average rate
    comes last, because for raw streams it is only the demuxer's default (25 for .h264).
    NaN when none is known.
    """
    if declared and float(declared) > 0:
        return float(declared)
    durations = index.packet_durations[index.packet_durations > 0]
    if len(durations):
        return 1.0 / (float(np.median(durations)) * float(index.time_base))
    return float(average_rate) if average_rate else float("nan")


def _first_frame(container, stream, path: str) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as error:
        raise VideoDecodeError(path, f"the first frame does not decode ({_ffmpeg_reason(error)})", 0)
    raise VideoDecodeError(path, "video stream holds no decodable frames", decoded_frames=0)


def probe_video(path: str | os.PathLike) -> VideoMetadata:
    """Metadata of a video; raises VideoDecodeError (naming path and reason) when it is unusable.

    Only the container and the first frame are read; finding damage in the middle of a stream
    takes decoding every frame (`probe_by_reading` with `check_decode`).
    """
    return _probe(os.fspath(path))[0]


def decoder_threads() -> int:
    """Threads one decoder may use: as many as torch may in this process.

    A process that set torch to one thread (a Ray inference actor, a DataLoader worker) is one of
    several workers sharing the cores; decoders that each start a thread per core would
    oversubscribe them. Elsewhere torch's count is the core count, as ffmpeg's own default.
    """
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------------------------
# Shared post-processing: rotation and resizing happen here, once, for every backend.
# --------------------------------------------------------------------------------------------


def rotate_frames(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate (T, H, W, C) frames clockwise by `rotation` degrees."""
    if rotation % 360 == 0:
        return frames
    return torch.rot90(frames, k=-(rotation // 90), dims=(1, 2)).contiguous()


# --------------------------------------------------------------------------------------------
# Backends. Each decodes sorted unique frame indices to full-resolution rgb24 frames.
# `more_follow` says the next read starts right after this one (a sequential sweep).
# --------------------------------------------------------------------------------------------


class _DecodeTimeout(Exception):
    pass


def _call_with_timeout(function: Callable[[], T], timeout_s: float) -> T:
    """Run `function` in a daemon thread; a hung native call is abandoned, never waited on.

    A daemon thread (not a pool) so a decoder stuck forever cannot keep the interpreter alive.
    decord's FFI releases the GIL, so the waiting thread keeps running.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = function()
        except BaseException as error:  # handed to the caller's thread
            result["error"] = error

    worker = threading.Thread(target=target, name="decord-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _DecodeTimeout(f"decord did not answer within {timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


class _BackendUnusable(Exception):
    """The backend opens the file but cannot be trusted to return its frames."""


_FileKey = tuple[str, int, int]
# Per-file answers that cost a decode to find out, kept for the life of the process.
_DECORD_AGREES: dict[_FileKey, bool] = {}


def _file_key(path: str) -> _FileKey:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def _remember(cache: dict[_FileKey, T], key: _FileKey, compute: Callable[[], T]) -> T:
    if key not in cache:
        if len(cache) > 100_000:
            cache.clear()
        cache[key] = compute()
    return cache[key]


def _decoder_options(index: _FrameIndex) -> dict[str, str]:
    """Tell ffmpeg's h264 decoder which x264 wrote the stream.

    ffmpeg works around bugs of old x264 builds (4:4:4 intra prediction before core 151) only
    after it has read x264's version SEI, which sits in the first packet. A decoder that seeks
    straight to a later keyframe never sees it and silently decodes garbage: cockatoo.mp4
    (core 142, High 4:4:4) does exactly this at its IDR frames 76 and 145.
    """
    return {"x264_build": str(index.x264_build)} if index.x264_build is not None else {}


def _keyframes_decode_alone(path: str, index: _FrameIndex, options: dict[str, str]) -> bool:
    """Whether a later keyframe decodes cleanly right after a seek, with these decoder options.

    Readers that seek to a keyframe which does not decode on its own return wrong pixels without
    an error; for such files decoding starts at the first keyframe instead.
    """
    if len(index.keyframe_pts) < 2:
        return True
    probe = int(index.keyframe_pts[len(index.keyframe_pts) // 2])
    with av.open(path, metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        stream.codec_context.options = dict(options)
        _seek(container, path, probe, stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= probe:
                    return frame.pts == probe and not frame.is_corrupt
        except av.error.FFmpegError:
            return False
    return False


@dataclass(frozen=True)
class _Seekability:
    plain: bool  # for decoders we cannot pass options to (decord, torchcodec)
    with_options: bool  # for PyAV, which gets `_decoder_options`
    container: bool = True  # False when the input cannot seek at all (raw elementary streams)


def _seekability(path: str, index: _FrameIndex) -> _Seekability:
    try:
        plain = _keyframes_decode_alone(path, index, {})
    except VideoDecodeError:
        # Nothing to seek to but the start: readers decode forward from the first keyframe.
        return _Seekability(plain=False, with_options=False, container=False)
    options = _decoder_options(index)
    with_options = plain or (bool(options) and _keyframes_decode_alone(path, index, options))
    return _Seekability(plain, with_options)


_SEEKABILITY: dict[_FileKey, _Seekability] = {}


class _DecordBackend:
    """decord behind a timeout. A call that runs past it is abandoned but keeps running in its
    thread, still on the native decoder: so no second call starts while it runs, and closing
    leaves the freeing to that call, which does it when it returns."""

    name = "decord"
    rotates = True

    def __init__(
        self, path: str, metadata: VideoMetadata, index: _FrameIndex, seekability: _Seekability, timeout_s: float
    ):
        import decord

        if not seekability.container:
            raise _BackendUnusable("the container cannot seek (a raw elementary stream?) and decord always seeks")
        if not seekability.plain:
            raise _BackendUnusable(
                "its later keyframes do not decode on their own (decord cannot be told the x264 "
                "build ffmpeg needs) and decord always seeks to them"
            )
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # guards the three fields below
        self._calls_running = 0
        self._closed = False
        self.reader = _call_with_timeout(
            lambda: decord.VideoReader(path, ctx=decord.cpu(0), num_threads=decoder_threads()), timeout_s
        )
        try:
            self._check_usable(path, metadata, index)
        except BaseException:
            self.close()
            raise

    def _check_usable(self, path: str, metadata: VideoMetadata, index: _FrameIndex) -> None:
        if len(self.reader) != metadata.num_frames:
            raise _BackendUnusable(
                f"decord indexes {len(self.reader)} frames, the container holds {metadata.num_frames}"
            )
        agrees = lambda: self._seeks_like_pyav(path, metadata, index)  # noqa: E731
        if not _remember(_DECORD_AGREES, _file_key(path), agrees):
            raise _BackendUnusable("decord returns wrong pixels after seeking to a keyframe in this file")

    def _seeks_like_pyav(self, path: str, metadata: VideoMetadata, index: _FrameIndex) -> bool:
        """decord's own seeking goes wrong on some streams where ffmpeg's is right (x265 open
        GOPs): compare one keyframe reached by a seek with PyAV's decode of it."""
        keys = [int(k) for k in self.reader.get_key_indices()]
        if len(keys) < 2:
            return True
        probe = np.asarray([keys[len(keys) // 2]])
        ours = self.decode(probe)
        reference = _PyAVBackend(path, metadata, index, seekable=_seekability(path, index).with_options)
        try:
            theirs = rotate_frames(reference.decode(probe), metadata.rotation)
        finally:
            reference.close()
        return torch.equal(ours, theirs)

    def decode(self, indices: np.ndarray, more_follow: bool = False) -> torch.Tensor:
        # After get_batch, decord's decoder thread keeps decoding ahead while the caller is busy
        # elsewhere, and a later read's seek frees only part of those frames: RSS climbs by
        # hundreds of MB on 720p. Rewinding right after the read stops it (a rewind before the
        # next read is too late). A sequential sweep keeps its place instead: rewinding between
        # its chunks would decode each chunk again from its keyframe, quadratic within a GOP.
        rewind = not more_follow

        def read(reader) -> np.ndarray:
            batch = reader.get_batch(indices.tolist()).asnumpy()
            if rewind:
                reader.seek(0)
            return batch

        return torch.from_numpy(_call_with_timeout(lambda: self._on_reader(read), self.timeout_s))

    def _on_reader(self, call: Callable[[Any], T]) -> T:
        """`call(reader)` in the calling (timeout) thread, which frees the reader afterwards if
        the backend was closed while the call ran."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the decord reader is closed")
            if self._calls_running:
                # Only an abandoned call can still be running: the caller waits for every other.
                raise _DecodeTimeout("an earlier decord call on this file timed out and is still running")
            self._calls_running += 1
            reader = self.reader
        try:
            return call(reader)
        finally:
            with self._lock:
                self._calls_running -= 1
                orphaned = self._closed and self._calls_running == 0
            if orphaned:
                self._free()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = self._calls_running == 0
        if idle:
            self._free()

    def _free(self) -> None:
        # Free the native decoder now, not when the object is collected: after a failed read it
        # sits in a reference cycle (exception -> traceback -> frame), and if that cycle is
        # collected inside a forked DataLoader worker, decord's destructor segfaults there.
        with self._lock:
            reader, self.reader = self.reader, None
        if reader is not None and getattr(reader, "_handle", None) is not None:
            reader.__del__()
            reader._handle = None


class _TorchCodecBackend:
    """torchcodec is handed our frame index instead of scanning the file again, so frame i is
    the same picture as for the other backends, and the index names only the keyframes it may
    seek to. (Its `metadata` then still estimates the count from the header; it is not used.)"""

    name = "torchcodec"
    rotates = True

    def __init__(self, path: str, metadata: VideoMetadata, index: _FrameIndex, seekable: bool):
        from torchcodec.decoders import VideoDecoder

        keys = set(index.seek_points(seekable).tolist())
        durations = index.packet_durations
        mappings = {
            "frames": [
                {"pts": int(p), "duration": int(d), "key_frame": int(int(p) in keys)}
                for p, d in zip(index.pts, durations)
            ]
        }
        self.decoder = VideoDecoder(
            path,
            dimension_order="NHWC",
            seek_mode="exact",
            num_ffmpeg_threads=decoder_threads(),
            custom_frame_mappings=json.dumps(mappings),
        )

    def decode(self, indices: np.ndarray, more_follow: bool = False) -> torch.Tensor:
        return self.decoder.get_frames_at(indices.tolist()).data

    def close(self) -> None:
        self.decoder = None


class _RGBConverter:
    """rgb24 conversion through one swscale context kept for the life of a reader.

    `frame.to_ndarray(format="rgb24")` builds a context (with a thread pool) for every frame and
    frees it with the frame; on 720p that costs a fifth of the conversion itself. The flags are
    to_ndarray's (bilinear, no resize), so the pixels are the same. One thread: the decoder's
    frame threads already keep the other cores busy while this thread converts.

    The plain conversion follows the frame's colour tags (a BT.709 stream converts with BT.709),
    as decord, torchcodec and the ffmpeg CLI do (tests/test_video_reader.py compares all three
    with ffmpeg): every protocol but the one below and every training set take those pixels.

    With `short_side`, the same call also resizes, as torchvision's video reader does for SlowFast
    (the "slowfast_decoder" geometry): one swscale pass from the decoded pixel format to rgb24
    with the area filter, at the size `short_side_size` gives that geometry, and in that reader's
    colours. torchvision/csrc/io/decoder/video_sampler.cpp calls `sws_getContext` and `sws_scale`
    without `sws_setColorspaceDetails`, so swscale keeps its defaults whatever the tags: BT.601
    coefficients, full range for the yuvj* and grey formats (its `handle_jpeg`), limited for the rest.
    """

    def __init__(self, short_side: int | None = None) -> None:
        self._reformatter = VideoReformatter()
        self._short_side = short_side

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._short_side is None:
            return self._reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        height, width = short_side_size(frame.height, frame.width, self._short_side, "slowfast_decoder")
        return self._reformatter.reformat(
            frame, width, height, format="rgb24", interpolation="AREA", threads=1,
            src_colorspace="ITU601", src_color_range=_swscale_default_range(frame.format.name),
        ).to_ndarray()


def _stored_size(metadata: VideoMetadata) -> tuple[int, int]:
    """Width and height of the decoded pictures, before the rotation applied for display."""
    if metadata.rotation in (90, 270):
        return metadata.height, metadata.width
    return metadata.width, metadata.height


def _check_frame_size(path: str, frame: av.VideoFrame, frame_index: int, stored_size: tuple[int, int]) -> None:
    """A stream whose resolution changes mid-way (segments of different sizes joined) has no one
    (T, H, W, C) shape: name the frame and both sizes rather than fail to stack them."""
    if (frame.width, frame.height) != stored_size:
        raise VideoDecodeError(
            path,
            f"frame size changes mid-stream: frame {frame_index} is {frame.width}x{frame.height}, "
            f"the stream declares {stored_size[0]}x{stored_size[1]}",
        )


def _swscale_default_range(pixel_format: str) -> str:
    """The range swscale assumes for a source it is told nothing about (libswscale/utils.c
    `handle_jpeg`): full ("JPEG") for the yuvj* and grey formats, limited ("MPEG") for the rest."""
    return "JPEG" if pixel_format.startswith(("yuvj", "gray", "ya")) else "MPEG"


class _FrameBatch:
    """The kept frames, converted as they come straight into one (T, H, W, C) array, so a read
    holds each full-resolution picture once (no list of frames to stack afterwards).

    `indices` are the frames it holds, in order; every one must have the size the stream
    declares (`stored_size`, width and height before rotation), as one array needs."""

    def __init__(self, path: str, indices: np.ndarray, stored_size: tuple[int, int], to_rgb: _RGBConverter):
        self._path = path
        self._indices = indices
        self._count = len(indices)
        self._stored_size = stored_size
        self._to_rgb = to_rgb
        self._filled = 0
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self._filled

    def append(self, frame: av.VideoFrame) -> None:
        _check_frame_size(self._path, frame, int(self._indices[self._filled]), self._stored_size)
        rgb = self._to_rgb(frame)
        if self._array is None:
            self._array = np.empty((self._count, *rgb.shape), dtype=np.uint8)
        self._array[self._filled] = rgb
        self._filled += 1

    @property
    def array(self) -> np.ndarray:
        assert self._array is not None and self._filled == self._count, "batch read before it was full"
        return self._array


class _PyAVBackend:
    """Decodes forward from the seek point before each wanted frame, matching frames by
    presentation timestamp; keeps decoding without a seek while that is no slower. Falls back to
    counting frames from the start when timestamps are missing or do not match the demuxed ones."""

    name = "pyav"
    rotates = False

    def __init__(self, path: str, metadata: VideoMetadata, index: _FrameIndex, seekable: bool,
                 short_side: int | None = None, timeout_s: float | None = None):
        self.path = path
        self.index = index
        self.seek_points = index.seek_points(seekable)
        self._stored_size = _stored_size(metadata)
        # PyAV decodes in this thread and hands back every frame, so a read is bounded by checking
        # the clock between frames: no thread to abandon, nothing left running after a timeout.
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self._open()
        self._to_rgb = _RGBConverter(short_side)  # short_side: resize in the conversion (decode-time area)
        self._decoded = None  # the live frame iterator, positioned after `self._last`
        self._last: int | None = None

    def _open(self) -> None:
        self.container = _open_container(self.path)
        self.stream = _video_stream(self.container, self.path)
        self.stream.thread_type = "AUTO"
        self.stream.thread_count = decoder_threads()
        self.stream.codec_context.options = _decoder_options(self.index)

    def _reopen(self) -> None:
        """Back to the first packet without seeking, which raw elementary streams refuse."""
        self._decoded, self._last = None, None
        self.container.close()
        self._open()

    def decode(self, indices: np.ndarray, more_follow: bool = False) -> torch.Tensor:
        self._deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            frames = self._decode_by_pts(indices) if self.index.has_all_pts else None
            if frames is None:
                frames = self._decode_in_order(indices)
        except BaseException:
            self._decoded, self._last = None, None  # the frame iterator died with the read
            raise
        return torch.from_numpy(frames.array)

    def _frames(self):
        """Decoded frames; ffmpeg errors become VideoDecodeError with how far the file decodes,
        and a read that runs past its deadline a VideoDecodeError saying so."""
        try:
            for frame in self.container.decode(self.stream):
                if self._deadline is not None and time.monotonic() > self._deadline:
                    raise VideoDecodeError(self.path, f"pyav: timed out after {self.timeout_s:g} s")
                yield frame
        except av.error.FFmpegError as error:

            raise VideoDecodeError(
                self.path, f"decoding failed ({_ffmpeg_reason(error)})", _count_decodable(self.path)
            )

    def _seek_point(self, stamp: int) -> int:
        return int(self.seek_points[max(np.searchsorted(self.seek_points, stamp, side="right") - 1, 0)])

    def _decode_by_pts(self, indices: np.ndarray) -> _FrameBatch | None:
        pts = self.index.pts
        wanted = pts[indices]
        found = _FrameBatch(self.path, indices, self._stored_size, self._to_rgb)
        while len(found) < len(wanted):
            target = int(wanted[len(found)])
            start = self._seek_point(target)
            # Decoding on is cheaper than seeking unless the target lies behind us or past a seek point.
            fresh = self._decoded is None or self._last is None or target <= self._last or start > self._last
            if fresh:
                _seek(self.container, self.path, start, stream=self.stream, backward=True, any_frame=False)
                self._decoded, self._last = self._frames(), None
            for frame in self._decoded:
                stamp = frame.pts
                if stamp is None or (fresh and self._last is None and stamp > target):
                    self._decoded = None
                    return None  # the seek overshot or timestamps are missing: count instead
                slot = int(np.searchsorted(pts, stamp))
                if slot >= len(pts) or pts[slot] != stamp:
                    self._decoded = None
                    return None  # decoded timestamps differ from demuxed ones
                self._last = stamp
                if stamp == target:
                    found.append(frame)
                    if len(found) == len(wanted):
                        break
                    target = int(wanted[len(found)])
                    if self._seek_point(target) > stamp:
                        break  # a seek point lies between here and the next wanted frame
            else:
                self._decoded = None
                raise VideoDecodeError(
                    self.path,
                    f"the stream ends before frame {int(indices[len(found)])}",
                    _count_decodable(self.path),
                )
        return found

    def _decode_in_order(self, indices: np.ndarray) -> _FrameBatch:
        self._reopen()
        wanted = set(indices.tolist())  # sorted and unique, so frames arrive in slot order
        out = _FrameBatch(self.path, indices, self._stored_size, self._to_rgb)

        last = int(indices[-1])
        count = -1
        for count, frame in enumerate(self._frames()):
            if count in wanted:
                out.append(frame)
            if count >= last:
                return out
        raise VideoDecodeError(self.path, f"the stream ends before frame {last}", count + 1)

    def check_every_frame_decodes(self, num_frames: int) -> None:
        """Decode (without converting) every frame from the start, each of the stream's size."""
        self._deadline = None  # a whole-file check is not one read
        self._reopen()
        count = 0
        try:
            for count, frame in enumerate(self._frames(), start=1):
                _check_frame_size(self.path, frame, count - 1, self._stored_size)
        finally:
            self._decoded, self._last = None, None
        if count < num_frames:
            raise VideoDecodeError(self.path, f"only {count} of {num_frames} frames decode", decoded_frames=count)

    def close(self) -> None:
        self._decoded = None
        self.container.close()



# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


class VideoReader:
    """Random access to the frames of one video file.

    backend: "auto" (PyAV, then the rest of `AUTO_ORDER` for a file the ones before it refuse,
    fail or hang on), "decord", "pyav" or "torchcodec"; `backend` says which one serves. `short_side` resizes frames after decode, sized and resized
    by `geometry` as the test views they feed will be; the "slowfast_decoder" geometry resizes
    inside the conversion from the decoded frame instead, which only PyAV's swscale call exposes,
    so such a reader decodes with PyAV whatever `backend` says. `timeout_s` bounds every PyAV
    read (each `get_frames`, each chunk of a sweep; the clock is checked between decoded frames,
    and a late read raises VideoDecodeError) and every decord call (run in a thread that is
    abandoned when late; under "auto" the next backend then serves, since decord's hangs are its
    own). torchcodec, "auto"'s last resort, is not bounded.
    """



    def __init__(
        self,
        path: str | os.PathLike,
        backend: str = "auto",
        short_side: int | None = None,
        timeout_s: float = 30.0,
        geometry: Geometry = "slowfast",
    ):
        check_backend(backend)
        if short_side is not None and short_side <= 0:
            raise ValueError(f"short_side must be positive, got {short_side}")
        check_geometry(geometry)
        self.path = os.fspath(path)
        self.requested_backend = backend
        self.short_side = short_side
        self.geometry = geometry
        self.timeout_s = timeout_s
        self.metadata, self._index = _probe(self.path)
        self._seekable = _remember(_SEEKABILITY, _file_key(self.path), lambda: _seekability(self.path, self._index))
        self._resizes_in_decoder = short_side is not None and resizes_in_decoder(geometry)
        # What "auto" may still turn to (none where only PyAV can serve the geometry).
        self._untried = list(AUTO_ORDER) if backend == "auto" and not self._resizes_in_decoder else []
        self._failures: list[_BackendFailure] = []  # of "auto"'s backends, in the order they failed
        self._backend = self._pyav() if self._resizes_in_decoder else self._open_backend(backend)

    @property
    def backend(self) -> str:
        """The backend actually serving frames (after any fallback)."""
        return self._backend.name

    def _pyav(self) -> _PyAVBackend:
        return _PyAVBackend(self.path, self.metadata, self._index, self._seekable.with_options,
                            self.short_side if self._resizes_in_decoder else None, self.timeout_s)

    def _construct(self, name: str):
        if name == "pyav":
            return self._pyav()
        if name == "torchcodec":
            return _TorchCodecBackend(self.path, self.metadata, self._index, self._seekable.plain)
        return _DecordBackend(self.path, self.metadata, self._index, self._seekable, self.timeout_s)

    def _open_backend(self, backend: str):
        if backend == "auto":
            return self._next_backend()
        try:
            return self._construct(backend)
        except VideoDecodeError:
            raise
        except Exception as error:
            raise _backend_failure(self.path, _BackendFailure(backend, error, while_reading=False))

    def _next_backend(self, failure: _BackendFailure | None = None):
        """The next backend of `AUTO_ORDER` that takes the file, after a warning naming the one
        that failed. A VideoDecodeError is the file's fault, which no other decoder mends; when
        every backend fails, the error is the first one's (PyAV's), naming the others."""
        while self._untried:
            name = self._untried.pop(0)
            if failure is not None:
                self._failures.append(failure)
                self._warn_fallback(failure, name)
            try:
                return self._construct(name)
            except VideoDecodeError:
                raise
            except Exception as refusal:
                failure = _BackendFailure(name, refusal, while_reading=False)
        self._failures.append(failure)
        raise _backend_failure(self.path, *self._failures)

    def _warn_fallback(self, failure: _BackendFailure, next_name: str) -> None:
        # Issued from the video file's "location", not a line of this module: the warning prints
        # as one line naming the file, with no source line of ours under it.
        warnings.warn_explicit(
            f"{self.path}: {failure.backend} failed ({_short(failure.error)}); decoding with {next_name} instead",
            RuntimeWarning,
            filename=__name__,
            lineno=0,
            registry=_FALLBACK_WARNINGS_SHOWN,
        )

    def __len__(self) -> int:
        return self.metadata.num_frames

    @property
    def stream_timing(self) -> StreamTiming:
        """The stream header's timing (declared duration, time base, guessed rate), as the probe
        read it: what SlowFast's torchvision loader places test views with."""
        return self._index.timing

    def frame_timestamps(self) -> np.ndarray:
        """Presentation time in seconds of every frame, in index order (for VFR-aware sampling).

        Where the packets carry no usable timestamps (raw elementary streams such as .h264 have
        none, and repeated ones order nothing), frame i is shown at i / fps, the stream's rate.
        """
        if self._index.has_all_pts:
            return self._index.pts.astype(np.float64) * float(self._index.time_base)
        fps = self.metadata.fps
        if not fps > 0:
            raise VideoDecodeError(self.path, "its frames carry no timestamps and it declares no frame rate")
        return np.arange(len(self), dtype=np.float64) / fps

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (T, H, W, C) frames at `indices` (any order, repeats allowed), as displayed."""
        return self._get_frames(indices, more_follow=False)

    def _get_frames(self, indices: Sequence[int], more_follow: bool) -> torch.Tensor:
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            raise ValueError("get_frames needs at least one index")
        count = len(self)
        if wanted.min() < 0 or wanted.max() >= count:
            bad = int(wanted[(wanted < 0) | (wanted >= count)][0])
            raise IndexError(f"{self.path}: frame {bad} is out of range [0, {count})")
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = self._decode(unique, more_follow)
        if not self._backend.rotates:
            frames = rotate_frames(frames, self.metadata.rotation)
        if self.short_side is not None and not self._resizes_in_decoder:
            frames = resize_short_side(frames, self.short_side, self.geometry)
        if len(unique) != len(wanted) or not np.array_equal(unique, wanted):
            frames = frames[torch.from_numpy(inverse)]
        return frames

    def _decode(self, unique: np.ndarray, more_follow: bool) -> torch.Tensor:
        while True:
            try:
                frames = self._backend.decode(unique, more_follow)
                break
            except VideoDecodeError:
                raise
            except Exception as error:
                failure = _BackendFailure(self._backend.name, error, while_reading=True)
                if not self._untried:  # a backend asked for by name, or the last "auto" has
                    raise _backend_failure(self.path, *self._failures, failure)
                self._backend.close()
                self._backend = self._next_backend(failure)
        if frames.shape[0] != len(unique):
            raise VideoDecodeError(
                self.path, f"{self.backend} returned {frames.shape[0]} of {len(unique)} frames"
            )
        return frames

    def check_every_frame_decodes(self) -> None:
        """Decode every frame with the serving backend, raising VideoDecodeError where one does
        not: damage mid-stream, a frame count short of the container's, a size that changes.
        PyAV checks without converting frames to RGB (a third of the cost on 4:4:4 streams);
        the other backends only decode by converting, so they read the video through."""
        if isinstance(self._backend, _PyAVBackend):
            self._backend.check_every_frame_decodes(len(self))
        else:
            for _ in self.iter_chunks():
                pass

    def read_all(self) -> torch.Tensor:
        """Every frame, decoded and resized chunk by chunk so full-resolution copies stay small."""
        parts = list(self.iter_chunks())
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def iter_chunks(self, chunk: int = _CHUNK) -> Iterator[torch.Tensor]:
        """All frames in order, `chunk` at a time (sequential decode without holding the video).

        Each chunk tells the decoder that the next one follows, so it keeps its place; a sweep
        abandoned half-way leaves decord unrewound until the next read, which rewinds it.
        """
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            yield self._get_frames(range(start, stop), more_follow=stop < len(self))

    def close(self) -> None:
        if getattr(self, "_backend", None) is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"VideoReader({self.path!r}, backend={self.backend!r}, frames={m.num_frames}, "
            f"{m.width}x{m.height} @ {m.fps:.3g} fps)"
        )


@dataclass(frozen=True)
class _BackendFailure:
    backend: str
    error: BaseException
    while_reading: bool  # False: it refused the file when opened


# Fallback warnings already shown (warnings' own registry): each file's once per process.
_FALLBACK_WARNINGS_SHOWN: dict = {}


def _backend_failure(path: str, first: _BackendFailure, *others: _BackendFailure) -> VideoDecodeError:
    """One error for a file that no backend read: the first failure (the backend preferred, so
    the one a user would look at), naming the backends that failed after it."""
    also = f" ({', '.join(other.backend for other in others)} also failed)" if others else ""
    decoded = None
    if not first.while_reading:
        head, tail = f"{first.backend} cannot be used on it: ", also
    elif isinstance(first.error, _DecodeTimeout):
        # How far the file decodes says nothing about a hang, and finding out decodes it all.
        head, tail = f"{first.backend}: timed out (", f"){also}"
    else:
        head, tail = f"{first.backend}: decoding failed (", f"){also}"
        decoded = _count_decodable(path)
    # The library's message gives way, so the backends named after it and the count of decoded
    # frames VideoDecodeError appends stay whole.
    appended = len(f" (decoded {decoded} frames before the failure)") if decoded is not None else 0
    detail = one_line(_short(first.error), REASON_MAX_CHARS - appended - len(head) - len(tail))
    return VideoDecodeError(path, f"{head}{detail}{tail}", decoded)


def _short(error: BaseException) -> str:

    """decord's messages nest C++ locations and stack traces; keep the last plain sentence."""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Stack trace")]
    return (lines[0] if lines else type(error).__name__)[:300]


def read_video(path: str | os.PathLike, **reader_kwargs) -> torch.Tensor:
    """Every frame of a video, uint8 (T, H, W, C), as displayed."""
    with VideoReader(path, **reader_kwargs) as reader:
        return reader.read_all()


def probe_by_reading(path: str | os.PathLike, check_decode: bool = False) -> tuple[VideoMetadata, str]:
    """Metadata of a video, and the backend that read it: the default reader ("auto") reads
    the first frame, then with `check_decode` every frame, and the backend named is the one that
    served those reads, after any fallback. One probe of the file serves both."""
    with VideoReader(path) as reader:
        reader.get_frames([0])
        if check_decode:
            reader.check_every_frame_decodes()
        return reader.metadata, reader.backend
