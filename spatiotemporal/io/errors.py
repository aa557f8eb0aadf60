"""Errors about inputs. Each names the file and the reason, so a batch job can record it."""

from __future__ import annotations

import os


class InputError(Exception):
    """An input file could not be used. `path` and `reason` are kept for failure tables."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Rebuilt from its state, not by calling __init__ again: subclasses add arguments and
        # rewrite `reason`, and Ray pickles these errors to carry them out of workers and tasks.
        return _rebuild, (type(self), self.args, self.__dict__)


class VideoDecodeError(InputError):
    """A video could not be opened or decoded.

    `decoded_frames` says how far a partly decodable file got (None when unknown).
    """

    def __init__(self, path: str | os.PathLike, reason: str, decoded_frames: int | None = None):
        self.decoded_frames = decoded_frames
        if decoded_frames is not None:
            reason = f"{reason} (decoded {decoded_frames} frames before the failure)"
        super().__init__(path, reason)


class PointCloudError(InputError):
    """A point cloud or scene could not be read or is not usable."""


class CheckpointError(InputError):
    """A checkpoint's layout is unknown or its keys do not match the model."""


def _rebuild(cls: type, args: tuple, state: dict) -> InputError:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error
