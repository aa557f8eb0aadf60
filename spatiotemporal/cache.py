"""The library's one cache root: published weights and the precision probe's timings live under it.

`SPATIOTEMPORAL_CACHE` when set, else the platform's user cache dir (`~/.cache/spatiotemporal` on
Linux, `$XDG_CACHE_HOME/spatiotemporal` when that is set). Files other tools own (torch hub,
Hugging Face) stay in those tools' caches.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("SPATIOTEMPORAL_CACHE")
    if root:
        return Path(root).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("spatiotemporal"))
