"""Small test videos generated on the spot with the ffmpeg CLI and PyAV (never committed).

Each helper writes into a directory the caller owns (a pytest tmp dir) and returns the path.
The content is ffmpeg's `testsrc2` pattern, which moves every frame, so frames differ and
an off-by-one frame index shows up as a pixel mismatch.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import av

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True, stdin=subprocess.DEVNULL)


@functools.cache
def encoders() -> frozenset[str]:
    listing = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return frozenset(line.split()[1] for line in listing.splitlines()[10:] if len(line.split()) > 1)


def testsrc(
    out: Path,
    *,
    codec: str = "libx264",
    frames: int = 24,
    size: str = "128x96",
    fps: int = 12,
    extra: tuple[str, ...] = (),
    audio: bool = False,
) -> Path:
    """A `frames`-long testsrc2 clip encoded with `codec` into the container implied by `out`."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
    audio_args = ["-c:a", "libopus" if out.suffix in (".webm", ".mkv") else "aac", "-shortest"] if audio else []
    _ffmpeg(
        *inputs, "-frames:v", str(frames), "-c:v", codec, "-pix_fmt", "yuv420p", *extra, *audio_args, str(out)
    )
    return out


def h264_mp4(out: Path, frames: int = 24, **kwargs) -> Path:
    # Keyframe every 8 frames with B-frames, so seeking and reordering both get exercised.
    return testsrc(out, codec="libx264", frames=frames, extra=("-g", "8", "-bf", "2", "-movflags", "+faststart"), **kwargs)


def vp9_webm(out: Path, frames: int = 24) -> Path:
    return testsrc(out, codec="libvpx-vp9", frames=frames, extra=("-g", "8", "-deadline", "realtime", "-cpu-used", "8"))


def mpeg4_avi(out: Path, frames: int = 24) -> Path:
    return testsrc(out, codec="mpeg4", frames=frames, extra=("-g", "8", "-q:v", "4"))


def hevc_mkv(out: Path, frames: int = 24) -> Path:
    return testsrc(
        out, codec="libx265", frames=frames, extra=("-g", "8", "-preset", "ultrafast", "-x265-params", "log-level=error")
    )


def with_rotation(source: Path, out: Path, clockwise: int) -> Path:
    """Copy `source` (packets untouched) with a display matrix asking for a clockwise rotation."""
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream_in = src.streams.video[0]
        stream_out = dst.add_stream_from_template(stream_in)
        # ffmpeg's display rotation counts counterclockwise degrees.
        stream_out.set_display_rotation(-clockwise)
        for packet in src.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream_out
            dst.mux(packet)
    return out


def variable_rate_mp4(out: Path) -> Path:
    """20 frames at 10 fps (0.0 .. 1.9 s) then 10 frames at 2 fps (2.0 .. 6.5 s)."""
    # Integer milliseconds throughout, so no timestamp is rounded onto its neighbour.
    setpts = "settb=1/1000,setpts='if(lt(N,20),N*100,2000+(N-20)*500)'"
    _ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=128x96:rate=10", "-frames:v", "30", "-vf", setpts,
        "-fps_mode", "passthrough", "-video_track_timescale", "1000", "-c:v", "libx264",
        "-pix_fmt", "yuv420p", "-g", "8", "-bf", "0", str(out),
    )
    return out


def audio_only(out: Path) -> Path:
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(out))
    return out


def truncated_copy(source: Path, out: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: int(len(data) * keep)])
    return out
