"""Jobs as configuration: a YAML file names the job and its arguments; `key=value` overrides
(values parsed as YAML, so `workers=2` is an int) replace them on the command line."""

from __future__ import annotations

import importlib
import os
from typing import Any

JOBS = {
    "video_inference": "pipelines.video_inference",
    "point_inference": "pipelines.point_inference",
    "tokenize": "pipelines.tokenize",
}


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[str, dict[str, Any]]:
    """(job name, keyword arguments for that job's `run`)."""
    import yaml

    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict) or "job" not in config:
        raise ValueError(f"{path}: a pipeline config is a mapping with a 'job' key (one of {sorted(JOBS)})")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        config[key.replace("-", "_")] = yaml.safe_load(value)
    job = str(config.pop("job")).replace("-", "_")
    if job not in JOBS:
        raise ValueError(f"{path}: unknown job {job!r}; known: {sorted(JOBS)}")
    return job, config


def run_config(path: str | os.PathLike, overrides: list[str] = ()):
    job, kwargs = load_config(path, overrides)
    missing = [k for k in ("input", "output") if k not in kwargs]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} (set them in the file or as key=value)")
    return importlib.import_module(JOBS[job]).run(**kwargs)
