"""Tests' helper: which parts of a command's console output the command did not write.

A terminal shows tqdm's redraws (`\\r`) in place, and a line that another process writes while a
bar is mid-line lands on the bar's line, after its closing `]`. So the output is split on `\\r` as
well as on newlines, a segment that begins with one of our bars is ours only as far as that bar
reaches, and whatever follows the bar is checked on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Ray's core worker logs this from C++ (core_worker.cc) for every actor that Ray may restart
# (max_restarts > 0) and whose constructor arguments are in the object store. Ray Data puts every
# actor pool's constructor arguments there itself: a pool whose class takes no arguments at all
# prints it too, and `ray_remote_args={"max_restarts": 0}` silences it (both shown with a bare Ray
# Data pool). The pipelines keep Ray Data's actor restarts (a killed actor is restarted and its batch
# retried: their fault tolerance), so the line stays; nothing in Python can silence it.
RAY_DATA_ACTOR_POOL_LINE = "has constructor arguments in the object store"

# tqdm's bar with a total: `{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate}{postfix}]`.
_TQDM_BAR = r"(?:{names}): +\d{{1,3}}%\|[^|]*\| *[\d.]+[kMGT]?/[\d.]+[kMGT]? \[[^\]]*\]"


def console_segments(text: str) -> list[str]:
    """What a terminal drew, one segment per line or per progress-bar redraw (blank ones dropped)."""
    return [segment for segment in re.split(r"[\r\n]", text) if segment.strip()]


def foreign_lines(text: str, bars: Iterable[str], lines: Iterable[str] = (), allowed: Iterable[str] = ()) -> list[str]:
    """The parts of `text` (a command's stderr or stdout) that the command did not write.

    bars: the names (tqdm `desc`) of the command's progress bars; a segment starting with one is
        ours up to the bar's closing `]`, and what follows it is checked as a segment of its own.
    lines: regular expressions that each of the command's other lines matches in full.
    allowed: texts of foreign lines that a test accepts (see RAY_DATA_ACTOR_POOL_LINE).
    """
    bar = re.compile(_TQDM_BAR.format(names="|".join(re.escape(name) for name in bars)))
    ours = [re.compile(pattern) for pattern in lines]
    allowed = tuple(allowed)
    foreign = []
    for segment in console_segments(text):
        while (drawn := bar.match(segment)) is not None:
            segment = segment[drawn.end() :]
        segment = segment.strip()
        if segment and not any(p.fullmatch(segment) for p in ours) and not any(a in segment for a in allowed):
            foreign.append(segment)
    return foreign
