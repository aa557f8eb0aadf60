"""Published weights by name: the catalogue, the cache, and resolving an entry to a local file.

One cache root: `SPATIOTEMPORAL_CACHE` (default: the platform's user cache dir, e.g.
~/.cache/spatiotemporal), with each plain-URL entry's file at `<root>/weights/<entry>/<file>`.
Hub entries live in huggingface_hub's own cache (`HF_HUB_CACHE`, else `HF_HOME`/hub), and a
torchvision file already in torch's cache (`TORCH_HOME`/hub/checkpoints) is used where it is.
A file copied by hand to `<root>/weights/<entry>/` is verified and used before any other.

Offline (`SPATIOTEMPORAL_OFFLINE=1` or `HF_HUB_OFFLINE=1`, or no network) a missing file is one
line: the entry, the URL it comes from (a mirror's, credentials left out), and the exact path to put
it at.
"""

from __future__ import annotations

import os
from pathlib import Path

from spatiotemporal.weights.catalogue import CLASS_COUNTS, ENTRIES, Published, WeightsEntry
from spatiotemporal.weights.download import (
    TIMEOUT_S,
    Unreachable,
    WeightsError,
    arrival_sha256,
    cache_root,
    fetch_url,
    hash_matches,
    public_url,
    record_sha256,
    recorded_sha256,
    sha256_of,
)

__all__ = [
    "CLASS_COUNTS", "ENTRIES", "Published", "WeightsEntry", "WeightsError", "cache_root", "cached_file",
    "entries_for", "get_entry", "is_offline", "local_path", "local_weights", "manual_path", "require_weights", "share_weights",
    "verify", "weights_file",
]

_TRUE = ("1", "true", "yes", "on")


def is_offline() -> bool:
    return any(os.environ.get(var, "").lower() in _TRUE for var in ("SPATIOTEMPORAL_OFFLINE", "HF_HUB_OFFLINE"))


def entries_for(model: str | None = None) -> list[WeightsEntry]:
    return [e for e in ENTRIES if model is None or e.model == model]


def get_entry(name: str | WeightsEntry, model: str | None = None) -> WeightsEntry:
    """The entry called `name` ("mvitv2_s.k400"), or with `model` given its tag alone ("k400").
    An entry given as a `WeightsEntry` (an in-house checkpoint described the catalogue's way) is
    used as it is, in this process."""
    if isinstance(name, WeightsEntry):
        if model is not None and name.model != model:
            raise WeightsError(f"weights {name.name} are for {name.model}, not {model}")
        return name
    by_name = {e.name: e for e in ENTRIES}
    if model is not None and "." not in name:
        name = f"{model}.{name}"
    entry = by_name.get(name)
    if entry is None:
        known = [e.name for e in entries_for(model)] if model is not None else []
        hint = f"{model} has: {', '.join(known)}" if known else "see `spatiotemporal weights list`"
        if model is not None and not known:
            hint = f"{model} has no published weights in the catalogue"
        raise WeightsError(f"unknown weights {name!r}; {hint}")
    if model is not None and entry.model != model:
        raise WeightsError(f"weights {entry.name} are for {entry.model}, not {model}")
    return entry


def manual_path(entry: WeightsEntry) -> Path:
    """Where a file copied by hand is looked for first (and where plain-URL downloads go)."""
    return cache_root() / "weights" / entry.name / entry.filename


def hf_endpoint() -> str:
    """The hub this process talks to: `HF_ENDPOINT`, read at each call, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def source_url(entry: WeightsEntry) -> str:
    """The URL an entry's weights file is fetched from: the publisher's, or the same path under
    `SPATIOTEMPORAL_WEIGHTS_MIRROR` (an in-house mirror laid out as <mirror>/<host>/<path>); a hub
    entry's under the `HF_ENDPOINT` in use."""
    if entry.kind == "hf":
        return f"{hf_endpoint()}/{entry.hf_repo}/resolve/{entry.hf_revision}/{entry.hf_files[0]}"
    mirror = os.environ.get("SPATIOTEMPORAL_WEIGHTS_MIRROR")
    if not mirror:
        return entry.url
    return mirror.rstrip("/") + "/" + entry.url.split("://", 1)[1]


