"""One line for an error that reached a job from Ray's workers: what a user reads in the
failures table and on the terminal, instead of Ray's nested tracebacks."""

from __future__ import annotations

import re


def one_line_error(err: BaseException) -> str:
    """`Type: message` (first line) of the error that started it all, as `one_line` makes every
    reason a user reads (no colour codes or C++ source paths, at most 300 characters)."""
    from spatiotemporal.io.errors import one_line

    return one_line(_innermost_error(err))


def _innermost_error(err: BaseException) -> str:
    """`Type: message` (first line) of the error that started it all.

    Ray wraps a worker's exception in task, user-code and actor errors. The innermost exception
    that is not Ray's own is used when the chain keeps it; an actor that died in its constructor
    keeps only the worker's traceback as text, so then its last line (`module.Type: message`) is.
    """
    chain = _chain(err)
    for cause in reversed(chain):
        if not type(cause).__module__.startswith("ray.") and _message(cause):
            return f"{type(cause).__name__}: {_message(cause).splitlines()[0].strip()}"
    for cause in chain:
        final = _traceback_last_line(str(cause))
        if final:
            return final
    return f"{type(err).__name__}: {_message(err).splitlines()[0].strip()}" if _message(err) else type(err).__name__


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        # RayTaskError keeps the worker's exception as `.cause`; Python chains use __cause__.
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return chain


def _message(err: BaseException) -> str:
    # str(KeyError) is the repr of its key; the message itself reads better.
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return str(text).strip()


def _traceback_last_line(text: str) -> str | None:
    """`Type: message` from a traceback held as text (colours and `module.` prefix removed): of
    its exception lines, the last one not raised by Ray itself, so the worker's own error rather
    than the wrapper Ray chained onto it. None when `text` holds no traceback."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
    if len(lines) < 2:
        return None
    found: list[tuple[str, str]] = []
    for line in lines:
        # Exception lines start at column 0; code and `File ...` lines are indented.
        match = re.match(r"^((?:[A-Za-z_]\w*\.)*)([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt))(: .*)?$", line)
        if match:
            found.append((match.group(1), match.group(2) + (match.group(3) or "").rstrip()))
    own = [message for module, message in found if not module.startswith("ray.")]
    return (own or [message for _, message in found] or [None])[-1]
