"""Point operators in pure PyTorch: exact kNN, farthest-point and grid-pool downsampling,
interpolation back to finer points, and gathering neighbour features.

Batches follow the Pointcept convention: points of all clouds are concatenated, and `offset` (B,)
int64 holds the cumulative point counts, so cloud b is rows offset[b-1]:offset[b].

Nothing here needs a compiled extension (pointops, torch_scatter): the same code runs on CPU and
CUDA tensors. On CPU, kNN goes to open3d's compiled search (a core dependency), which is an order
of magnitude faster than any PyTorch formulation there, and so does farthest-point sampling; the
PyTorch paths serve CUDA tensors. Results depend only on the geometry, never on storage order,
except where two points are at exactly the same distance at the k-th place (either may win, as
with any top-k).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator

import torch
from torch import Tensor

from spatiotemporal.layers.serialization import z_order_encode

# Upper bound on the elements of one query-by-candidate distance block. It keeps kNN memory
# constant (about 64 MiB of float32) however large the cloud is.
KNN_BLOCK_ELEMENTS = 1 << 24


# Held for the whole of every block that changes torch's thread count for a while and restores it
# (`single_thread`; a worker setting its count once at start-up needs no lock). The count is both a
# process-wide default (new threads start from it; MKL reads it) and, under OpenMP, a per-thread
# setting, so two overlapping save/restore pairs in different threads cannot both restore
# correctly: whichever leaves last writes back the value the other had set, and the process stays
# on one thread. Blocks therefore take turns. Re-entrant, so a block may nest in another in the
# same thread (sparse_conv's spconv_threads runs through single_thread as well).
THREAD_COUNT_LOCK = threading.RLock()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run a block with one intra-op thread, then restore the caller's setting.

    For long sequential loops of small tensor ops (farthest-point sampling): each op is too small
    to gain from threads, and on a busy machine every op pays for waking them (measured on the
    2-core CI box under load: 2,000 FPS picks from 112k points, 32 s CPU with 2 threads vs 0.8 s
    with one). Blocks in other threads wait for this one to end (see THREAD_COUNT_LOCK).
    """
    with THREAD_COUNT_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- batch layout


def offset_to_counts(offset: Tensor) -> Tensor:
    return torch.diff(offset, prepend=offset.new_zeros(1))


def offset_to_batch(offset: Tensor) -> Tensor:
    counts = offset_to_counts(offset)
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def batch_to_offset(batch: Tensor, num_clouds: int | None = None) -> Tensor:
    num_clouds = int(batch.max()) + 1 if num_clouds is None else num_clouds
    return torch.bincount(batch, minlength=num_clouds).cumsum(0)


def _ranges(offset: Tensor) -> list[tuple[int, int]]:
    ends = offset.tolist()
    return list(zip([0] + ends[:-1], ends))


def check_offset(offset: Tensor, num_points: int) -> None:
    if offset.ndim != 1 or offset.numel() == 0:
        raise ValueError(f"offset must be a non-empty 1-D tensor, got shape {tuple(offset.shape)}")
    if int(offset[-1]) != num_points:
        raise ValueError(f"offset[-1] = {int(offset[-1])} but there are {num_points} points")
    if (offset_to_counts(offset) <= 0).any():
        raise ValueError(f"every cloud needs at least one point; offset = {offset.tolist()}")


# ----------------------------------------------------------------------------- kNN