def _torch_hub_path(entry: WeightsEntry) -> Path:
    """Where torch.hub keeps a torchvision file (it reads TORCH_HOME at each call)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / entry.filename


def _hf_cache_dir() -> str:
    hub = os.environ.get("HF_HUB_CACHE")
    if hub:
        return hub
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def _checked(entry: WeightsEntry, path: Path) -> Path:
    """`path` once its SHA-256 is known to match: the catalogue's where it has one, else the digest
    recorded when the file first arrived. A file never checked is hashed once and recorded; a file
    whose size or mtime changed since its digest was recorded is hashed again."""
    arrived = arrival_sha256(path)
    expected = entry.sha256 or arrived
    if expected and hash_matches(recorded_sha256(path), expected):
        return path
    digest = sha256_of(path)
    if expected and not hash_matches(digest, expected):
        by = "the catalogue expects" if entry.sha256 else "it had when it arrived"
        raise WeightsError(f"{entry.name}: {path} has SHA-256 {digest}, but {by} {expected}; "
                           f"replace or delete the file")
    record_sha256(path, digest)
    return path


def local_path(entry: WeightsEntry) -> Path | None:
    """Where the entry's weights file already is on this machine, unchecked, else None: a copy made
    by hand (or our download) first, then torch hub's cache (torchvision files), then the hub's."""
    manual = manual_path(entry)
    if manual.exists():
        return manual
    if entry.layout == "torchvision" and _torch_hub_path(entry).exists():
        return _torch_hub_path(entry)
    if entry.kind == "hf":
        return _hf_files(entry, local_only=True)
    return None


def cached_file(entry: WeightsEntry) -> Path | None:
    """The entry's weights file if it is on this machine already (checked), else None. The hub's
    own cache is trusted as the hub client wrote it."""
    path = local_path(entry)
    if path is None or (entry.kind == "hf" and path != manual_path(entry)):
        return path
    return _checked(entry, path)


def _missing(entry: WeightsEntry, reason: str) -> WeightsError:
    """The one line for a file this process cannot get: the entry, why, the URL once (no
    credentials), and the exact path a copy made by hand is used from. Which environment variables
    turn downloads off or point at a mirror is in `spatiotemporal weights --help`, not here."""
    if entry.kind == "hf" and len(entry.hf_files) > 1:
        base = source_url(entry).rsplit("/", 1)[0]
        return WeightsError(f"{entry.name}: {reason}; put {base}/{{{','.join(entry.hf_files)}}} "
                            f"in {manual_path(entry).parent}/")
    return WeightsError(f"{entry.name}: {reason}; put {public_url(source_url(entry))} at {manual_path(entry)}")


def weights_file(name: str | WeightsEntry, model: str | None = None, progress: bool = True) -> Path:
    """The local weights file of a catalogue entry, downloaded into the cache the first time."""
    entry = get_entry(name, model)
    if not entry.downloadable:
        raise WeightsError(f"{entry.name}: {entry.note}")
    found = cached_file(entry)
    if found is not None:
        return found
    if is_offline():
        raise _missing(entry, "offline")
    try:
        if entry.kind == "hf":
            return _hf_files(entry, local_only=False)
        return fetch_url(source_url(entry), manual_path(entry), entry.sha256, label=entry.name, progress=progress)
    except Unreachable as err:
        raise _missing(entry, f"cannot download ({err.reason})") from None


def share_weights(weights: str, model: str | None = None) -> dict:
    """On a Ray driver: `weights` resolved here once, described for the workers (`local_weights`
    takes the description); see `spatiotemporal.weights.share`."""
    from spatiotemporal.weights.share import share_weights as share

    return share(weights, model)


def local_weights(weights: str | WeightsEntry | dict, model: str | None = None) -> tuple[WeightsEntry, Path]:
    """(entry, local weights file) for a catalogue name ("k400" with `model`, or "mvitv2_s.k400"),
    fetched into the cache on first use; or for what a Ray driver's `share_weights` described,
    fetched at most once per node (from the driver where this node cannot see its file)."""
    if isinstance(weights, dict):
        from spatiotemporal.weights.share import node_weights_file

        return get_entry(weights["entry"], model), node_weights_file(weights)
    entry = get_entry(weights, model)
    return entry, weights_file(entry)


def _hf_files(entry: WeightsEntry, local_only: bool) -> Path | None:
    """The hub repo's files (weights first, config.json beside them) through huggingface_hub's
    cache; `HF_ENDPOINT` is read at each call, so a mirror set later is honoured."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    endpoint = hf_endpoint()
    paths = []
    for filename in entry.hf_files:
        url = hf_hub_url(entry.hf_repo, filename, revision=entry.hf_revision, endpoint=endpoint)
        try:
            if not local_only:
                # One request without the client's retries (up to 5, 1 to 8 s apart, with a warning
                # each): a hub that is down is one line now, not after half a minute of warnings.
                get_hf_file_metadata(url, timeout=TIMEOUT_S)
            paths.append(hf_hub_download(entry.hf_repo, filename, revision=entry.hf_revision,
                                         cache_dir=_hf_cache_dir(), endpoint=endpoint, local_files_only=local_only))
        except LocalEntryNotFoundError:
            if local_only:
                return None
            raise Unreachable(entry.name, url, "the hub cannot be reached") from None
        except Exception as err:  # noqa: BLE001 - the hub client's HTTP and connection errors, made one line
            raise Unreachable(entry.name, url, _hub_reason(err)) from None
    return Path(paths[0])


def _hub_reason(err: Exception) -> str:
    """The hub client's error in a few words: its HTTP status, else the first line of its message."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def verify(entry: WeightsEntry) -> tuple[str, str]:
    """(state, detail) of an entry's cached file, hashed again now: "ok", "missing", "mismatch",
    or "unavailable" (nothing to fetch)."""
    if not entry.downloadable:
        return "unavailable", entry.note
    path = local_path(entry)
    if path is None:
        return "missing", str(manual_path(entry))
    digest = sha256_of(path)
    expected = entry.sha256 or arrival_sha256(path)
    if expected and not hash_matches(digest, expected):
        return "mismatch", f"{path}: SHA-256 {digest}, expected {expected}"
    record_sha256(path, digest)
    return "ok", str(path)


def require_weights(model: str, checkpoint: str | None, weights: str | None, random_weights: bool) -> str:
    """Refuse a model that would predict from random weights unless asked to: WeightsError naming the
    catalogue entries for `model`. Returns the line to print when random weights were asked for
    (else ""). Both a file and an entry at once is an error too."""
    if checkpoint and weights:
        raise WeightsError(f"{model}: give --weights NAME or --checkpoint PATH, not both")
    if checkpoint or weights:
        if random_weights:
            raise WeightsError(f"{model}: --random-weights contradicts --{'weights' if weights else 'checkpoint'}")
        return ""
    if random_weights:
        return f"note: {model} runs with random weights (--random-weights): the predictions mean nothing"
    names = [e.name for e in entries_for(model) if e.downloadable]
    offer = f"published: {', '.join(names)}" if names else "the catalogue has no published weights for it"
    raise WeightsError(f"{model} has no weights: pass --weights NAME ({offer}), --checkpoint PATH, or "
                       f"--random-weights for a smoke test")
