"""Jobs as configuration: a YAML file names the job and its arguments; `key=value` overrides
(values parsed as YAML, so `workers=2` is an int) replace them on the command line."""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

JOBS = {
    "video_inference": "pipelines.video_inference",
    "point_inference": "pipelines.point_inference",
    "tokenize": "pipelines.tokenize",
}


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[str, dict[str, Any]]:
    """(job name, keyword arguments for that job's `run`); a key `run` does not take is a
    ValueError naming the file, the key and the keys it takes."""
    import yaml

    with open(path) as handle:
        try:
            config = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(config, dict) or "job" not in config:
        raise ValueError(f"{path}: a pipeline config is a mapping with a 'job' key (one of {sorted(JOBS)})")
    given: dict[str, str] = {}  # key -> the override that set it, for the error message
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        key = key.replace("-", "_")
        try:
            config[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML: {' '.join(str(err).split())}") from None
        given[key] = item
    job = str(config.pop("job")).replace("-", "_")
    if job not in JOBS:
        raise ValueError(f"{path}: unknown job {job!r}; known: {sorted(JOBS)}")
    _check_keys(path, job, config, given)
    return job, config


def accepted_keys(job: str) -> list[str]:
    """The keyword arguments of the job's `run`: what a config for it may set."""
    run = importlib.import_module(JOBS[job]).run
    return sorted(inspect.signature(run).parameters)


def _check_keys(path: str | os.PathLike, job: str, config: dict[str, Any], given: dict[str, str]) -> None:
    accepted = accepted_keys(job)
    unknown = [key for key in config if key not in accepted]
    if not unknown:
        return
    named = ", ".join(f"{str(key)!r}" + (f" (given as {given[key]})" if key in given else "") for key in unknown)
    noun = "key" if len(unknown) == 1 else "keys"
    raise ValueError(f"{path}: unknown {noun} {named} for job {job}; accepted keys: {', '.join(accepted)}")


def run_config(path: str | os.PathLike, overrides: list[str] = ()):
    job, kwargs = load_config(path, overrides)
    missing = [k for k in ("input", "output") if k not in kwargs]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)} (set them in the file or as key=value)")
    return importlib.import_module(JOBS[job]).run(**kwargs)
