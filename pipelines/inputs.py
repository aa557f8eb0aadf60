"""What a job runs over: a directory, a glob, or a manifest (CSV, JSONL or Parquet of paths).

Every input gets an id, the key for resuming and for accounting. A manifest may give its own ids
(an `id` column); otherwise the id is the path relative to the directory walked, or the path as
listed. Ids must be unique: two rows with one id would make "exactly once" meaningless.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
POINT_EXTENSIONS = (".ply", ".npy", ".npz", ".pth")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")


class ManifestError(ValueError):
    """The input listing itself is unusable (not one input file, which becomes a failure row)."""


@dataclass(frozen=True)
class InputItem:
    id: str
    path: str


def list_inputs(source: str | os.PathLike, extensions: tuple[str, ...] | None = None) -> list[InputItem]:
    """Inputs named by `source`, sorted by id so every run sees the same order."""
    source = os.fspath(source)
    if os.path.isdir(source):
        items = _walk(Path(source), extensions)
    elif source.lower().endswith(MANIFEST_EXTENSIONS) and os.path.isfile(source):
        items = _read_manifest(Path(source))
    elif glob.has_magic(source):
        paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        items = [InputItem(id=p, path=os.path.abspath(p)) for p in paths]
    elif os.path.isfile(source):
        items = [InputItem(id=os.path.basename(source), path=os.path.abspath(source))]
    else:
        raise ManifestError(f"{source}: not a directory, glob, manifest or file")
    _check_unique(items, source)
    return sorted(items, key=lambda item: item.id)


def _walk(root: Path, extensions: tuple[str, ...] | None) -> list[InputItem]:
    items = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            if extensions is not None and not filename.lower().endswith(extensions):
                continue
            path = Path(dirpath) / filename
            items.append(InputItem(id=path.relative_to(root).as_posix(), path=str(path.resolve())))
    return items


def _read_manifest(manifest: Path) -> list[InputItem]:
    import pandas as pd

    suffix = manifest.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        elif suffix == ".jsonl":
            frame = pd.read_json(manifest, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(manifest)
    except Exception as err:  # noqa: BLE001 - any reader failure means the manifest is unreadable
        raise ManifestError(f"{manifest}: cannot read manifest: {err}") from err
    if "path" not in frame.columns:
        raise ManifestError(f"{manifest}: a manifest needs a 'path' column, found {list(frame.columns)}")
    # Relative paths in a manifest are relative to the manifest, so a dataset folder can move.
    base = manifest.parent
    paths = [str(p) if os.path.isabs(str(p)) else str((base / str(p)).resolve()) for p in frame["path"]]
    ids = [str(i) for i in frame["id"]] if "id" in frame.columns else [str(p) for p in frame["path"]]
    return [InputItem(id=i, path=p) for i, p in zip(ids, paths)]


def _check_unique(items: list[InputItem], source: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ManifestError(f"{source}: input id {item.id!r} appears more than once")
        seen.add(item.id)
