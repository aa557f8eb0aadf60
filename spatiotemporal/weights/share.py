"""Published weights for Ray workers: resolved once on the driver, fetched at most once per node.

The driver resolves a catalogue entry to its local file (downloading it into its cache the first
time) and gives the workers `share_weights`'s small dict of plain strings: the entry, the driver's
node, and each file's path, size and SHA-256. It travels in actor arguments and training configs
as it is (no object reference: a training config is saved in every checkpoint). A worker's
`node_weights_file` then uses, in this order:

1. the driver's own file, where this node sees it (the driver's node, or a shared file system);
2. this node's cache, where an earlier job left the same file;
3. the driver's file itself: read on the driver's node chunk by chunk (`SHARE_CHUNK_BYTES`, one
   short task each), carried by Ray's object store, appended to a part in this node's cache under
   the cache's file lock (so the workers of one node transfer it once, and a transfer cut off
   resumes where it stopped) and checked against the driver's digest;
4. the publisher, as `weights_file` fetches it; with no network that is the offline one-line
   error naming the entry, its URL and where to put the file.

Nothing here waits without a bound: a driver node that has left the cluster is skipped, and the
transfer of each chunk from it has a deadline.
"""

from __future__ import annotations

import os
from pathlib import Path

from spatiotemporal.weights.download import (
    WeightsError,
    install_file,
    read_part_source,
    recorded_sha256,
    sha256_of,
    start_part,
)

# Seconds a worker waits for one chunk from the driver's node: generous for a slow link, and still
# an error rather than a hang when that node stops answering.
TRANSFER_TIMEOUT_S = 600.0
# Bytes per transfer from the driver's node: the worker, the reading task and the object store
# each hold about one chunk at a time, whatever the size of the file (a ViT-L is over 1 GiB).
SHARE_CHUNK_BYTES = 64 << 20


def _digest(path: Path) -> str:
    return recorded_sha256(path) or sha256_of(path)


def _entry_files(entry, path: Path) -> list[Path]:
    """The files a model reads for `entry`: the weights file, and beside it a hub repo's others."""
    names = entry.hf_files if entry.kind == "hf" else (path.name,)
    return [path.parent / name for name in names]


def share_weights(weights: str, model: str | None = None) -> dict:
    """On the driver, with Ray started: the catalogue entry `weights` resolved to this machine's
    file (downloaded into the cache on first use), described for the workers."""
    import ray

    from spatiotemporal.weights import get_entry, weights_file

    entry = get_entry(weights, model)
    files = _entry_files(entry, weights_file(entry.name))
    return {
        "entry": entry.name,
        "node": ray.get_runtime_context().get_node_id(),
        "files": [{"name": f.name, "path": str(f), "size": f.stat().st_size, "sha256": _digest(f)} for f in files],
    }


def node_weights_file(shared: dict) -> Path:
    """On a worker: the local weights file of what `share_weights` described (see the module)."""
    import ray

    from spatiotemporal.weights import get_entry, manual_path, weights_file

    entry = get_entry(shared["entry"])
    files = shared["files"]
    here = ray.get_runtime_context().get_node_id()
    driver_copy = [Path(f["path"]) for f in files]
    # On the driver's node its files are the ones it checked; elsewhere a path that exists may be
    # another file of the same name, so it is hashed.
    if _holds(driver_copy, files, trust_sizes=here == shared["node"]):
        return driver_copy[0]
    node_copy = [manual_path(entry).parent / f["name"] for f in files]
    if _holds(node_copy, files, trust_sizes=False):
        return node_copy[0]
    if _node_alive(shared["node"]):
        try:
            return fetch_from_driver(shared)
        except WeightsError:
            raise
        except Exception:  # noqa: BLE001 - the driver's node went away mid-transfer: the publisher is next
            pass
    return weights_file(entry.name)


def _holds(paths: list[Path], files: list[dict], trust_sizes: bool) -> bool:
    for path, file in zip(paths, files):
        if not path.is_file() or path.stat().st_size != file["size"]:
            return False
        if not trust_sizes and _digest(path) != file["sha256"]:
            return False
    return True


def _node_alive(node: str) -> bool:
    import ray

    return any(n["NodeID"] == node and n["Alive"] for n in ray.nodes())


def read_chunk(path: str, offset: int, length: int) -> bytes:
    """On the driver's node: `length` bytes of the shared file `path` from `offset`."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def fetch_from_driver(shared: dict) -> Path:
    """The driver's files copied into this node's cache through Ray's object store, under the
    cache's file lock and checked against the driver's digests; the weights file comes last, so
    a weights file in the cache always has its companions beside it. Returns the weights file."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from spatiotemporal.weights import get_entry, manual_path

    label, files = shared["entry"], shared["files"]
    targets = [manual_path(get_entry(label)).parent / f["name"] for f in files]
    # Tasks, not an actor: nothing stays alive on the driver's node holding a file's bytes.
    read = ray.remote(num_cpus=0, max_retries=0)(read_chunk).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(shared["node"], soft=False))

    def receive(file: dict):
        def write_part(partial: Path) -> None:
            source = {"sha256": file["sha256"], "size": file["size"]}
            if read_part_source(partial) != source:
                start_part(partial, source)  # a part of some other file is not continued
            have = partial.stat().st_size
            with open(partial, "ab") as out:
                while have < file["size"]:
                    chunk = read.remote(file["path"], have, min(SHARE_CHUNK_BYTES, file["size"] - have))
                    try:
                        data = ray.get(chunk, timeout=TRANSFER_TIMEOUT_S)
                    except ray.exceptions.GetTimeoutError:
                        ray.cancel(chunk, force=True)
                        raise WeightsError(f"{label}: the driver's node sent no part of {file['name']} within "
                                           f"{TRANSFER_TIMEOUT_S:g} s (after {have} bytes)") from None
                    if not data:
                        raise WeightsError(f"{label}: the driver's {file['path']} ended after {have} of "
                                           f"{file['size']} bytes")
                    out.write(data)
                    have += len(data)
                    del data, chunk  # one chunk at a time, in this process and in the object store

        return write_part

    for file, target in list(zip(files, targets))[::-1]:
        install_file(target, receive(file), file["sha256"], label, f"the driver's node ({file['path']})",
                     expected_by="the driver's copy")
    return targets[0]
