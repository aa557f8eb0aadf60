"""`spatiotemporal probe PATH... [--json]`: metadata per video, or the reason it cannot be read.

JSON records also name the backend that read the file (`backend`): the one that served the default
reader's ("auto") reads of the probe, after any fallback, from the same pass that checks the frames.
Text lines name no backend, so a quick text probe reads the container and first frame alone,
without opening a reader."""

from __future__ import annotations

import argparse

HELP = "print video metadata per file (or why a file is unreadable); exit 1 if any file failed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="video files")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="read only the container and the first frame (default: decode every frame, to find damage)",
    )


def _text(metadata) -> str:
    count = f"{metadata.num_frames}{' (derived)' if metadata.frame_count_derived else ''}"
    rate = f"{metadata.fps:.3f} fps{' (variable)' if metadata.variable_frame_rate else ''}"
    rotation = f", rotated {metadata.rotation}" if metadata.rotation else ""
    audio = "audio" if metadata.has_audio else "no audio"
    return (
        f"{metadata.path}: {metadata.codec} {metadata.width}x{metadata.height}{rotation}, "
        f"{count} frames, {rate}, {metadata.duration:.3f} s, {audio}"
    )


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from spatiotemporal.io.errors import InputError
    from spatiotemporal.io.video import probe_by_reading, probe_video

    failed = 0
    for path in args.paths:
        try:
            if args.json or not args.quick:  # a reader: for the backend, or to decode every frame
                metadata, backend = probe_by_reading(path, check_decode=not args.quick)
            else:
                metadata = probe_video(path)
        except InputError as error:
            failed += 1
            if args.json:
                record = {"path": error.path, "error": error.reason}
                print(json.dumps(record), flush=True)
            else:
                print(f"{error.path}: ERROR: {error.reason}", file=sys.stderr, flush=True)
            continue
        print(json.dumps({**metadata.as_dict(), "backend": backend}) if args.json else _text(metadata), flush=True)
    return 1 if failed else 0
