"""`spatiotemporal prepare kinetics SRC OUT`: re-encode a downloaded Kinetics tree for training.

Every video under SRC is re-encoded with ffmpeg to h264 mp4 with its short side at 320 pixels
(the common practice for Kinetics) and a fixed keyframe interval, so random clip access seeks
cheaply. The folder layout is kept, so class folders and split folders still work. Files run as
Ray tasks, one ffmpeg per CPU; finished outputs are written atomically, so a rerun skips them.

Written to OUT besides the videos: each annotation CSV found at SRC's top level (or given with
--annotations), keeping only the rows whose video was converted; `failures.csv` (path, reason)
for every file that failed and every annotation row without a file; `classes.json` if SRC has one.
A rerun skips finished files and, unless --retry-failed, the files failures.csv already lists.
"""

from __future__ import annotations

import argparse

HELP = "re-encode a Kinetics tree to short side 320 on Ray tasks; clean annotations + failure list"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="downloaded tree: videos in split and/or class folders, CSVs at the top")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--short-side", type=int, default=320, help="short side in pixels (default 320)")
    parser.add_argument("--keyint", type=int, default=16, help="keyframe interval in frames (default 16)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality (default 23)")
    parser.add_argument("--drop-audio", action="store_true", help="drop audio instead of re-encoding it to AAC")
    parser.add_argument("--annotations", nargs="*", default=None, help="annotation CSVs (default: SRC/*.csv)")
    parser.add_argument("--num-cpus", type=int, default=None, help="parallel ffmpeg processes (default: all CPUs)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per file (default 600)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray of --num-cpus CPUs); "
                             "SRC and OUT must then be paths every node sees")
    parser.add_argument(
        "--retry-failed", action="store_true", help="try again the files OUT/failures.csv lists (default: keep them failed)"
    )


def scale_filter(short_side: int) -> str:
    """Short side to `short_side`, long side keeping the aspect ratio, rounded to even.

    ffmpeg rotates the frames before the filter runs, so portrait videos keep their width short.
    """
    s = short_side
    return f"scale=w='if(lt(iw,ih),{s},-2)':h='if(lt(iw,ih),-2,{s})'"


def ffmpeg_command(src: str, dst: str, short_side: int, keyint: int, crf: int, drop_audio: bool) -> list[str]:
    audio = ["-an"] if drop_audio else ["-c:a", "aac", "-b:a", "128k"]
    return [
        "ffmpeg", "-nostdin", "-hide_banner", "-v", "error",
        # Stop at the first decode error: a half-broken source must be reported, not shortened.
        "-xerror",
        "-y", "-i", src,
        "-map", "0:v:0", "-map", "0:a:0?",
        "-vf", scale_filter(short_side),
        "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-g", str(keyint), "-keyint_min", str(keyint), "-sc_threshold", "0",
        *audio,
        "-threads", "1", "-movflags", "+faststart", "-f", "mp4", dst,
    ]  # fmt: skip


def reencode(src: str, dst: str, short_side: int, keyint: int, crf: int, drop_audio: bool, timeout: float) -> str | None:
    """Re-encode one file; None on success, else the reason. The output appears only when done."""
    import os
    import re
    import subprocess

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    partial = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.part")
    command = ffmpeg_command(src, partial, short_side, keyint, crf, drop_audio)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        reason = f"ffmpeg took longer than {timeout:.0f} s"
    else:
        if done.returncode == 0 and os.path.getsize(partial) > 0:
            os.replace(partial, dst)
            return None
        # "[h264 @ 0x55c5...] Invalid NAL unit size" -> "Invalid NAL unit size": addresses vary.
        lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in done.stderr.splitlines()]
        lines = [line for line in lines if line]
        reason = "; ".join(lines[-3:]) or f"ffmpeg exited with status {done.returncode}"
    if os.path.exists(partial):
        os.remove(partial)
    return reason


def run(args: argparse.Namespace) -> int:
    import csv
    import os
    import shutil
    from pathlib import Path

    import ray
    from tqdm import tqdm

    from spatiotemporal.cluster import cluster_to_join, start_ray

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        print(f"error: {src}: not a directory")
        return 2
    if shutil.which("ffmpeg") is None:
        print("error: ffmpeg is not installed (apt-get install ffmpeg)")
        return 2
    cluster_to_join(args.address)  # before OUT is made or anything is re-encoded
    # Imported after the checks: the data module loads torch, seconds on a busy machine.
    from spatiotemporal.data.kinetics import (
        CLASS_INDEX_FILE,
        AnnotationError,
        index_video_files,
        read_kinetics_csv,
    )

    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(index_video_files(src).values())
    # Outputs are always .mp4: the stem (Kinetics' youtube_id_start_end) is what annotations use.
    targets = {s: str(out / Path(s).relative_to(src).with_suffix(".mp4")) for s in sources}
    relative = {s: str(Path(s).relative_to(src)) for s in sources}
    # Files that failed before stay failed (with their reason) unless asked to retry them.
    failures: dict[str, str] = {}
    if (out / "failures.csv").is_file() and not args.retry_failed:
        with open(out / "failures.csv", newline="") as handle:
            known = {row["path"]: row["reason"] for row in csv.DictReader(handle)}
        failures = {relative[s]: known[relative[s]] for s in sources if relative[s] in known}
    todo = [s for s in sources if not os.path.exists(targets[s]) and relative[s] not in failures]
    print(
        f"{len(sources)} videos under {src}: {len(sources) - len(todo) - len(failures)} already done, "
        f"{len(failures)} failed before, {len(todo)} to re-encode"
    )
    if todo:
        started_ray = start_ray(args.address, local={"num_cpus": args.num_cpus, "include_dashboard": False},
                                log_to_driver=False)
        try:
            task = ray.remote(num_cpus=1)(reencode)
            pending = {
                task.remote(s, targets[s], args.short_side, args.keyint, args.crf, args.drop_audio, args.timeout): s
                for s in todo
            }
            with tqdm(total=len(todo), desc="re-encoding", unit="video") as bar:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        source = pending.pop(ref)
                        reason = ray.get(ref)
                        if reason is not None:
                            failures[relative[source]] = reason
                        bar.update(1)
        finally:
            if started_ray:
                ray.shutdown()

    # Clean annotations: keep the rows whose video now exists in OUT.
    done_files = index_video_files(out)
    annotations = [Path(a) for a in args.annotations] if args.annotations is not None else sorted(src.glob("*.csv"))
    for annotation in annotations:
        try:
            records = read_kinetics_csv(annotation, out, done_files)
        except AnnotationError as error:
            failures[str(annotation)] = error.reason
            continue
        with open(annotation, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = []
        for record, row in zip(records, rows):
            if record.path is not None:
                kept.append(row)
            elif not any(Path(key).stem == record.key for key in failures):  # not listed twice
                failures[f"{annotation.name}:{record.key}"] = "no video file for this annotation row"
        with open(out / annotation.name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
        print(f"{annotation.name}: kept {len(kept)} of {len(rows)} rows")
    if (src / CLASS_INDEX_FILE).is_file():
        shutil.copyfile(src / CLASS_INDEX_FILE, out / CLASS_INDEX_FILE)

    with open(out / "failures.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(sorted(failures.items()))
    converted = len(todo) - sum(1 for s in todo if relative[s] in failures)
    print(f"re-encoded {converted}, skipped {len(sources) - len(todo)}, failed {len(failures)}; see {out / 'failures.csv'}")
    # Real Kinetics downloads always hold some broken files: the failure list is a result, not an error.
    return 0
