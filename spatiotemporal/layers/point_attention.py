"""Attention over points: Point Transformer vector attention and Stratified Transformer window
attention with contextual relative position encoding.

- `PointVectorAttention` (Zhao et al. 2021, eq. 3): per-channel weights
  softmax_j(gamma(phi(x_i) - psi(x_j) + delta_ij)) over the kNN of each point, applied to
  alpha(x_j) + delta_ij, where delta is an MLP of the relative position. The weights are vectors
  (one per channel group), not scalars, so this is not a dot-product attention and SDPA does not
  apply; it is written with einops over the (N, k, C) neighbour tensor.
- `StratifiedWindowAttention` (Lai et al. 2022): each query attends to all points of its own
  cubic window (dense keys) plus the downsampled points of the window twice as large around it
  (sparse, distant keys). Windows hold different numbers of points, so windows are batched
  padded and a boolean key mask hides the padding. The contextual relative position terms on
  queries and keys are an additive bias to `F.scaled_dot_product_attention`; the term on values,
  sum_j a_ij r^v_ij, needs the attention probabilities themselves, which SDPA never returns, so
  it is computed beside SDPA from the explicit softmax and added to SDPA's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from spatiotemporal.distributed import world_size
from spatiotemporal.layers.point_ops import grid_cluster
from spatiotemporal.layers.sync_batch_norm import synchronized_batch_norm


class PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the channel axis of (N, C) or (N, k, C) point tensors.

    With `synchronize` set (see `synchronize_batch_norms`), training statistics cover the points
    of every DDP worker."""

    synchronize: bool = False

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.ndim == 3:
            return rearrange(self._normalize(rearrange(x, "n k c -> (n k) c")), "(n k) c -> n k c", n=len(x))
        return self._normalize(x)

    def _normalize(self, x: Tensor) -> Tensor:
        if self.synchronize and self.training and world_size() > 1:
            return synchronized_batch_norm(x, self)
        return super().forward(x)


