"""Errors about inputs. Each names the file and the reason, so a batch job can record it.

A reason reaches users as it is: the CLI prints `path: reason`, a job's failures table stores it,
training's report of skipped samples lists it. So every reason is one line a person can read
(`one_line`): at most `REASON_MAX_CHARS` characters, no terminal colour codes, no C++ source
locations and no traceback. `InputError` makes its reason so, whoever raises it; readers still say
what broke in their own words rather than passing a library's message on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

REASON_MAX_CHARS = 300

# Terminal control sequences (colours, cursor moves), as Open3D wraps its errors in.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
# Open3D's "[Open3D Error] (void open3d::...::Fn(const Tensor&, ...)) " before the message.
_OPEN3D_PREFIX = re.compile(r"\[Open3D (?:Error|WARNING|INFO|DEBUG)\]\s*(?:\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)\s*)?")
# A C++ source location, as a path: /root/Open3D/cpp/open3d/core/nns/NanoFlannIndex.cpp:52:
# The slash is required: a bare "site.h:2" or "foo.c:1:2" is as likely a user's own text.
_CPP_SOURCE = re.compile(r"\S*/[^\s/]+\.(?:c|cc|cpp|cxx|cu|cuh|h|hh|hpp)(?::\d+)+:?")
# torch appends its C++ stack, always last, in exactly this form:
# "Exception raised from fn at /path/file.cpp:12 (most recent call first):" and the frames.
_CPP_STACK = re.compile(r"Exception raised from \S+ at \S+:\d+.*", re.DOTALL)
# A Python traceback, or the frames of one (Ray puts a task's frames into its error's message).
_TRACEBACK_LINE = re.compile(r'^\s*(?:Traceback \(most recent call last\):|File ".*", line \d+)')


def one_line(text: object, max_chars: int = REASON_MAX_CHARS) -> str:
    """`text` as a reason a user reads: one line of at most `max_chars` characters.

    Colour codes, Open3D's function signatures, C++ source locations and torch's C++ stack go; a
    traceback gives way to its last line (the error itself); line breaks and runs of spaces
    become one space; where that leaves nothing, the text stays as it was (made one line). A
    reason still too long ends in "...": a backstop for other libraries' messages; reasons this
    library builds are short where they are made (`some_names`).
    """
    original = _ANSI_ESCAPE.sub("", str(text))
    text = original
    lines = text.splitlines()
    if any(_TRACEBACK_LINE.match(line) for line in lines):
        text = next((line for line in reversed(lines) if line.strip()), "")
    text = _CPP_STACK.sub("", text)
    text = _OPEN3D_PREFIX.sub("", text)
    text = _CPP_SOURCE.sub("", text)
    text = " ".join(text.split()) or " ".join(original.split())
    if len(text) > max_chars:
        text = text[: max_chars - 3].rstrip() + "..."
    return text


def name_list(names: Sequence[object], shown: int) -> str:
    """The first `shown` of `names`, then how many there are when that is not all of them:
    "a, b, ... (33 in all)"; "... (33 in all)" when none is shown."""
    names = [str(name) for name in names]
    listed = ", ".join(names[:shown])
    if shown >= len(names):
        return listed
    return f"{listed}, ... ({len(names)} in all)" if shown > 0 else f"... ({len(names)} in all)"


def some_names(names: Sequence[object], max_chars: int) -> str:
    """`name_list` of as many of `names` as fit in `max_chars` characters: how a reason lists
    keys, properties or elements without running past `REASON_MAX_CHARS` (and being cut there)."""
    shown = 0
    while shown < len(names) and len(name_list(names, shown + 1)) <= max_chars:
        shown += 1
    return name_list(names, shown)


def reason_line(error: BaseException) -> str:
    """What a user reads about a failure: an input error's reason (which names no path: the
    caller shows the path beside it), otherwise the error's type and message, as `one_line`."""
    if isinstance(error, InputError):
        return error.reason
    return one_line(f"{type(error).__name__}: {error}")


class InputError(Exception):
    """An input file could not be used. `path` and `reason` are kept for failure tables;
    `reason` is made one line (`one_line`) here, the one place every input error passes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = one_line(reason)
        super().__init__(f"{self.path}: {self.reason}")

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
        if decoded_frames is not None:  # kept whole: the reason before it gives way instead
            progress = f" (decoded {decoded_frames} frames before the failure)"
            reason = one_line(reason, REASON_MAX_CHARS - len(progress)) + progress
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
