"""Fetching one file into the cache: atomic, resumable, hash-checked, one download per file at a time.

A plain URL is fetched with urllib: the bytes go to `<file>.part`, and beside it `<file>.part.source`
records which file they are from (the server's ETag or Last-Modified, and its size). A later call
resumes the part only with that validator in `If-Range`, so a server whose file changed meanwhile
sends the new file whole instead of the rest of the old one; a reply that does not continue the
part where it ends (another start, another size) starts it over. The file appears under its own
name only once whole and checked (`os.replace`).

A `filelock.FileLock` on `<file>.lock` makes a second process (another Ray worker on the node) wait
for the first and then use its file; when the first fails, `<file>.failed` says why, and the ones
that were waiting fail at once with that reason instead of each trying again in turn.

Every file that enters the cache has its SHA-256 recorded with its size and mtime (`<file>.sha256`,
or under `<cache>/digests/` for a file in another tool's cache): a file whose size or mtime changed
since is hashed again before it is used. Hub repos go through `huggingface_hub` instead, with its
own cache and locks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from spatiotemporal.cache import cache_root  # noqa: F401 (re-exported: spatiotemporal.weights)

_CHUNK = 1 << 20
# Seconds a stalled connection may stay silent: an unreachable server fails, it does not hang a worker.
TIMEOUT_S = 60.0


class WeightsError(ValueError):
    """A catalogue checkpoint could not be had: one line naming the entry and the reason. A
    ValueError, as any bad argument is, so every command that reports those reports this too."""


class Unreachable(WeightsError):
    """The source could not be reached or refused the file. `reason` says how without the URL, so
    the line that names the entry can name the URL once."""

    def __init__(self, label: str, url: str, reason: str):
        self.label, self.url, self.reason = label, public_url(url), " ".join(str(reason).split())[:60]
        super().__init__(f"{label}: cannot download {self.url}: {self.reason}")


def public_url(url: str) -> str:
    """`url` without user-info: a mirror's credentials are sent, never printed."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _auth_headers(url: str) -> dict:
    """HTTP basic auth from the URL's user-info (`https://user:token@mirror/...`), which urllib
    itself would not send."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return {}
    secret = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(digest: str, expected: str) -> bool:
    """`expected` is a full SHA-256 or the prefix torchvision publishes in its file names."""
    return bool(expected) and digest.startswith(expected.lower())


def fetch_url(url: str, dest: Path, expected_sha256: str = "", label: str = "", progress: bool = True) -> Path:
    """`dest`, downloaded from `url` unless it is there already. WeightsError on a network failure
    or a hash that does not match (the bad file is deleted first)."""
    label = label or dest.name
    return install_file(dest, lambda partial: _transfer(url, partial, label, progress), expected_sha256, label,
                        public_url(url))


def _failure_marker(dest: Path) -> Path:
    return Path(str(dest) + ".failed")


def _raise_recent_failure(dest: Path, since: float) -> None:
    """The error of a try that ended while this process waited for the lock, raised here too."""
    try:
        failure = json.loads(_failure_marker(dest).read_text())
    except (OSError, ValueError):
        return
    if failure.get("time", 0) < since:
        return  # an earlier run's: this one tries again
    if failure.get("url") is not None:
        raise Unreachable(failure["label"], failure["url"], failure["reason"])
    raise WeightsError(failure["message"])


def _record_failure(dest: Path, err: WeightsError) -> None:
    failure = {"time": time.time(), "message": str(err)}
    if isinstance(err, Unreachable):
        failure.update(label=err.label, url=err.url, reason=err.reason)
    _failure_marker(dest).write_text(json.dumps(failure))


def install_file(dest: Path, write_part, expected_sha256: str, label: str, source: str,
                 expected_by: str = "the catalogue") -> Path:
    """`dest`, made by `write_part(partial)` unless a file with the expected hash is there already.

    The one way a weights file enters a cache, whether it comes from a server or from another
    node: under `<dest>.lock` (a second process waits, then finds the first one's file, or fails
    with the first one's reason), into `<dest>.part` (which `write_part` may resume), checked,
    then renamed into place whole. A file whose SHA-256 is not `expected_sha256` (a full digest or
    torchvision's prefix) is deleted and named in the WeightsError.
    """
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    waiting_since = time.time()
    with FileLock(str(dest) + ".lock"):
        _raise_recent_failure(dest, waiting_since)
        if dest.exists() and (not expected_sha256 or hash_matches(recorded_sha256(dest) or sha256_of(dest),
                                                                  expected_sha256)):
            return dest  # another process finished it while this one waited
        partial = Path(str(dest) + ".part")
        try:
            write_part(partial)
            digest = sha256_of(partial)
            if expected_sha256 and not hash_matches(digest, expected_sha256):
                discard_part(partial)
                raise WeightsError(f"{label}: {source} sent a file with SHA-256 {digest}, but {expected_by} "
                                   f"expects {expected_sha256}; the file was deleted")
        except WeightsError as err:
            _record_failure(dest, err)
            raise
        os.replace(partial, dest)
        part_source(partial).unlink(missing_ok=True)
        _failure_marker(dest).unlink(missing_ok=True)
        record_sha256(dest, digest)
    return dest


def part_source(partial: Path) -> Path:
    """Where a part records which file its bytes are from, so it is resumed from that file only."""
    return Path(str(partial) + ".source")


def read_part_source(partial: Path) -> dict:
    try:
        return json.loads(part_source(partial).read_text()) if partial.exists() else {}
    except (OSError, ValueError):
        return {}


def start_part(partial: Path, source: dict) -> None:
    """An empty part, recorded as holding the start of `source`."""
    partial.write_bytes(b"")
    part_source(partial).write_text(json.dumps(source))


def discard_part(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    part_source(partial).unlink(missing_ok=True)


def _content_range(headers) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes A-B/N` (or `bytes */N`) header."""
    value = (headers.get("Content-Range") or "").strip()
    if not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = int(span.split("-", 1)[0]) if span[:1].isdigit() else None
    return first, int(total) if total.isdigit() else None


def _validator(headers) -> str:
    """What names this version of the file for If-Range: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag") or ""
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or ""


def _transfer(url: str, partial: Path, label: str, progress: bool) -> None:
    shown = public_url(url)
    known = read_part_source(partial)
    have = partial.stat().st_size if partial.exists() else 0
    if have and not known.get("validator"):
        have = 0  # bytes from no known version of the file: they cannot be continued safely
    headers = _auth_headers(url)
    if have:
        headers.update({"Range": f"bytes={have}-", "If-Range": known["validator"]})
    try:
        response = urllib.request.urlopen(urllib.request.Request(shown, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            if _content_range(err.headers)[1] == have == known.get("size"):
                return  # the part already holds every byte of this version
            discard_part(partial)  # a part longer than the file now is: from another version
            return _transfer(url, partial, label, progress)
        raise Unreachable(label, url, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise Unreachable(label, url, getattr(err, "reason", err)) from None
    with response:
        first, total = _content_range(response.headers)
        resumed = response.status == 206 and have > 0
        if resumed and (first != have or total != known.get("size")):
            response.close()  # not the rest of the bytes this part holds
            discard_part(partial)
            return _transfer(url, partial, label, progress)
        if not resumed:
            have = 0  # the whole file (a new version, or a server without ranges): the part starts over
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            start_part(partial, {"validator": _validator(response.headers), "size": total})
        bar = tqdm_bar(total, have, label, progress)
        try:
            with open(partial, "ab") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except OSError as err:
            raise WeightsError(f"{label}: the transfer from {shown} broke off after {partial.stat().st_size} "
                               f"bytes ({err}); run again to resume it") from None
        finally:
            bar.close()
    if total is not None and partial.stat().st_size < total:
        raise WeightsError(f"{label}: the transfer from {shown} broke off after {partial.stat().st_size} of "
                           f"{total} bytes; run again to resume it")


def tqdm_bar(total: int | None, have: int, label: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {label}", disable=not progress or None, leave=False)


def sha256_record(path: Path) -> Path:
    """Where the digest of `path` is kept: beside it in our cache; for a file in another tool's
    cache (huggingface_hub's snapshots, torch's checkpoints) under `<cache>/digests/`, so nothing
    is written into folders those tools own."""
    path = Path(path).absolute()
    root = cache_root().absolute()
    if path.is_relative_to(root) and not path.is_relative_to(root / "digests"):
        return Path(str(path) + ".sha256")
    return root / "digests" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".sha256")


def record_sha256(path: Path, digest: str) -> None:
    """Keep the digest of a file as it is now, with its size and mtime, so that a later use can tell
    it is the same file without hashing it, and `verify` can tell if it changed."""
    stat = Path(path).stat()
    record = sha256_record(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns} {Path(path).absolute()}\n")


def arrival_sha256(path: Path) -> str:
    """The digest recorded for `path` when it arrived, whether or not the file changed since."""
    record = sha256_record(path)
    return record.read_text().split()[0] if record.exists() and record.read_text().strip() else ""


def recorded_sha256(path: Path) -> str:
    """The recorded digest of `path` if the file still has the size and mtime it had then, else ""
    (the file was replaced or truncated: hash it again)."""
    record = sha256_record(path)
    if not record.exists():
        return ""
    fields = record.read_text().split()
    stat = Path(path).stat()
    if len(fields) < 3 or fields[1:3] != [str(stat.st_size), str(stat.st_mtime_ns)]:
        return ""
    return fields[0]