def _topk(d: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return torch.topk(d, k, dim=1, largest=False, sorted=True)


def _nearest(q: Tensor, s: Tensor, k: int, spare: int = 4) -> tuple[Tensor, Tensor]:
    """k nearest of s for each row of q, squared distances ascending.

    Candidates are ranked with the fast matrix-product distance (after centring, so the rounding
    error is relative to the local extent, not to the distance from the origin), k + `spare` of
    them are kept and re-ranked with exact differences. A neighbour is misranked only if the
    product form errs by more than the gap to the (k + spare)-th candidate.
    """
    kk = min(k + spare, s.shape[0])
    centre = q.mean(0, keepdim=True)
    approx = torch.cdist(q - centre, s - centre, compute_mode="use_mm_for_euclid_dist")
    _, cand = _topk(approx, kk)
    exact = (s[cand] - q[:, None]).square().sum(-1)
    d, pick = _topk(exact, k)
    return d, cand.gather(1, pick)


def _brute_knn(query: Tensor, support: Tensor, k: int) -> tuple[Tensor, Tensor]:
    rows = max(1, KNN_BLOCK_ELEMENTS // max(1, len(support)))
    dists, idxs = [], []
    for start in range(0, len(query), rows):
        d, i = _nearest(query[start : start + rows], support, k)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def _choose_backend(backend: str, device: torch.device) -> str:
    """"auto" -> open3d's compiled loops for CPU tensors, torch otherwise; an explicit choice is checked."""
    if backend == "auto":
        return "open3d" if device.type == "cpu" else "torch"
    if backend not in ("open3d", "torch"):
        raise ValueError(f"backend must be 'auto', 'open3d' or 'torch', got {backend!r}")
    if backend == "open3d" and device.type != "cpu":
        raise ValueError("the open3d backend takes CPU tensors; use backend='torch' on other devices")
    return backend


def _open3d_knn(query: Tensor, support: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """open3d's exact search on CPU tensors; squared distances ascending, like `_nearest`."""
    import open3d as o3d

    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor.from_numpy(support.contiguous().numpy()))
    nns.knn_index()
    index, dist = nns.knn_search(o3d.core.Tensor.from_numpy(query.contiguous().numpy()), k)
    return torch.from_numpy(dist.numpy()).to(query.dtype), torch.from_numpy(index.numpy()).long()


class _XSorted:
    """Support points sorted along x, so the points inside an axis-aligned box are found by a
    binary search for the x-slab and a mask over that slab only."""

    def __init__(self, support: Tensor):
        self.order = torch.argsort(support[:, 0])
        self.points = support[self.order]
        self.x = self.points[:, 0].contiguous()

    def inside(self, lo: Tensor, hi: Tensor) -> Tensor:
        a = int(torch.searchsorted(self.x, lo[0:1].contiguous(), right=False))
        b = int(torch.searchsorted(self.x, hi[0:1].contiguous(), right=True))
        slab = self.points[a:b, 1:]
        keep = ((slab >= lo[1:]) & (slab <= hi[1:])).all(dim=1).nonzero().squeeze(1)
        return self.order[a + keep]


def _local_knn(query: Tensor, support: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Exact kNN of one cloud, visiting queries in z-order chunks and, for each chunk, only the
    support points inside a box around it.

    A first pass over the support points inside the chunk's bounding box B gives each query an
    upper bound r_i on its k-th distance. The box grown by a typical r_i (the 75th percentile)
    answers most queries; a query's answer is provably exact when the ball of its found k-th
    distance lies inside the box, because then no closer point was left outside. The few queries
    that fail the check are answered again with the box grown by the largest r_i, which holds
    every true neighbour of every query in the chunk.
    """
    lo_all, hi_all = support.min(0).values, support.max(0).values
    extent = float((hi_all - lo_all).max().clamp_min(1e-12))
    grid = ((query - lo_all) / extent * 1023).clamp(0, 1023).long()
    order = torch.argsort(z_order_encode(grid, depth=10))
    index = _XSorted(support)
    out_d = query.new_empty(len(query), k)
    out_i = torch.empty(len(query), k, dtype=torch.long, device=query.device)

    def search(q: Tensor, lo: Tensor, hi: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
        cand = index.inside(lo - margin, hi + margin)
        if len(cand) * len(q) > 4 * KNN_BLOCK_ELEMENTS:
            d, i = _brute_knn(q, support, k)
            return d, i, torch.ones(len(q), dtype=torch.bool, device=q.device)
        d, i = _nearest(q, support[cand], k)
        slack = torch.minimum(q - (lo - margin), (hi + margin) - q).min(1).values.clamp_min(0)
        return d, cand[i], d[:, -1] <= slack.square() * (1 - 1e-5)

    for start in range(0, len(query), chunk):
        sel = order[start : start + chunk]
        q = query[sel]
        lo, hi = q.min(0).values, q.max(0).values
        margin = 0.0
        cand = index.inside(lo, hi)
        while len(cand) < k:
            margin = max(2 * margin, extent * 1e-3)
            cand = index.inside(lo - margin, hi + margin)
        if len(cand) > 1024:
            # Any k candidates bound the k-th distance from above; a spread subset is enough.
            cand = cand[torch.linspace(0, len(cand) - 1, 1024, device=cand.device).long()]
        bound = _nearest(q, support[cand], k)[0][:, -1].sqrt() * (1 + 1e-6) + 1e-12
        d, i, exact = search(q, lo, hi, float(bound.quantile(0.75)))
        if not exact.all():
            redo = (~exact).nonzero().squeeze(1)
            d2, i2, _ = search(q[redo], lo, hi, float(bound.max()))
            d[redo], i[redo] = d2, i2
        out_d[sel], out_i[sel] = d, i
    return out_d, out_i


def knn_query(
    k: int,
    support: Tensor,
    support_offset: Tensor,
    query: Tensor | None = None,
    query_offset: Tensor | None = None,
    chunk: int = 256,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of each query point among the support points of its own cloud.

    Returns (index (M, k) int64 into `support`, distance (M, k)), nearest first. When a cloud has
    fewer than k support points, the missing slots repeat its farthest neighbour (as pointops
    does), so shapes stay rectangular and max/mean pooling stays valid.

    `backend`: "open3d" (CPU tensors only), "torch" (chunked distance blocks, any device), or
    "auto": open3d for CPU tensors, torch otherwise.
    """
    if query is None:
        query, query_offset = support, support_offset
    assert query_offset is not None
    check_offset(support_offset, len(support))
    check_offset(query_offset, len(query))
    if len(support_offset) != len(query_offset):
        raise ValueError("query and support must hold the same number of clouds")
    support, query = support.detach(), query.detach()
    backend = _choose_backend(backend, query.device)
    out_d = query.new_empty(len(query), k)
    out_i = torch.empty(len(query), k, dtype=torch.long, device=query.device)
    for (s0, s1), (q0, q1) in zip(_ranges(support_offset), _ranges(query_offset)):
        s, q = support[s0:s1], query[q0:q1]
        kk = min(k, len(s))
        if backend == "open3d":
            d, i = _open3d_knn(q, s, kk)
        elif len(s) * len(q) <= KNN_BLOCK_ELEMENTS or len(s) <= 4 * chunk:
            d, i = _brute_knn(q, s, kk)
        else:
            d, i = _local_knn(q, s, kk, chunk)
        if kk < k:
            d = torch.cat([d, d[:, -1:].expand(-1, k - kk)], 1)
            i = torch.cat([i, i[:, -1:].expand(-1, k - kk)], 1)
        out_d[q0:q1], out_i[q0:q1] = d.sqrt(), i + s0
    return out_i, out_d


# ----------------------------------------------------------------------------- downsampling


def farthest_point_sampling(coord: Tensor, offset: Tensor, new_offset: Tensor, backend: str = "auto") -> Tensor:
    """Indices (M,) of iteratively farthest points, new_offset giving how many per cloud, each
    cloud's in storage order (as open3d returns them; callers use the set, not the pick order).

    The first pick is the point farthest from its cloud's centroid rather than index 0, so the
    chosen set does not depend on the order the points are stored in (and moves with the cloud
    under translation).

    A cloud with fewer distinct locations than its sample count (duplicated points) still gets
    exactly that many indices, so `new_offset` stays true: once every location is taken, all
    distances are zero and each further pick is the first maximum, the cloud's first point, which
    therefore repeats. Both backends return the same indices.

    `backend`: "open3d" (CPU tensors only: its compiled loop, per cloud), "torch" (any device:
    all clouds advance together, one vectorised step per sample), or "auto": open3d for CPU
    tensors, torch otherwise. The torch loop is a few small ops per pick, so on CPU their
    dispatch dominates: 2,000 picks from 8,000 points take ~120 ms there against ~15 ms in open3d,
    a quarter of a Point Transformer training step.
    """
    backend = _choose_backend(backend, coord.device)
    check_offset(offset, len(coord))
    coord = coord.detach()
    counts = offset_to_counts(offset).tolist()
    new_counts = offset_to_counts(new_offset).tolist()
    if any(m > n for m, n in zip(new_counts, counts)):
        raise ValueError(f"cannot sample {new_counts} points from clouds of {counts}")
    b, n_max = len(counts), max(counts)
    padded = coord.new_zeros(b, n_max, 3)
    valid = torch.zeros(b, n_max, dtype=torch.bool, device=coord.device)
    for j, (s0, s1) in enumerate(_ranges(offset)):
        padded[j, : s1 - s0] = coord[s0:s1]
        valid[j, : s1 - s0] = True
    centroid = (padded * valid[..., None]).sum(1, keepdim=True) / torch.tensor(
        counts, device=coord.device, dtype=coord.dtype
    ).view(b, 1, 1)
    neg_inf = torch.finfo(coord.dtype).min
    first = ((padded - centroid).square().sum(-1)).masked_fill(~valid, neg_inf).argmax(1)
    starts = [s0 for s0, _ in _ranges(offset)]
    if backend == "open3d":
        return torch.cat([
            _open3d_fps(coord[s0 : s0 + n], m, int(first[j])) + s0
            for j, (s0, n, m) in enumerate(zip(starts, counts, new_counts))
        ])
    m_max = max(new_counts)
    # The thread count only matters to CPU ops; on an accelerator there is nothing to pin.
    with single_thread() if coord.device.type == "cpu" else contextlib.nullcontext():
        picks = _fps_loop(padded, valid, first, m_max)
    return torch.cat([picks[j, :m].sort().values + starts[j] for j, m in enumerate(new_counts)])


def _open3d_fps(points: Tensor, m: int, first: int) -> Tensor:
    """open3d's farthest-point loop from `first`; it returns points, not indices, so each point
    carries its index through the sampling as its colour (float64 holds any index exactly).

    open3d selects by a mask, so a pick that repeats (duplicate points, see
    `farthest_point_sampling`) comes back once; the missing picks are the cloud's first point,
    added back here so the count is `m`, as the torch loop gives."""
    import numpy as np
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
    index = np.arange(len(points), dtype=np.float64)
    cloud.colors = o3d.utility.Vector3dVector(np.repeat(index[:, None], 3, axis=1))
    sampled = cloud.farthest_point_down_sample(m, first)
    picks = torch.from_numpy(np.asarray(sampled.colors)[:, 0].astype(np.int64))
    if len(picks) < m:
        picks = torch.cat([picks.new_zeros(m - len(picks)), picks]).sort().values
    return picks


def _fps_loop(padded: Tensor, valid: Tensor, first: Tensor, m_max: int) -> Tensor:
    b, n_max, _ = padded.shape
    neg_inf = torch.finfo(padded.dtype).min
    picks = torch.empty(b, m_max, dtype=torch.long, device=padded.device)
    dist = torch.full((b, n_max), float("inf"), dtype=padded.dtype, device=padded.device)
    dist.masked_fill_(~valid, neg_inf)
    current = first
    rows = torch.arange(b, device=padded.device)
    axes = padded.permute(2, 0, 1).contiguous()  # (3, B, N): the 3-term sum becomes two adds
    diff = torch.empty_like(axes)
    d = torch.empty_like(dist)
    for step in range(m_max):
        picks[:, step] = current
        torch.sub(axes, axes[:, rows, current][:, :, None], out=diff)
        torch.sum(diff.square_(), 0, out=d)
        torch.minimum(dist, d, out=dist)
        current = dist.argmax(1)
    return picks


def fps_offset(offset: Tensor, stride: int) -> Tensor:
    """Per-cloud sample counts n // stride (at least 1), as cumulative offsets."""
    return (offset_to_counts(offset) // stride).clamp_min(1).cumsum(0)


def grid_cluster(
    coord: Tensor, offset: Tensor, grid_size: float, origin_shift: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Voxel id per point for a grid of `grid_size` anchored at each cloud's minimum corner
    (plus `origin_shift`, which shifted windows use).

    Returns (cluster (N,) in [0, V), counts (V,), batch of each voxel (V,)). Voxels are numbered
    cloud by cloud in ascending grid-key order, so the numbering is independent of point order.
    """
    check_offset(offset, len(coord))
    batch = offset_to_batch(offset)
    lo = torch.stack([coord[s0:s1].min(0).values for s0, s1 in _ranges(offset)]) + origin_shift
    grid = torch.div(coord.detach() - lo[batch], grid_size, rounding_mode="floor").long()
    span = int(grid.max()) + 1
    key = ((batch * span + grid[:, 0]) * span + grid[:, 1]) * span + grid[:, 2]
    _, cluster, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    voxel_batch = torch.zeros(len(counts), dtype=torch.long, device=coord.device)
    voxel_batch.scatter_(0, cluster, batch)
    return cluster, counts, voxel_batch


def grid_pool(
    coord: Tensor, feat: Tensor, offset: Tensor, grid_size: float, reduce: str = "amax"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pool points into voxels: coordinates averaged, features reduced (`amax` or `mean`).

    Returns (coord (V, 3), feat (V, C), offset (B,), cluster (N,)); `cluster` maps each input
    point to its voxel, which is what the matching unpooling needs.
    """
    cluster, counts, voxel_batch = grid_cluster(coord, offset, grid_size)
    v = len(counts)
    new_coord = coord.new_zeros(v, 3).index_add_(0, cluster, coord) / counts[:, None]
    new_feat = feat.new_zeros(v, feat.shape[1]).scatter_reduce(
        0, cluster[:, None].expand_as(feat), feat, reduce=reduce, include_self=False
    )
    return new_coord, new_feat, batch_to_offset(voxel_batch, len(offset)), cluster


# ----------------------------------------------------------------------------- grouping, upsampling


def gather(feat: Tensor, index: Tensor) -> Tensor:
    """feat (N, C) gathered at index (M, k) -> (M, k, C)."""
    return feat[index]


def group_relative(
    coord: Tensor, feat: Tensor | None, index: Tensor, center: Tensor, with_xyz: bool = True
) -> Tensor:
    """Neighbour features with their offsets from the centre: (M, k, 3 + C) or (M, k, C)."""
    rel = coord[index] - center[:, None]
    if feat is None:
        return rel
    grouped = feat[index]
    return torch.cat([rel, grouped], dim=-1) if with_xyz else grouped


def interpolate(
    coord_src: Tensor,
    feat_src: Tensor,
    offset_src: Tensor,
    coord_dst: Tensor,
    offset_dst: Tensor,
    k: int = 3,
    eps: float = 1e-8,
) -> Tensor:
    """Inverse-distance weighted average of the k nearest source features at each destination
    point; k=1 is nearest-neighbour upsampling. Weights are 1 / (d + eps), normalised."""
    index, dist = knn_query(k, coord_src, offset_src, coord_dst, offset_dst)
    if k == 1:
        return feat_src[index[:, 0]]
    weight = 1.0 / (dist + eps)
    weight = weight / weight.sum(1, keepdim=True)
    return torch.einsum("mk,mkc->mc", weight.to(feat_src.dtype), feat_src[index])


def estimate_spacing(coord: Tensor) -> float:
    """Median nearest-neighbour distance of a sample of points: the cloud's sampling density."""
    n = len(coord)
    sample = coord[torch.linspace(0, n - 1, min(n, 2048), device=coord.device).long()]
    offset = torch.tensor([n], device=coord.device)
    _, d = knn_query(2, coord, offset, sample, torch.tensor([len(sample)], device=coord.device))
    return float(d[:, 1].median()) if n > 1 else math.nan
