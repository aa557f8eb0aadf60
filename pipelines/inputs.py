"""What a job runs over: a directory, a glob, or a manifest (CSV, JSONL or Parquet of paths).

Every input gets an id, the key for resuming and for accounting, and a path, resolved (absolute,
symlinks followed) so one file has one path however it was named. A manifest may give its own ids
(an `id` column); otherwise the id is derived from the path so that it does not depend on the
current directory or on how the path was spelled:

- directory: the path relative to the directory walked;
- glob: the path relative to the glob's fixed prefix (`data/**/*.mp4` -> ids relative to `data`,
  as `--input data` would give);
- single file: its resolved absolute path (a bare file name would collide across folders);
- manifest row without an id: the path relative to the manifest's folder (`a.mp4`, `./a.mp4`
  and `/abs/dir/a.mp4` are one id), or the absolute path for files outside that folder.

Ids must be unique: two rows with one id would make "exactly once" meaningless.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatiotemporal.io.points import POINT_FILE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
POINT_EXTENSIONS = POINT_FILE_EXTENSIONS  # what `spatiotemporal.io.points.read_points` reads
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
        items = _glob(source)
    elif os.path.isfile(source):
        path = resolve(source)
        items = [InputItem(id=path, path=path)]
    else:
        raise ManifestError(f"{source}: not a directory, glob, manifest or file")
    _check_unique(items, source)
    return sorted(items, key=lambda item: item.id)


def resolve(path: str | os.PathLike) -> str:
    """The one spelling of a file's path that every listing and every run agrees on."""
    return os.path.realpath(os.fspath(path))


def _walk(root: Path, extensions: tuple[str, ...] | None) -> list[InputItem]:
    items = []
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            if extensions is not None and not filename.lower().endswith(extensions):
                continue
            path = Path(dirpath) / filename
            items.append(InputItem(id=path.relative_to(root).as_posix(), path=resolve(path)))
    return items


def _glob(pattern: str) -> list[InputItem]:
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        # A pattern that matches nothing is almost always a typo; a finished "0 of 0" job hides it.
        raise ManifestError(f"{pattern}: the glob matches no files")
    prefix = os.path.abspath(_fixed_prefix(pattern))
    return [InputItem(id=_relative_id(os.path.abspath(p), prefix), path=resolve(p)) for p in matches]


def _fixed_prefix(pattern: str) -> str:
    """The folders before the first wildcard: `data/**/*.mp4` -> `data`, `*.mp4` -> `.`."""
    head = pattern
    while glob.has_magic(head):
        head = os.path.dirname(head)
    return head or "."


def _relative_id(path: str, base: str) -> str:
    """`path` relative to `base` (both absolute), with `/` separators; absolute if outside `base`."""
    relative = os.path.relpath(path, base)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return Path(path).as_posix()
    return Path(relative).as_posix()


def _read_manifest(manifest: Path) -> list[InputItem]:
    # Relative paths in a manifest are relative to the manifest, so a dataset folder can move.
    base = os.path.abspath(manifest.parent)
    items = []
    for where, row in _manifest_rows(manifest):
        raw_path = _text(row.get("path"))
        if raw_path is None:
            raise ManifestError(f"{manifest}: {where} has no path")
        absolute = os.path.normpath(os.path.join(base, raw_path))
        given = _text(row.get("id"))
        items.append(InputItem(id=given if given is not None else _relative_id(absolute, base), path=resolve(absolute)))
    return items


def _manifest_rows(manifest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; `where` names the line or row for error messages."""
    suffix = manifest.suffix.lower()
    try:
        if suffix == ".csv":
            yield from _csv_rows(manifest)
        elif suffix == ".jsonl":
            yield from _jsonl_rows(manifest)
        else:
            yield from _parquet_rows(manifest)
    except ManifestError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure means the manifest is unreadable
        raise ManifestError(f"{manifest}: cannot read manifest: {err}") from err


def _csv_rows(manifest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import csv

    # The csv module rather than pandas: pandas takes a row with one field too many as
    # `index, path` and silently picks another path (an unquoted comma in a file name).
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        _require_path_column(manifest, header)
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise ManifestError(
                    f"{manifest}: line {reader.line_num} has {len(fields)} fields but the header has "
                    f"{len(header)} ({','.join(header)}); quote paths that contain commas"
                )
            yield f"line {reader.line_num}", dict(zip(header, fields))


def _jsonl_rows(manifest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import json

    # Plain json keeps each value's own type: pandas turns an int id column with a gap into floats.
    columns: set[str] = set()
    rows = []
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ManifestError(f"{manifest}: line {number} is not a JSON object")
            columns.update(row)
            rows.append((f"line {number}", row))
    _require_path_column(manifest, sorted(columns))
    yield from rows


def _parquet_rows(manifest: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    names = pq.read_schema(manifest).names
    _require_path_column(manifest, names)
    table = pq.read_table(manifest, columns=[c for c in ("id", "path") if c in names])
    for number, row in enumerate(table.to_pylist(), 1):
        yield f"row {number}", row


def _require_path_column(manifest: Path, columns: list[str]) -> None:
    if "path" not in columns:
        raise ManifestError(f"{manifest}: a manifest needs a 'path' column, found {list(columns)}")


def _text(value: Any) -> str | None:
    """A manifest cell as text, None when empty: ids and paths are strings whatever the column
    type (1 stays "1", even when a float column stores it as 1.0)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def _check_unique(items: list[InputItem], source: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ManifestError(f"{source}: input id {item.id!r} appears more than once")
        seen.add(item.id)