class PointVectorAttention(nn.Module):
    def __init__(self, dim: int, share_planes: int = 8):
        super().__init__()
        if dim % share_planes:
            raise ValueError(f"dim {dim} is not divisible by share_planes {share_planes}")
        self.share = share_planes
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        # delta: the position encoding of p_i - p_j
        self.pos_mlp = nn.Sequential(
            nn.Linear(3, 3), PointBatchNorm(3), nn.ReLU(inplace=True), nn.Linear(3, dim)
        )
        # gamma: maps the relation to one weight per group of `share_planes` channels
        self.weight_mlp = nn.Sequential(
            PointBatchNorm(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim // share_planes),
            PointBatchNorm(dim // share_planes),
            nn.ReLU(inplace=True),
            nn.Linear(dim // share_planes, dim // share_planes),
        )

    def forward(self, coord: Tensor, x: Tensor, neighbours: Tensor) -> Tensor:
        """coord (N, 3), x (N, C), neighbours (N, k) indices including the point itself."""
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        delta = self.pos_mlp(coord[neighbours] - coord[:, None])  # (N, k, C)
        relation = k[neighbours] - q[:, None] + delta
        weight = self.weight_mlp(relation).softmax(dim=1)  # (N, k, C / share)
        values = rearrange(v[neighbours] + delta, "n k (s g) -> n k s g", s=self.share)
        # A broadcast product and sum, not einsum: einsum lowers this to a bmm with k-long inner
        # products and permuted copies, 1.6-2.3x slower forward + backward on CPU at these sizes.
        out = (values * rearrange(weight, "n k g -> n k 1 g")).sum(dim=1)
        return rearrange(out, "n s g -> n (s g)")


# ----------------------------------------------------------------------------- stratified windows


@dataclass
class WindowPlan:
    """Which keys each query attends to, as padded index tables, in memory-bounded chunks.

    Queries sharing both their small window and their large window see exactly the same keys,
    so they form one group; each chunk is (queries (G, Q), query mask, keys (G, K), key mask).
    """

    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]]
    num_points: int


def _sorted_members(cluster: Tensor, num_clusters: int) -> tuple[Tensor, Tensor, Tensor]:
    order = torch.argsort(cluster, stable=True)
    counts = torch.bincount(cluster, minlength=num_clusters)
    starts = counts.cumsum(0) - counts
    return order, counts, starts


def _padded(order: Tensor, starts: Tensor, counts: Tensor, width: int) -> tuple[Tensor, Tensor]:
    pos = torch.arange(width, device=order.device)
    mask = pos[None] < counts[:, None]
    flat = (starts[:, None] + pos[None]).clamp_max(max(len(order) - 1, 0))
    return order[flat] * mask, mask


def plan_windows(
    coord: Tensor,
    offset: Tensor,
    window_size: float,
    sampled: Tensor,
    shift: bool,
    max_elements: int = 1 << 22,
    padding_slack: float = 2.0,
    min_elements: int = 1 << 14,
) -> WindowPlan:
    """Dense keys: the points of the query's window (edge `window_size`). Sparse keys: the
    `sampled` points (indices) inside the window of edge 2 * window_size around it that are not
    already dense keys. Shifted plans move both grids by half their edge, as in Swin.

    A chunk pads every group to its widest query, dense-key and sparse-key counts. Its padded
    size stays under `max_elements` (memory) and, once past `min_elements`, under `padding_slack`
    times its planned query-key pairs (a sampled point inside the query's own window is planned as
    a sparse key, then masked): group sizes vary several-fold, and one chunk padded to the largest
    group computed about 7x the real pairs on 5 cm rooms, while each extra chunk costs only a few
    dozen small ops.
    """
    n = len(coord)
    small_shift = window_size / 2 if shift else 0.0
    large_shift = window_size if shift else 0.0
    # Both grids hang off each cloud's minimum corner, moved back by the shift (the reference
    # bins xyz + shift from start=min(xyz)), so windows move with the cloud under translation.
    small, _, _ = grid_cluster(coord, offset, window_size, origin_shift=-small_shift)
    large, _, _ = grid_cluster(coord, offset, 2 * window_size, origin_shift=-large_shift)
    n_small, n_large = int(small.max()) + 1, int(large.max()) + 1
    pair = small * n_large + large
    groups, group_of = torch.unique(pair, return_inverse=True)
    g_small, g_large = groups // n_large, groups % n_large

    s_order, s_counts, s_starts = _sorted_members(small, n_small)
    l_order, l_counts, l_starts = _sorted_members(large[sampled], n_large)
    l_order = sampled[l_order]
    q_order, q_counts, q_starts = _sorted_members(group_of, len(groups))

    dense_n = s_counts[g_small]
    sparse_n = l_counts[g_large]
    key_n = dense_n + sparse_n
    # By key count, then query count, so that neighbours in the order pad each other little.
    by_size = torch.argsort(key_n * (int(q_counts.max()) + 1) + q_counts)
    chunks = []
    start = 0
    order_list = by_size.tolist()
    q_list, d_list, s_list = q_counts.tolist(), dense_n.tolist(), sparse_n.tolist()
    while start < len(order_list):
        # Grow the chunk while its padded size (queries x dense slots + sparse slots, each
        # padded to the chunk's widest) stays within both bounds.
        end, wq, wd, ws, real = start, 0, 0, 0, 0
        while end < len(order_list):
            g = order_list[end]
            nq, nd, ns = max(wq, q_list[g]), max(wd, d_list[g]), max(ws, s_list[g])
            r = real + q_list[g] * (d_list[g] + s_list[g])
            padded = (end - start + 1) * nq * (nd + max(ns, 1))
            if end > start and (padded > max_elements or (padded > min_elements and padded > padding_slack * r)):
                break
            wq, wd, ws, real, end = nq, nd, ns, r, end + 1
        sel = by_size[start:end]
        queries, q_mask = _padded(q_order, q_starts[sel], q_counts[sel], int(q_counts[sel].max()))
        dense, d_mask = _padded(s_order, s_starts[g_small[sel]], dense_n[sel], int(dense_n[sel].max()))
        width = int(sparse_n[sel].max()) if len(sel) else 0
        sparse, sp_mask = _padded(l_order, l_starts[g_large[sel]], sparse_n[sel], max(width, 1))
        sp_mask = sp_mask & (small[sparse] != g_small[sel][:, None])
        keys = torch.cat([dense, sparse], 1)
        k_mask = torch.cat([d_mask, sp_mask], 1)
        chunks.append((queries, q_mask, keys, k_mask))
        start = end
    return WindowPlan(chunks, n)


class StratifiedWindowAttention(nn.Module):
    """Multi-head window attention with contextual relative position encoding (cRPE).

    cRPE: the relative position p_i - p_j is quantized per axis into `2 * L` bins of `quant_size`
    (L = 2 * window_size / quant_size covers the +-2w reach of sparse keys); each axis has a
    learnable table entry per bin and head, and the terms q_i . r^q_ij, k_j . r^k_ij enter the
    logits while r^v_ij is added to the values.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: float,
        quant_size: float,
        rel_query: bool = True,
        rel_key: bool = True,
        rel_value: bool = True,
        qkv_bias: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.quant_size = quant_size
        self.bins = 2 * int((2 * window_size + 1e-4) // quant_size)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        shape = (self.bins, num_heads, self.head_dim, 3)
        self.table_q = nn.Parameter(torch.zeros(shape)) if rel_query else None
        self.table_k = nn.Parameter(torch.zeros(shape)) if rel_key else None
        self.table_v = nn.Parameter(torch.zeros(shape)) if rel_value else None
        for table in (self.table_q, self.table_k, self.table_v):
            if table is not None:
                nn.init.trunc_normal_(table, std=0.02)

    def _bin(self, rel: Tensor) -> Tensor:
        # Rounding first makes points exactly on a bin edge land in the same bin on every device.
        rel = torch.round(rel * 1e5) / 1e5
        idx = torch.div(rel + 2 * self.window_size - 1e-4, self.quant_size, rounding_mode="floor")
        return idx.long().clamp_(0, self.bins - 1)

    def _table_term(self, x: Tensor, table: Tensor, idx: Tensor, side: str) -> Tensor:
        """sum over axes of x . table[idx]: project x onto every bin first (cheap: bins << keys),
        then gather. x (G, T, H, D); idx (G, Q, K, 3) -> (G, H, Q, K).

        The gather runs along the bin axis of the projection as it is (only the index is
        expanded over heads), so its backward scatters into a tensor the size of the projection.
        (Expanding the projection to (G, Q, K, 3, H, L) instead makes the backward materialise
        that, `bins` times the result; reading it at flat offsets makes it a serial index_put.)
        """
        proj = rearrange(torch.einsum("gthd,lhda->gthla", x, table), "g t h l a -> g t h a l")
        h = self.num_heads
        if side == "query":  # row t of the projection is the query q
            index = rearrange(idx, "g q k a -> g q 1 a k").expand(-1, -1, h, -1, -1)
            return rearrange(proj.gather(-1, index).sum(3), "g q h k -> g h q k")
        index = rearrange(idx, "g q k a -> g k 1 a q").expand(-1, -1, h, -1, -1)  # row t is the key k
        return rearrange(proj.gather(-1, index).sum(3), "g k h q -> g h q k")

    def forward(self, coord: Tensor, x: Tensor, plan: WindowPlan) -> Tensor:
        qkv = rearrange(self.qkv(x), "n (three h d) -> three n h d", three=3, h=self.num_heads)
        out = x.new_zeros(len(x), self.num_heads, self.head_dim)
        for queries, q_mask, keys, k_mask in plan.chunks:
            q, k, v = qkv[0][queries], qkv[1][keys], qkv[2][keys]  # (G, T, H, D)
            idx = self._bin(coord[queries][:, :, None] - coord[keys][:, None])  # (G, Q, K, 3)
            bias = torch.zeros(q.shape[0], self.num_heads, q.shape[1], k.shape[1], dtype=x.dtype, device=x.device)
            if self.table_q is not None:
                bias = bias + self.scale * self._table_term(q, self.table_q, idx, "query")
            if self.table_k is not None:
                bias = bias + self._table_term(k, self.table_k, idx, "key")
            bias = bias.masked_fill(~k_mask[:, None, None], float("-inf"))
            qh, kh, vh = (rearrange(t, "g t h d -> g h t d") for t in (q, k, v))
            if self.table_v is None:
                o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)  # (G, H, Q, D)
            else:
                # cRPE on values needs the attention probabilities themselves, which SDPA does not
                # return: one explicit softmax serves both terms instead of computing it twice.
                prob = (self.scale * qh @ kh.transpose(-1, -2) + bias).softmax(-1)  # (G, H, Q, K)
                # sum_j a_ij table_v[idx_ij]: histogram the probabilities per bin, then mix bins.
                hist = prob.new_zeros(*prob.shape[:3], 3, self.bins)
                src = rearrange(prob, "g h q k -> g h q 1 k").expand(-1, -1, -1, 3, -1)
                hist.scatter_add_(-1, rearrange(idx, "g q k a -> g 1 q a k").expand_as(src), src)
                o = prob @ vh + torch.einsum("ghqal,lhda->ghqd", hist, self.table_v)
            o = rearrange(o, "g h q d -> g q h d")
            out[queries[q_mask]] = o[q_mask]
        return self.proj(rearrange(out, "n h d -> n (h d)"))
