"""Small metadata shipped with the package: Kinetics class names, ScanNet splits and label map."""

from __future__ import annotations

from functools import cache
from importlib import resources


def meta_path(name: str):
    """A Traversable for a shipped metadata file, e.g. 'scannetv2_val.txt'."""
    return resources.files(__name__).joinpath(name)


def read_lines(name: str) -> list[str]:
    return [line.strip() for line in meta_path(name).read_text().splitlines() if line.strip()]


@cache
def kinetics_class_names(num_classes: int = 400) -> tuple[str, ...]:
    """Kinetics-400/600 names in canonical (sorted) order, index = class id."""
    if num_classes not in (400, 600):
        raise ValueError(f"Kinetics class names ship for 400 and 600 classes, not {num_classes}")
    return tuple(read_lines(f"kinetics{num_classes}_classes.txt"))


@cache
def scannet_split(split: str) -> tuple[str, ...]:
    """Official ScanNet v2 scene ids for 'train', 'val' or 'test'."""
    return tuple(read_lines(f"scannetv2_{split}.txt"))


def head_class_names(num_classes: int, recorded=None, label_sets=()) -> list[str]:
    """One name per output of a classifier head: the names a checkpoint records (which must fit
    the head: ValueError otherwise), else the first known label set of that size, else class_<i>.
    Inference and training name heads by this one rule, so a checkpoint and its reports agree."""
    if recorded is not None:
        if len(recorded) != num_classes:
            raise ValueError(f"{len(recorded)} class names for a model with {num_classes} classes")
        return [str(name) for name in recorded]
    for names in label_sets:
        if len(names) == num_classes:
            return list(names)
    return [f"class_{i}" for i in range(num_classes)]
