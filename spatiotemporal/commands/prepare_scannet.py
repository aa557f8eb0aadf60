"""`spatiotemporal prepare scannet RAW OUT`: ScanNet v2 raw scenes -> the Pointcept-style layout
`OUT/{split}/{scene}/coord.npy, color.npy, normal.npy, segment20.npy, instance.npy`.

Scenes run as Ray tasks. A scene is written to a temporary folder and renamed into place when
complete, so a finished folder means a finished scene and a rerun skips it. Scenes that fail are
listed in `OUT/failures.csv` (scene, path, reason) and the job goes on; so are scenes a split list
names but RAW does not hold, so an incomplete download cannot pass for a complete one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "preprocess ScanNet v2 raw scenes into the Pointcept layout (Ray, resumable, failure list)"

SPLITS = ("train", "val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("raw", help="ScanNet root: scene folders in RAW/scans/ and RAW/scans_test/ "
                                    "(the official layout), or in RAW/ itself")
    parser.add_argument("out", help="output root of the preprocessed layout")
    parser.add_argument(
        "--splits-from",
        default=None,
        help="folder with scannetv2_{train,val,test}.txt (default: RAW if it has them, else the official lists)",
    )
    parser.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray of --workers CPUs); "
                             "RAW and OUT must then be paths every node sees")


# The official download puts train/val scenes in scans/ and the test scenes in scans_test/.
SCAN_FOLDERS = ("scans", "scans_test")


def scene_roots(raw: Path) -> list[Path]:
    """Where scene folders live: RAW/scans/ and RAW/scans_test/ where they exist, else RAW itself."""
    roots = [raw / name for name in SCAN_FOLDERS if (raw / name).is_dir()]
    return roots or [raw]


def find_scenes(raw: Path) -> list[Path]:
    """Scene folders under every root of `scene_roots`, by scene id (then root, for a scene id
    found twice)."""
    found = [p for root in scene_roots(raw) for p in root.iterdir() if p.is_dir() and p.name.startswith("scene")]
    return sorted(found, key=lambda p: (p.name, str(p)))


def expected_scene_dir(raw: Path, scene: str, split: str) -> Path:
    """Where the official layout keeps a listed scene (for naming one that is missing)."""
    if scene_roots(raw) == [raw]:
        return raw / scene
    return raw / ("scans_test" if split == "test" else "scans") / scene


def scene_splits(raw: Path, splits_from: Path | None) -> dict[str, str]:
    """scene id -> split. Split files next to the data win over the official lists, because
    custom or synthetic data reuses official scene ids."""
    from spatiotemporal.data.scannet import read_split_file, split_scenes

    folder = splits_from or raw
    local = {s: folder / f"scannetv2_{s}.txt" for s in SPLITS}
    mapping: dict[str, str] = {}
    if any(f.is_file() for f in local.values()):
        for split, file in local.items():
            if file.is_file():
                mapping.update({scene: split for scene in read_split_file(file)})
    else:
        for split in SPLITS:
            mapping.update({scene: split for scene in split_scenes(split)})
    return mapping


def process_scene(scene_dir: str, out_scene_dir: str) -> tuple[str, str] | None:
    """Preprocess one scene; returns None on success, or the file it failed on (the scene's folder
    or one of its files: mesh, labels, segments) and the reason, for the failures row."""
    import os
    import shutil

    from spatiotemporal.data.scannet import preprocess_raw_scene
    from spatiotemporal.io.errors import InputError, reason_line
    from spatiotemporal.io.points import write_preprocessed

    final = Path(out_scene_dir)
    temporary = final.parent / f".{final.name}.partial"
    try:
        cloud = preprocess_raw_scene(scene_dir)
        shutil.rmtree(temporary, ignore_errors=True)
        write_preprocessed(temporary, cloud)
        os.replace(temporary, final)
        return None
    except InputError as error:
        return error.path, error.reason
    except Exception as error:  # a job records every scene it could not finish and goes on
        return os.fspath(scene_dir), reason_line(error)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_failures(out: Path, failures: list[tuple[str, str, str]]) -> Path:
    import csv

    path = out / "failures.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scene", "path", "reason"])
        writer.writerows(sorted(failures))
    return path


def run(args: argparse.Namespace) -> int:
    import ray
    from tqdm import tqdm

    from spatiotemporal.cluster import cluster_to_join, start_ray

    raw, out = Path(args.raw), Path(args.out)
    if not raw.is_dir():
        raise SystemExit(f"{raw}: not a folder")
    cluster_to_join(args.address)  # before OUT is made or any scene is read
    out.mkdir(parents=True, exist_ok=True)
    splits = scene_splits(raw, Path(args.splits_from) if args.splits_from else None)

    failures: list[tuple[str, str, str]] = []
    failed_in_run = 0
    todo: list[tuple[Path, Path]] = []
    skipped = 0
    seen: dict[str, Path] = {}
    for scene_dir in find_scenes(raw):
        split = splits.get(scene_dir.name)
        if split is None:
            failures.append((scene_dir.name, str(scene_dir), "not listed in any scannetv2_{train,val,test}.txt"))
            continue
        if scene_dir.name in seen:
            failures.append((scene_dir.name, str(scene_dir), f"found twice: also {seen[scene_dir.name]}, which is used"))
            continue
        seen[scene_dir.name] = scene_dir
        target = out / split / scene_dir.name
        if (target / "coord.npy").is_file():
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        todo.append((scene_dir, target))
    # A listed scene that is nowhere under RAW would otherwise just be absent from OUT.
    missing = sorted(scene for scene in splits if scene not in seen)
    searched = ", ".join(str(root) for root in scene_roots(raw))
    for scene in missing:
        where = expected_scene_dir(raw, scene, splits[scene])
        failures.append((scene, str(where), f"listed in scannetv2_{splits[scene]}.txt but not found in {searched}"))

    started_ray = bool(todo) and start_ray(
        args.address, local={"num_cpus": args.workers, "include_dashboard": False}, log_to_driver=False
    )
    try:
        task = ray.remote(num_cpus=1)(process_scene)
        pending = {task.remote(str(s), str(t)): s for s, t in todo}
        with tqdm(total=len(pending), desc="scannet scenes", unit="scene") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                scene_dir = pending.pop(done[0])
                try:
                    failure = ray.get(done[0])
                except ray.exceptions.RayError as error:  # the worker died (e.g. out of memory)
                    failure = str(scene_dir), f"worker failed: {type(error).__name__}: {str(error).splitlines()[0]}"
                if failure is not None:
                    failures.append((scene_dir.name, *failure))
                    failed_in_run += 1
                bar.update(1)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()

    failure_file = write_failures(out, failures)
    written = len(todo) - failed_in_run
    failed = len(failures) - len(missing)
    summary = f"prepared {written} scenes, skipped {skipped} already done, {failed} failed"
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        summary += f", {len(missing)} listed but missing ({shown})"
    print(f"{summary} (see {failure_file})")
    # Non-zero when anything failed, so scripts notice; everything else is written regardless.
    return 0 if not failures else 1
